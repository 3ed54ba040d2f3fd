import numpy as np
import pytest

from backend.evaluation.metrics import Scoreboard, Tally, instances, match_instances, mask_iou


def _box(shape, r0, r1, c0, c1):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def test_empty_empty_scores_one_for_giou():
    t = Tally()
    t.add(np.zeros((10, 10), bool), np.zeros((10, 10), bool))
    assert t.giou == 1.0 and t.ciou == 1.0 and t.f1 == 1.0


def test_ciou_and_giou_differ_on_a_crafted_split():
    t = Tally()
    # sample 1: big, perfect (IoU 1, 100 px); sample 2: small, half right (4 of 8 px union)
    t.add(_box((20, 20), 0, 10, 0, 10), _box((20, 20), 0, 10, 0, 10))
    t.add(_box((20, 20), 0, 2, 0, 4), _box((20, 20), 0, 2, 2, 6))
    assert t.giou == pytest.approx((1.0 + 4 / 12) / 2)
    assert t.ciou == pytest.approx((100 + 4) / (100 + 12))


def test_instances_use_8_connectivity_and_drop_specks():
    m = np.zeros((20, 20), bool)
    m[0:4, 0:4] = True
    m[4:8, 4:8] = True         # touches the first only diagonally: still one instance
    m[15:17, 15:17] = True     # 4 px, under the 10 px floor
    assert len(instances(m)) == 1


def test_f1_hungarian_at_iou_half():
    gt = _box((40, 40), 0, 10, 0, 10) | _box((40, 40), 20, 30, 20, 30)
    pred = _box((40, 40), 0, 10, 0, 8) | _box((40, 40), 20, 30, 26, 36)   # IoU 0.8 and 0.25
    assert match_instances(pred, gt) == (1, 2, 2)
    t = Tally()
    t.add(pred, gt)
    t.add(_box((40, 40), 0, 5, 0, 5), np.zeros((40, 40), bool))         # a false positive
    p, r = 1 / 3, 1 / 2
    assert t.f1 == pytest.approx(2 * p * r / (p + r))


def test_scoreboard_reports_levels_and_all():
    b = Scoreboard()
    b.add(_box((10, 10), 0, 5, 0, 5), _box((10, 10), 0, 5, 0, 5), "name", 0.5)
    b.add(np.zeros((10, 10), bool), _box((10, 10), 0, 5, 0, 5), "class", 1.5)
    s = b.summary()
    assert set(s) == {"name", "class", "all"}
    assert s["name"]["gIoU"] == 1.0 and s["class"]["gIoU"] == 0.0 and s["all"]["gIoU"] == 0.5
    assert s["all"]["seconds_per_sample"] == 1.0


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError):
        mask_iou(np.zeros((2, 2)), np.zeros((3, 3)))
