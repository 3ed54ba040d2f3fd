"""The render-and-refine overlay the released model was trained to read, and human previews."""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw

BOX_COLOUR = (0, 0, 255)
BOX_COLOUR_NAME = "blue"    # PIL's name for BOX_COLOUR, as the released code spells it
BOX_WIDTH = 2
MASK_COLOUR = (255, 0, 0)
MASK_ALPHA = 102  # 0.4 of 255, as the authors composite it
# Past this many pixels beyond the edge a 2-px outline cannot reach into the image.
CLIP_MARGIN = 8


def render_overlay(image: np.ndarray, boxes, mask: np.ndarray | None) -> np.ndarray:
    """The released render: each box as a 2-px blue outline first, THEN the red mask at alpha 0.4
    composited over it (box pixels inside the mask come out (102, 0, 153)).

    Boxes are drawn with the coordinates as given (PIL truncates them), as the released code draws
    the `json.loads` values; a box PIL refuses (x2 < x1 or y2 < y1, a string) is skipped, as released.
    Coordinates far outside the image are first moved to CLIP_MARGIN px beyond its edge: PIL walks
    every pixel of an outline, so a box at 1e9 took seconds and one at infinity half a minute. The
    pixels do not change for coordinates within +-1e9 (checked against unclipped drawing); beyond
    2^31 the released drawing depends on an out-of-range float-to-int conversion in PIL's C code.
    """
    base = Image.fromarray(np.ascontiguousarray(image[..., :3])).convert("RGBA")
    draw = ImageDraw.Draw(base)
    h, w = base.height, base.width
    for box in boxes:
        try:
            x1, y1, x2, y2 = (_clip(box[0], w), _clip(box[1], h), _clip(box[2], w), _clip(box[3], h))
            draw.rectangle([(x1, y1), (x2, y2)], outline=BOX_COLOUR_NAME, width=BOX_WIDTH)
        except Exception:   # noqa: BLE001 - the released render skips any box PIL cannot draw
            continue
    if mask is not None and mask.any():
        layer = np.zeros((*mask.shape, 4), np.uint8)
        layer[mask.astype(bool)] = (*MASK_COLOUR, MASK_ALPHA)
        base = Image.alpha_composite(base, Image.fromarray(layer, "RGBA"))
    return np.asarray(base.convert("RGB"))


def _clip(v, size: int):
    """A coordinate moved to CLIP_MARGIN px beyond the image when it lies farther out; anything that
    is not a plain number (a string, true/false, NaN) goes to PIL unchanged. An integer too large
    for a float raises, as PIL raises on it."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return v
    f = float(v)
    if f != f:
        return v
    lo, hi = -CLIP_MARGIN, size - 1 + CLIP_MARGIN
    return v if lo <= f <= hi else min(max(f, lo), hi)


def resize_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A boolean mask resized with OpenCV's nearest neighbour, as the released code resizes masks."""
    if mask.shape[:2] == (height, width):
        return mask.astype(bool)
    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0


def draw_outlines(image: np.ndarray, mask: np.ndarray, colour=(255, 255, 0), width: int = 2) -> np.ndarray:
    """Mask outlines over an image, for previews a person checks at a glance."""
    out = np.ascontiguousarray(image[..., :3]).copy()
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, colour, width)
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 8) -> np.ndarray:
    h = max(left.shape[0], right.shape[0])
    out = np.full((h, left.shape[1] + gap + right.shape[1], 3), 255, np.uint8)
    out[: left.shape[0], : left.shape[1]] = left
    out[: right.shape[0], left.shape[1] + gap:] = right
    return out
