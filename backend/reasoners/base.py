"""The reasoner protocol: what a stage sees of a tile, and the text it answers.

Every reasoner answers in the released model's text format, so one parser, one dump format and one
pipeline serve the vision-language model and the weight-free map reader alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from ..pipeline.prompts import MAX_PIXELS, MIN_PIXELS, ParsedAnswer, smart_resize


@dataclass
class TileView:
    query: str
    task: str | None
    map_image: np.ndarray        # model-input size, H x W x 3 uint8
    sat_image: np.ndarray
    transform: Affine            # model-input pixel -> map coordinates
    crs: CRS
    tile_id: str = ""
    map_features: object | None = None   # a VectorMap when the map is a vector file


@dataclass
class Reply:
    text: str
    notes: list[str] = field(default_factory=list)   # caveats that travel into the output attributes
    labels: list[str] = field(default_factory=list)  # per answer item, what it is (e.g. a map name)


class Reasoner(Protocol):
    name: str

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) both images are resized to before the reasoner sees them."""

    def stage1(self, view: TileView, prompt: str) -> Reply: ...

    def stage2(self, view: TileView, prompt: str, rendered_map: np.ndarray, rendered_sat: np.ndarray,
               stage1: ParsedAnswer) -> Reply: ...


class QwenFrame:
    """Qwen2.5-VL's resize rule with the authors' pixel budget; shared by all reasoners."""
    min_pixels = MIN_PIXELS
    max_pixels = MAX_PIXELS

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return smart_resize(height, width, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
