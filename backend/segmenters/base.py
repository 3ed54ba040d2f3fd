"""The segmenter protocol: one image embedding per tile, then one prediction per object.

As released, each object is its own prediction with only its own box and points: batching objects
with padded point lists would feed SAM "not-a-point" tokens and make an object's mask depend on its
neighbours' point counts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..pipeline.prompts import Item


# A segmenter prompt is an answer item: a box (x1, y1, x2, y2) in image pixels and its positive points.
Prompt = Item


@dataclass
class Segmentation:
    mask: np.ndarray    # H x W bool
    score: float | None  # the segmenter's own quality estimate in [0, 1]; None if it has none


class Segmenter(Protocol):
    name: str

    def set_image(self, image: np.ndarray) -> None:
        """Compute and keep the image embedding of an H x W x 3 uint8 RGB image."""

    def segment(self, prompts: list[Prompt]) -> list[Segmentation]:
        """One mask per prompt: the best (highest-scoring) of the multimask outputs of a prediction
        with that prompt's box and points alone."""

    # Optional, for batches of tiles: `embedding()` returns the current image's state and
    # `restore(state)` makes it current again, so stage 2 reuses stage 1's embedding.


def union(segs: list[Segmentation], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    for s in segs:
        out |= s.mask
    return out
