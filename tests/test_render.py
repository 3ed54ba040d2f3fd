import numpy as np

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
