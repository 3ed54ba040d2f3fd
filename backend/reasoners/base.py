"""The reasoner protocol: what a stage sees of a tile, and the text it answers.

Every reasoner answers in the released model's text format, so one parser, one dump format and one
pipeline serve the vision-language model and the weight-free map reader alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from ..pipeline.prompts import MAX_PIXELS, MIN_PIXELS, ParsedAnswer, smart_resize


@dataclass
class TileView:
    """One tile in the model's frame, built by the caller (`backend.pipeline.stages.make_view`)."""
    query: str
    task: str | None
    map_image: np.ndarray        # model-input size, H x W x 3 uint8
    sat_image: np.ndarray
    transform: Affine | None = None      # model-input pixel -> map coordinates; None without geography
    crs: CRS | None = None
    tile_id: str = "tile"
    map_features: object | None = None   # a VectorMap when the map is a vector file
    tile_size: tuple[int, int] | None = None  # (height, width) of the tile before the resize
    # A raster map around the tile, for a reader that needs what lies beyond the tile's edge:
    # map_around(margin_px) -> (map RGB of the tile grown by up to margin_px, tile's column and row in it)
    map_around: Callable[[int], tuple[np.ndarray, int, int]] | None = None

    @property
    def model_size(self) -> tuple[int, int]:
        return self.sat_image.shape[:2]

    @property
    def original_size(self) -> tuple[int, int]:
        return self.tile_size or self.model_size


@dataclass
class Reply:
    text: str      # the answer decoded without special tokens: what the released code segments
    notes: list[str] = field(default_factory=list)   # caveats that travel into the output attributes
    labels: list[str] = field(default_factory=list)  # per answer item, what it is (e.g. a map name)
    # Per answer item, the outline the reasoner read off the map (model-size bool mask) or None: the
    # map reader knows a place's exact extent; a vision-language model gives none.
    outlines: list = field(default_factory=list)
    # The answer decoded WITH special tokens, where the reasoner has tokens: the released code renders
    # this text's boxes and puts its answer into the stage-2 text. None: the same as `text`.
    shown_text: str | None = None


class Reasoner(Protocol):
    """Answers one tile per call. A reasoner that can do better over many tiles at once (one batched
    `generate`, concurrent requests to a server) also has `stage1_batch(views, prompts)` and
    `stage2_batch(views, prompts, rendered, stage1s)` with the same meaning over lists (`rendered`:
    (map, satellite) pairs); the pipeline uses them when present."""
    name: str

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) both images are resized to before the reasoner sees them."""

    def stage1(self, view: TileView, prompt: str) -> Reply: ...

    def stage2(self, view: TileView, prompt: str, rendered_map: np.ndarray, rendered_sat: np.ndarray,
               stage1: ParsedAnswer) -> Reply: ...


class SmartResize:
    """The released input size: Qwen2.5-VL's smart resize with the released pixel budget. Every
    reasoner sees the images at this size, so all share one coordinate frame with the segmenter."""
    min_pixels = MIN_PIXELS
    max_pixels = MAX_PIXELS

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return smart_resize(height, width, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
