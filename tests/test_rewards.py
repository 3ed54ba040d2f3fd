"""The paper's rewards against hand-computed cases."""
import math

import numpy as np
import pytest

from training.rewards import box_iou_inclusive, group_advantages, stage1_rewards, stage2_rewards

GOOD = '<think>ok</think><answer>[{"bbox_2d": [10, 10, 49, 49]}]</answer>'


def test_perfect_single_box():
    r = stage1_rewards(GOOD, [[10, 10, 49, 49]])
    assert r == {"format": 2.0, "accuracy": 1.0, "length": 1.0, "total": 4.0}


def test_inclusive_iou():
    assert box_iou_inclusive([0, 0, 9, 9], [0, 0, 9, 9]) == 1.0
    assert box_iou_inclusive([0, 0, 9, 9], [5, 0, 14, 9]) == pytest.approx(50 / 150)
    assert box_iou_inclusive([0, 0, 0, 0], [0, 0, 0, 0]) == 1.0       # one pixel is a box


def test_matched_pair_can_add_zero_or_minus_one():
    # IoU > 0.5 but mean |diff| = 12 >= 10: cost 1, contributes 1 - 1 = 0
    r = stage1_rewards('<think>a</think><answer>[{"bbox_2d": [0, 0, 99, 99]}]</answer>', [[0, 0, 123, 123]])
    assert box_iou_inclusive([0, 0, 99, 99], [0, 0, 123, 123]) > 0.5
    assert r["accuracy"] == 0.0
    # far away: cost 2, contributes 1 - 2 = -1
    r = stage1_rewards('<think>a</think><answer>[{"bbox_2d": [200, 200, 240, 240]}]</answer>', [[0, 0, 40, 40]])
    assert r["accuracy"] == -1.0 and r["total"] == pytest.approx(2.0 - 1.0 + 1.0)


def test_wrong_count_divides_by_the_larger_and_shortens_length():
    text = ('<think>a</think><answer>[{"bbox_2d": [10, 10, 49, 49]}, {"bbox_2d": [300, 300, 340, 340]}, '
            '{"bbox_2d": [500, 500, 540, 540]}]</answer>')
    r = stage1_rewards(text, [[10, 10, 49, 49]])
    assert r["accuracy"] == pytest.approx(1 / 3)        # one perfect match (+1) over max(K=3, J=1)
    assert r["length"] == pytest.approx(math.exp(-2 * 2 / 1))


def test_empty_gt_and_empty_answer():
    empty = "<think>none</think><answer>[]</answer>"
    r = stage1_rewards(empty, [])
    assert r == {"format": 1.0, "accuracy": 0.0, "length": 1.0, "total": 2.0}
    r = stage1_rewards(GOOD, [])
    assert r["length"] == 0.0 and r["accuracy"] == 0.0
    r = stage1_rewards(empty, [[0, 0, 10, 10]])
    assert r["length"] == pytest.approx(math.exp(-2)) and r["format"] == 1.0


def test_unparseable_and_malformed_items():
    r = stage1_rewards("no tags [1, 2]", [[0, 0, 10, 10]])
    assert r == {"format": 0.0, "accuracy": 0.0, "length": 0.0, "total": 0.0}
    text = '<think>a</think><answer>[{"bbox_2d": [10, 10, 49, 49]}, {"bbox_2d": [1, 2, 3]}, {"box": 1}]</answer>'
    r = stage1_rewards(text, [[10, 10, 49, 49]])
    assert r["format"] == pytest.approx(1 + 1 / 3)
    extra = '<think>a</think><answer>[{"bbox_2d": [10, 10, 49, 49], "label": "x"}]</answer>'
    assert stage1_rewards(extra, [[10, 10, 49, 49]])["format"] == 1.0      # not exactly {"bbox_2d": [...]}


def test_paper_variant_gates_on_format_and_counts_matches():
    bad_format = '<answer>[{"bbox_2d": [10, 10, 49, 49]}]</answer>'
    assert stage1_rewards(bad_format, [[10, 10, 49, 49]], variant="paper")["total"] == 0.0
    assert stage1_rewards(bad_format, [[10, 10, 49, 49]])["total"] == pytest.approx(1 + 1 + 1)
    far = '<think>a</think><answer>[{"bbox_2d": [0, 0, 99, 99]}]</answer>'
    assert stage1_rewards(far, [[0, 0, 123, 123]], variant="paper")["accuracy"] == 1.0


S1 = '<think>a</think><answer>[{"bbox_2d": [10, 10, 50, 50]}, {"bbox_2d": [60, 60, 90, 90]}]</answer>'


def _mask(r0, r1, c0, c1, shape=(100, 100)):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def test_stage2_perfect():
    text = ('<think>b</think><answer>[{"bbox_2d": [10, 10, 50, 50], "points": [[20, 20], [30, 30]]}, '
            '{"bbox_2d": [60, 60, 90, 90], "points": [[70, 70], [80, 80]]}]</answer>')
    r = stage2_rewards(text, S1, _mask(0, 10, 0, 10), _mask(0, 10, 0, 10))
    assert r == {"format": 2.0, "accuracy": 1.0, "length": 1.0, "total": 4.0}


def test_stage2_points_on_the_border_are_not_inside_and_counts_matter():
    text = ('<think>b</think><answer>[{"bbox_2d": [10, 10, 50, 50], "points": [[10, 20], [30, 30]]}, '
            '{"bbox_2d": [60, 60, 90, 90], "points": [[70, 70], [80, 80], [75, 75], [71, 71]]}]</answer>')
    r = stage2_rewards(text, S1, _mask(0, 10, 0, 10), _mask(0, 10, 0, 20))
    assert r["format"] == pytest.approx(1.5)          # item 1 has a point on its border
    assert r["length"] == pytest.approx((1.0 + math.exp(-4 / 8)) / 2)
    assert r["accuracy"] == pytest.approx(0.5)
    fewer = '<think>b</think><answer>[{"bbox_2d": [10, 10, 50, 50], "points": [[20, 20]]}]</answer>'
    r = stage2_rewards(fewer, S1, _mask(0, 1, 0, 1), _mask(0, 1, 0, 1))
    assert r["format"] == 1.0                          # item count differs from stage 1
    assert r["length"] == pytest.approx(math.exp(-1 / 8))


def test_stage2_changed_box_and_no_points_and_empty_masks():
    text = ('<think>b</think><answer>[{"bbox_2d": [10, 10, 51, 50], "points": [[20, 20], [30, 30]]}, '
            '{"bbox_2d": [60, 60, 90, 90]}]</answer>')
    r = stage2_rewards(text, S1, np.zeros((5, 5), bool), np.zeros((5, 5), bool))
    assert r["format"] == 1.0 and r["accuracy"] == 0.0
    assert r["length"] == pytest.approx(0.5)           # the item without points adds 0
    raw = S1.split("<answer>")[1].split("</answer>")[0]
    assert stage2_rewards(text, raw, np.zeros((5, 5), bool), np.zeros((5, 5), bool)) == r


def test_group_advantages():
    a = group_advantages([1.0, 3.0, 2.0, 2.0], 2)
    assert a[:2] == pytest.approx([-1.0, 1.0], abs=1e-3) and a[2:] == pytest.approx([0.0, 0.0])
