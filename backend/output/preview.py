"""A PNG a person checks at a glance: satellite and map side by side, detected outlines on both."""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..pipeline.render import draw_outlines, side_by_side

MAX_WIDTH = 2400


def write_preview(path: str, satellite: np.ndarray, map_image: np.ndarray, mask: np.ndarray,
                  truth: np.ndarray | None = None) -> str:
    sat = draw_outlines(satellite, mask, (255, 255, 0), 3)
    mp = draw_outlines(map_image, mask, (230, 0, 180), 3)
    if truth is not None:
        sat = draw_outlines(sat, truth, (0, 200, 255), 1)
    img = Image.fromarray(side_by_side(sat, mp))
    if img.width > MAX_WIDTH:
        img = img.resize((MAX_WIDTH, round(img.height * MAX_WIDTH / img.width)), Image.LANCZOS)
    img.save(path)
    return path
