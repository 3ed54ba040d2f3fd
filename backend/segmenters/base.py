"""The segmenter protocol: one image embedding per tile, then batched box/point prompts."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class Prompt:
    box: tuple[float, float, float, float]              # x1, y1, x2, y2 in image pixels
    points: list[tuple[float, float]] = field(default_factory=list)  # positive points


@dataclass
class Segmentation:
    mask: np.ndarray    # H x W bool
    score: float | None  # the segmenter's own quality estimate in [0, 1]; None if it has none


class Segmenter(Protocol):
    name: str

    def set_image(self, image: np.ndarray) -> None:
        """Compute and keep the image embedding of an H x W x 3 uint8 RGB image."""

    def segment(self, prompts: list[Prompt]) -> list[Segmentation]:
        """One mask per prompt (best of the multimask outputs), all prompts in one batched call."""


def union(segs: list[Segmentation], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    for s in segs:
        out |= s.mask
    return out


def pad_points(prompts: list[Prompt]) -> tuple[list[list[list[float]]], list[list[int]]] | None:
    """Per-object point lists padded to one length with label -1 (SAM's 'not a point'); None if no points."""
    n = max((len(p.points) for p in prompts), default=0)
    if n == 0:
        return None
    coords, labels = [], []
    for p in prompts:
        pts = [[float(x), float(y)] for x, y in p.points]
        coords.append(pts + [[0.0, 0.0]] * (n - len(pts)))
        labels.append([1] * len(pts) + [-1] * (n - len(pts)))
    return coords, labels
