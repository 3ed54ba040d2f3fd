import time

import numpy as np
from PIL import Image, ImageDraw

from backend.pipeline.render import render_overlay


def test_overlay_is_red_at_alpha_04_with_blue_2px_boxes():
    img = np.full((100, 120, 3), 200, np.uint8)
    mask = np.zeros((100, 120), bool)
    mask[40:60, 50:70] = True
    out = render_overlay(img, [(10, 10, 90, 80)], mask)
    # red at alpha 102/255 over grey 200: 200 + (255 - 200) * 0.4 and 200 * 0.6
    assert tuple(out[50, 60]) == (222, 120, 120)
    assert tuple(out[5, 5]) == (200, 200, 200)             # untouched
    assert tuple(out[10, 40]) == (0, 0, 255) and tuple(out[11, 40]) == (0, 0, 255)   # 2 px outline
    assert tuple(out[12, 40]) == (200, 200, 200)
    assert tuple(out[45, 90]) == (0, 0, 255) and tuple(out[45, 89]) == (0, 0, 255)
    assert tuple(out[45, 88]) == (200, 200, 200)
    assert out.shape == img.shape and out.dtype == np.uint8


def test_overlay_without_mask_only_draws_boxes():
    img = np.zeros((50, 50, 3), np.uint8)
    out = render_overlay(img, [], None)
    assert (out == img).all()


def released_render(img, boxes):
    """The released render_image's box loop, read independently (no mask)."""
    base = Image.fromarray(img).convert("RGBA")
    draw = ImageDraw.Draw(base)
    for bbox in boxes:
        if len(bbox) != 4:
            continue
        try:
            draw.rectangle([(bbox[0], bbox[1]), (bbox[2], bbox[3])], outline="blue", width=2)
        except Exception:
            continue
    return np.asarray(base.convert("RGB"))


def test_boxes_are_drawn_as_released_including_odd_values():
    img = np.full((60, 80, 3), 200, np.uint8)
    boxes = [[5, 6, 40, 30], [40.7, 9.2, 70.9, 50.5], [60, 70, 1, 2], [True, False, 20, 20], [1, 2, "a", 4],
             "abcd", {"a": 1, "b": 2, "c": 3, "d": 4}, [-30, -12, 100, 90], [-3.5, -2.5, 79.5, 58.9],
             [10 ** 400, 1, 2, 3], [float("nan"), 3, 50, 40], [-1e6, 20, 1e7, 25], [30, -1e7, 35, 1e6]]
    out = render_overlay(img, boxes, None)
    assert (out == released_render(img, boxes)).all()
    for box in boxes:
        assert (render_overlay(img, [box], None) == released_render(img, [box])).all(), box


def test_huge_and_infinite_boxes_are_clipped_before_drawing():
    # PIL walks every outline pixel: unclipped, [0, 0, inf, inf] took ~20 s and 1e9 about 10 s
    img = np.full((756, 756, 3), 200, np.uint8)
    t = time.perf_counter()
    out = render_overlay(img, [[0, 0, float("inf"), float("inf")], [-1e308, 5, 1e308, 40], [3, 3, 1e9, 1e9]], None)
    assert time.perf_counter() - t < 2
    # drawn as boxes 8 px beyond the edge: the outline's inner sides, as a box in the image would be
    assert tuple(out[0, 300]) == (0, 0, 255) and tuple(out[5, 300]) == (0, 0, 255) and tuple(out[3, 3]) == (0, 0, 255)
    assert tuple(out[300, 300]) == (200, 200, 200)
