"""training.rewards against an independent implementation of the released reward formulas.

The `ref_*` functions below are written from the reference text (../shared/reference/socioreasoner.md,
"Rewards" and "Edge cases") in plain Python: no numpy, brute-force matching instead of the Hungarian
solver. Random responses cover well-formed and malformed answers; every term must agree exactly.
"""
import itertools
import json
import math
import random
import re

import numpy as np
import pytest
import torch

from training import rewards as R

FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.S)
TRIMMED = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)
PLAIN = re.compile(r"<answer>(.*?)</answer>", re.S)
BAD = object()


# ---------------------------------------------------------------- the independent implementation
def ref_clean(text):
    return text.replace("<|endoftext|>", "").replace("<|im_end|>", "").replace("<pad>", "")


def ref_json(text, pattern=TRIMMED, strip=False):
    m = pattern.search(text)
    if not m:
        return None, False
    try:
        return json.loads(m.group(1).strip() if strip else m.group(1)), True
    except ValueError:
        return BAD, True


def is_num(v):
    return isinstance(v, (int, float))          # JSON booleans are ints to the released numpy code


def ref_shape(v):
    """numpy's shape of nested lists (dicts and strings are scalars to it); raises on ragged ones."""
    if not isinstance(v, list):
        return ()
    inner = {ref_shape(x) for x in v}
    if len(inner) > 1:
        raise ValueError("ragged")
    return (len(v),) + (inner.pop() if inner else ())


def ref_boxes_countable(data):
    """Number of boxes numpy can stack (the length term), or None."""
    if isinstance(data, (str, dict)) and len(data) == 0:
        return 0
    if not isinstance(data, list) or any(not isinstance(d, dict) or "bbox_2d" not in d for d in data):
        return None
    try:
        ref_shape([d["bbox_2d"] for d in data])
    except ValueError:
        return None
    return len(data)


def ref_boxes_numeric(data):
    if not isinstance(data, list) or not data:
        return None
    if any(not isinstance(d, dict) or "bbox_2d" not in d for d in data):
        return None
    vals = [d["bbox_2d"] for d in data]
    if not all(isinstance(v, list) and len(v) == 4 and all(is_num(x) for x in v) for v in vals):
        return None
    if all(isinstance(x, bool) for v in vals for x in v):
        return None                              # numpy cannot subtract booleans
    return [[float(x) for x in v] for v in vals]


def ref_iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = iw * ih
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return inter / max(union, 1e-6)


def ref_s1(resp, gt):
    text = ref_clean(resp)
    think = 1.0 if FORMAT.fullmatch(text) else 0.0
    data, tagged = ref_json(text)
    fmt = think
    if isinstance(data, list) and data and all(isinstance(d, dict) for d in data):
        fmt += sum(set(d) == {"bbox_2d"} and isinstance(d["bbox_2d"], list) and len(d["bbox_2d"]) == 4
                   for d in data) / len(data)
    k = ref_boxes_countable(data) if tagged and data is not BAD else None
    if k is None:
        length = 0.0
    elif not gt:
        length = 1.0 if k == 0 else 0.0
    else:
        length = math.exp(-2 * abs(k - len(gt)) / len(gt))
    pred = ref_boxes_numeric(data) if tagged and data is not BAD else None
    acc = 0.0
    if pred and gt:
        p, g = pred[:120], gt[:120]

        def cost(a, b):
            close = sum(abs(x - y) for x, y in zip(a, b)) / 4 < 10
            return 2.0 - (ref_iou(a, b) > 0.5) - close
        small, large, flip = (p, g, False) if len(p) <= len(g) else (g, p, True)
        best = min(sum(cost(*((large[j], small[i]) if flip else (small[i], large[j]))) for i, j in enumerate(perm))
                   for perm in itertools.permutations(range(len(large)), len(small)))
        acc = (len(small) - best) / max(len(p), len(g))
    return {"format": fmt, "accuracy": acc, "length": length}


class Zero(Exception):
    pass


def ref_item_ok(item, ref_box):
    box, pts = item["bbox_2d"], item["points"]
    ok = box == ref_box
    for p in pts:
        # a point must be [x, y]; anything else fails the item, and is still compared below
        if not (isinstance(p, list) and len(p) == 2):
            ok = False
        try:
            if p[0] <= box[0] or p[0] >= box[2]:
                return False                     # the first outside point ends the check
            if p[1] <= box[1] or p[1] >= box[3]:
                return False
        except (TypeError, IndexError, KeyError):
            raise Zero()                         # a point that cannot be read zeroes the answer part
    return ok


def ref_s2(resp, bboxes_text, pred, gt):
    text = ref_clean(resp)
    think = 1.0 if FORMAT.fullmatch(text) else 0.0
    data, _ = ref_json(text)
    try:
        ref = json.loads(bboxes_text.replace("'", '"'))
    except ValueError:
        ref = BAD
    fmt = think
    if isinstance(data, list) and data and isinstance(ref, list) and len(ref) == len(data):
        try:
            good = 0
            for item, r in zip(data, ref):
                if not isinstance(r, dict) or "bbox_2d" not in r or not isinstance(item, dict):
                    raise Zero()
                if (isinstance(item.get("bbox_2d"), list) and len(item["bbox_2d"]) == 4 and "points" in item
                        and isinstance(item["points"], list)):
                    good += ref_item_ok(item, r["bbox_2d"])
            fmt += good / len(data)
        except Zero:
            pass
    length = 0.0
    items, tagged = ref_json(text, PLAIN, strip=True)
    if tagged and isinstance(items, list) and items:
        terms = []
        for it in items:
            if isinstance(it, dict):
                terms.append(math.exp(-((len(it["points"]) - 2) ** 2) / 8) if "points" in it and
                             isinstance(it["points"], (list, str, dict)) else (0.0 if "points" not in it else None))
            elif isinstance(it, (list, str)):
                terms.append(None if "points" in it else 0.0)
            else:
                terms.append(None)
        length = 0.0 if None in terms else sum(terms) / len(items)
    acc = 0.0
    if pred.shape == gt.shape:
        inter = sum(bool(a) and bool(b) for a, b in zip(pred.ravel(), gt.ravel()))
        union = sum(bool(a) or bool(b) for a, b in zip(pred.ravel(), gt.ravel()))
        acc = inter / union if union else 0.0
    return {"format": fmt, "accuracy": acc, "length": length}


# ---------------------------------------------------------------- random responses
def rand_box(rng, gt):
    kind = rng.random()
    if gt and kind < 0.45:
        g = rng.choice(gt)
        return [g[0] + rng.randint(-12, 12), g[1] + rng.randint(-12, 12), g[2] + rng.randint(-12, 12),
                g[3] + rng.randint(-12, 12)]
    if kind < 0.6:
        x, y = rng.randint(0, 700), rng.randint(0, 700)
        return [x, y, x + rng.randint(1, 200), y + rng.randint(1, 200)]
    if kind < 0.68:
        return [round(rng.uniform(0, 700), 2) for _ in range(4)]
    if kind < 0.74:
        x, y = rng.randint(100, 700), rng.randint(100, 700)
        return [x, y, x - rng.randint(1, 50), y - rng.randint(1, 50)]      # inverted
    return rng.choice([[1, 2, 3], [1, 2, 3, 4, 5], ["a", "b", "c", "d"], [True, True, False, True],
                       [True, 5, 300, 300], 7, None, [[1, 2], [3, 4], [5, 6], [7, 8]], [0, 0, 0, 0]])


def rand_s1_item(rng, gt):
    r = rng.random()
    if r < 0.8:
        return {"bbox_2d": rand_box(rng, gt)}
    return rng.choice([{"bbox_2d": rand_box(rng, gt), "label": "x"}, {"box": [1, 2, 3, 4]}, [1, 2, 3, 4],
                       "bbox", 3, None])


def wrap(rng, answer):
    think = rng.choice(["<think>ok</think>", "<think>a\nb</think>\n", "", "<think>x", "<think></think> "])
    inner = rng.choice(["", " ", "\n"]) + answer + rng.choice(["", " ", "\n"])
    body = think + rng.choice([f"<answer>{inner}</answer>"] * 6 + [inner, f"<answer>{inner}"])
    return body + rng.choice(["", "", "", "\n", "<|im_end|>", "<|im_end|><|endoftext|>", " tail", "<pad>"])


def rand_s1_answer(rng, gt):
    r = rng.random()
    if r < 0.75:
        return json.dumps([rand_s1_item(rng, gt) for _ in range(rng.choice([0, 1, 1, 2, 3, 5]))])
    return rng.choice(["{}", '""', "5", "null", "[", "[{'bbox_2d': [1, 2, 3, 4]}]", '{"bbox_2d": [1, 2, 3, 4]}',
                       '"abc"', "NaN", "[[1, 2, 3, 4]]", "[]", "true", "0"])


def rand_point(rng, box):
    r = rng.random()
    if r < 0.7 and isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
        lo_x, hi_x, lo_y, hi_y = box[0], box[2], box[1], box[3]
        if rng.random() < 0.75:
            return [(lo_x + hi_x) // 2, (lo_y + hi_y) // 2]                 # inside (unless degenerate)
        return [rng.choice([lo_x, hi_x, lo_x + 1, hi_x + 5]), rng.choice([lo_y, hi_y, lo_y + 1, lo_y - 5])]
    return rng.choice([[5], [1, 2, 3], "ab", 4, None, [], ["x", "y"], {"x": 1}, [float("nan"), float("nan")],
                       [0, "y"], [10 ** 6, "y"]])


def rand_s2_item(rng, s1_item, gt):
    box = s1_item.get("bbox_2d") if isinstance(s1_item, dict) else rand_box(rng, gt)
    if rng.random() < 0.15:
        box = rand_box(rng, gt)
    r = rng.random()
    if r < 0.8:
        return {"bbox_2d": box, "points": [rand_point(rng, box) for _ in range(rng.choice([0, 1, 2, 2, 3, 4]))]}
    return rng.choice([{"bbox_2d": box}, {"bbox_2d": box, "points": "pp"}, {"bbox_2d": box, "points": 3},
                       {"points": [[1, 2]]}, ["points"], "points", 5, None, {"bbox_2d": box, "points": {"a": 1}}])


def rand_s2_answer(rng, s1_items, gt):
    if not isinstance(s1_items, list) or rng.random() < 0.15:
        s1_items = [rand_s1_item(rng, gt) for _ in range(rng.choice([1, 2]))]
    items = [rand_s2_item(rng, it, gt) for it in s1_items]
    if rng.random() < 0.15:
        items = items[:-1] if rng.random() < 0.5 else items + [rand_s2_item(rng, {}, gt)]
    if rng.random() < 0.08:
        return rng.choice(["[]", "{}", "5", "[", '"points"', '{"points": 1}'])
    return json.dumps(items)


def rand_gt(rng):
    boxes = []
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        x, y = rng.randint(0, 600), rng.randint(0, 600)
        boxes.append([x, y, x + rng.randint(5, 160), y + rng.randint(5, 160)])
    return boxes


def rand_masks(rng):
    shape = (9, 11)
    pred = np.array([[rng.random() < 0.4 for _ in range(shape[1])] for _ in range(shape[0])])
    gt = np.array([[rng.random() < 0.3 for _ in range(shape[1])] for _ in range(shape[0])])
    r = rng.random()
    if r < 0.1:
        pred = np.zeros(shape, bool)
        gt = np.zeros(shape, bool)
    elif r < 0.15:
        pred = np.ones((shape[0] + 1, shape[1]), bool)
    return pred, gt


def _same(got, want):
    assert set(want) <= set(got)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12, rel=1e-12), k


def test_agrees_with_the_independent_implementation_on_random_responses():
    rng = random.Random(20260125)
    counts = {"s1_format2": 0, "s1_acc_pos": 0, "s1_acc_neg": 0, "s2_format_part": 0, "s2_zeroed": 0}
    for case in range(3000):
        gt = rand_gt(rng)
        a1 = rand_s1_answer(rng, gt)
        r1 = wrap(rng, a1)
        got1, want1 = R.stage1_rewards(r1, gt), ref_s1(r1, gt)
        _same(got1, want1)
        assert got1["total"] == pytest.approx(got1["format"] + got1["accuracy"] + got1["length"])
        counts["s1_format2"] += got1["format"] == 2.0
        counts["s1_acc_pos"] += got1["accuracy"] > 0
        counts["s1_acc_neg"] += got1["accuracy"] < 0
        try:
            s1_items = json.loads(a1)
        except ValueError:
            s1_items = None
        r2 = wrap(rng, rand_s2_answer(rng, s1_items, gt))
        bboxes_text = R.answer_text(r1) if rng.random() < 0.8 else rng.choice(["", "[", "[{'bbox_2d': [1, 2, 3, 4]}]"])
        pred, gtm = rand_masks(rng)
        got2, want2 = R.stage2_rewards(r2, bboxes_text, pred, gtm), ref_s2(r2, bboxes_text, pred, gtm)
        _same(got2, want2)
        counts["s2_format_part"] += got2["format"] % 1 > 0 or got2["format"] == 2.0
        counts["s2_zeroed"] += got2["format"] in (0.0, 1.0)
    # the generator reaches every regime (otherwise agreement would prove little)
    assert all(v > 50 for v in counts.values()), counts


# ---------------------------------------------------------------- the named edge cases
GOOD = '<think>ok</think><answer>[{"bbox_2d": [10, 10, 49, 49]}]</answer>'


@pytest.mark.parametrize("response, gt, want", [
    (GOOD, [[10, 10, 49, 49]], {"format": 2.0, "accuracy": 1.0, "length": 1.0}),
    (GOOD + "\n", [[10, 10, 49, 49]], {"format": 1.0}),                               # no strip
    (GOOD + "<|im_end|>", [[10, 10, 49, 49]], {"format": 2.0}),                      # end tokens removed
    ('<think>a</think>[{"bbox_2d": [10, 10, 49, 49]}]', [[10, 10, 49, 49]],          # no <answer> tags
     {"format": 0.0, "accuracy": 0.0, "length": 0.0}),
    ('<think>a</think><answer>[{"bbox_2d": [10, 10, 49, 49]}, {"box": 1}]</answer>', [[10, 10, 49, 49]],
     {"format": 1.5, "accuracy": 0.0, "length": 0.0}),                                # item without bbox_2d
    ('<think>a</think><answer>[{"bbox_2d": [10, 10, 49, 49]}, 5]</answer>', [[10, 10, 49, 49]],
     {"format": 1.0}),                                                                # a non-object item
    ("<think>a</think><answer>[]</answer>", [], {"format": 1.0, "accuracy": 0.0, "length": 1.0}),
    (GOOD, [], {"accuracy": 0.0, "length": 0.0}),
    ('<think>a</think><answer>[{"bbox_2d": [0, 0, 99, 99]}]</answer>', [[0, 0, 123, 123]],
     {"accuracy": 0.0}),                                                              # IoU > .5, far corners
    ('<think>a</think><answer>[{"bbox_2d": [200, 200, 240, 240]}]</answer>', [[0, 0, 40, 40]],
     {"accuracy": -1.0}),
    ('<think>a</think><answer>[{"bbox_2d": [60, 60, 50, 50]}]</answer>', [[60, 60, 50, 50]],
     {"accuracy": 0.0}),             # inverted boxes: a union below 1e-6 is 1e-6, no division by zero
])
def test_edge_cases(response, gt, want):
    _same(R.stage1_rewards(response, gt), want)


def test_stage1_length_counts_every_box_but_matching_stops_at_120():
    boxes = [{"bbox_2d": [10, 10, 49, 49]}] + [{"bbox_2d": [500 + i, 500, 510 + i, 510]} for i in range(129)]
    text = f"<think>a</think><answer>{json.dumps(boxes)}</answer>"
    r = R.stage1_rewards(text, [[10, 10, 49, 49]])
    assert r["length"] == pytest.approx(math.exp(-2 * 129))
    assert r["accuracy"] == pytest.approx((1 + 0) / 120)     # one perfect pair; K cut to 120


S1 = '<think>a</think><answer>[{"bbox_2d": [10, 10, 50, 50]}, {"bbox_2d": [60, 60, 90, 90]}]</answer>'


def _s2(answer):
    z = np.zeros((4, 4), bool)
    return R.stage2_rewards(f"<think>b</think><answer>{answer}</answer>", R.answer_text(S1), z, z)


def test_stage2_edge_cases():
    both = '{"bbox_2d": [60, 60, 90, 90], "points": [[70, 70], [80, 80]]}'
    r = _s2(f'[{{"bbox_2d": [10, 10, 50, 50], "points": []}}, {both}]')
    assert r["format"] == 2.0                                        # empty points pass
    assert r["length"] == pytest.approx((math.exp(-0.5) + 1) / 2)
    assert r["accuracy"] == 0.0                                      # both masks empty: 0, not 1
    r = _s2(f'[{{"bbox_2d": [10, 10, 50, 50], "points": [[20, 20], [30]]}}, {both}]')
    assert r["format"] == 1.0                                        # a malformed point zeroes the part
    r = _s2(f'[{{"bbox_2d": [10, 10, 50, 50], "points": [[10, 20], [30]]}}, {both}]')
    assert r["format"] == 1.5        # ...unless an earlier point already left the box (released order)
    r = _s2(f'[{{"bbox_2d": [10, 10, 50, 50], "points": [[20, 20, 1], [30, 30]]}}, {both}]')
    assert r["format"] == 1.5                                        # [x, y, z] fails only its item
    r = _s2(f'[{both}]')
    assert r["format"] == 1.0                                        # item count differs from stage 1
    r = _s2(f'[{{"bbox_2d": [10, 10, 51, 50], "points": [[20, 20]]}}, {both}]')
    assert r["format"] == 1.5                                        # box changed


def test_stage2_accuracy_needs_equal_sizes():
    m = np.ones((8, 8), bool)
    assert R.stage2_accuracy(m, m) == 1.0
    assert R.stage2_accuracy(m, np.ones((9, 8), bool)) == 0.0


def test_paper_variant_gates_on_format_and_counts_matches():
    bad_format = '<answer>[{"bbox_2d": [10, 10, 49, 49]}]</answer>'
    assert R.stage1_rewards(bad_format, [[10, 10, 49, 49]], variant="paper")["total"] == 0.0
    assert R.stage1_rewards(bad_format, [[10, 10, 49, 49]])["total"] == pytest.approx(1 + 1 + 1)
    far = '<think>a</think><answer>[{"bbox_2d": [0, 0, 99, 99]}]</answer>'
    assert R.stage1_rewards(far, [[0, 0, 123, 123]], variant="paper")["accuracy"] == 1.0
    with pytest.raises(ValueError, match="variant"):
        R.stage1_rewards(GOOD, [], variant="papr")


def test_advantages_are_group_normalised_with_the_unbiased_std_in_float16():
    parts = [{"format": 2.0, "accuracy": a, "length": math.exp(-0.5)} for a in (0.1, 0.9, 0.35, 0.6)]
    parts += [{"format": 1.0, "accuracy": 0.0, "length": 0.0}] * 4
    totals = R.released_totals(parts)
    assert totals.dtype == torch.float16
    adv = R.group_advantages(totals, 4)
    r = [float(t) for t in totals]
    for lo in (0, 4):
        g = r[lo:lo + 4]
        mean = sum(g) / 4
        std = math.sqrt(sum((x - mean) ** 2 for x in g) / 3)              # unbiased
        want = [(x - mean) / (std + 1e-6) for x in g]
        assert np.allclose(adv[lo:lo + 4], want, atol=5e-3)               # float16 arithmetic
    assert np.all(adv[4:] == 0)                                           # a flat group teaches nothing
    with pytest.raises(ValueError, match="at least 2"):
        R.group_advantages([1.0], 1)
