"""The GRPO rewards of SocioReasoner's released training code, input for input, and its advantages.

Stage 1 (boxes): format + accuracy + length; stage 2 (points): format + accuracy (mask IoU) + length.
The formulas and their edge cases are in ../shared/reference/socioreasoner.md ("Rewards"). These
functions follow the released code's behaviour on every input, malformed ones included, because that
behaviour is what the released checkpoint was trained on. So, unlike the tolerant parser used at
inference (backend/pipeline/prompts.py): no strip before the format check, no answer without
`<answer>` tags, and whatever made the released code raise inside a term scores that term's fallback.

Coordinates: predicted boxes are in the model's input pixels (756 for a 768 tile) while the
ground-truth boxes come from the ORIGINAL mask (`training.data.gt_boxes`), as released.

One divergence, on purpose: a box list whose numbers do not fit in 64 bits (numpy makes an object
array of it, which the released code would still compare) scores 0 accuracy here.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from backend.evaluation.metrics import mask_iou
from backend.pipeline.prompts import ANSWER_RE, THINK_ANSWER_RE

MAX_BOXES = 120               # matching only: the length term counts every box
VARIANTS = ("code", "paper")  # code: the released training code; paper: the paper's text
# The released worker decodes with special tokens and removes exactly these before scoring.
END_TOKENS = ("<|endoftext|>", "<|im_end|>", "<pad>")
# The format term and the box terms read the answer with surrounding whitespace outside the group;
# the stage-2 length term uses ANSWER_RE and .strip().
_ANSWER_TRIMMED_RE = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)
_NO_JSON = object()
REWARD_CLIP = ADVANTAGE_CLIP = 10.0   # the released config's reward_clip and advantage_clip


def clean_response(text: str) -> str:
    """The response as the released reward worker scores it (end-of-text tokens removed, no strip)."""
    for tok in END_TOKENS:
        text = text.replace(tok, "")
    return text


def answer_text(response: str) -> str:
    """Stage 1's answer as the released pipeline hands it to stage 2: inside the first <answer> tags,
    .strip()ped; "" when there are none."""
    m = ANSWER_RE.search(response)
    return m.group(1).strip() if m else ""


def _answer_json(text: str):
    """The JSON value between the first <answer> tags; None without tags, _NO_JSON if not JSON."""
    m = _ANSWER_TRIMMED_RE.search(text)
    if m is None:
        return None
    try:
        return json.loads(m.group(1))
    except (ValueError, RecursionError):
        return _NO_JSON


def think_format(text: str) -> float:
    return 1.0 if THINK_ANSWER_RE.fullmatch(text) else 0.0


def stage1_format(text: str) -> float:
    """1 for the think/answer layout, plus the share of answer items that are exactly {"bbox_2d": [4]}.
    The second part is 0 for a non-list or empty answer, and for a list holding any non-object."""
    base = think_format(text)
    data = _answer_json(text)
    if not isinstance(data, list) or not data or not all(isinstance(it, dict) for it in data):
        return base
    good = sum(1 for it in data
               if set(it) == {"bbox_2d"} and isinstance(it["bbox_2d"], list) and len(it["bbox_2d"]) == 4)
    return base + good / len(data)


def _box_values(data):
    """The `bbox_2d` values of every item, or None when an item is not an object with that key."""
    if isinstance(data, (str, dict)) and not data:
        return []            # iterating "" or {} yields nothing: zero boxes
    if not isinstance(data, list) or not all(isinstance(it, dict) and "bbox_2d" in it for it in data):
        return None
    return [it["bbox_2d"] for it in data]


def _box_array(values):
    """values as a numeric K x 4 array, or None (ragged, not numbers, booleans only, nested...)."""
    try:
        arr = np.array(values)
    except ValueError:                       # ragged lists
        return None
    return arr if arr.ndim == 2 and arr.shape[1] == 4 and arr.dtype.kind in "iuf" else None


def box_iou_matrix(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of every predicted box with every GT box, corners inclusive (+1 on sides). Areas are not
    clamped, and a union below 1e-6 is taken as 1e-6, as released (this matters for inverted boxes)."""
    p, g = pred[:, None, :], gt[None, :, :]
    iw = np.maximum(0, np.minimum(p[..., 2], g[..., 2]) - np.maximum(p[..., 0], g[..., 0]) + 1)
    ih = np.maximum(0, np.minimum(p[..., 3], g[..., 3]) - np.maximum(p[..., 1], g[..., 1]) + 1)
    inter = iw * ih
    area_p = (p[..., 2] - p[..., 0] + 1) * (p[..., 3] - p[..., 1] + 1)
    area_g = (g[..., 2] - g[..., 0] + 1) * (g[..., 3] - g[..., 1] + 1)
    return inter / np.maximum(area_p + area_g - inter, 1e-6)


def stage1_accuracy(text: str, gt_boxes, variant: str = "code") -> float:
    """Hungarian matching of predicted to GT boxes (each list cut at MAX_BOXES); cost per pair
    2 - [IoU > 0.5] - [mean |coordinate difference| < 10]; (pairs - cost) / max(K, J). `paper`:
    matched pairs with IoU > 0.5 over max(K, J)."""
    data = _answer_json(text)
    if not data or data is _NO_JSON:
        return 0.0
    values = _box_values(data)
    pred = _box_array(values) if values else None
    gt = np.array(gt_boxes).reshape(-1, 4)
    if pred is None or not len(gt):
        return 0.0
    pred, gt = pred[:MAX_BOXES], gt[:MAX_BOXES]
    with np.errstate(all="ignore"):          # inf / nan coordinates simply fail both tests
        iou = box_iou_matrix(pred, gt)
        if variant == "paper":
            rows, cols = linear_sum_assignment(-np.nan_to_num(iou))
            return float((iou[rows, cols] > 0.5).sum()) / max(len(pred), len(gt))
        close = np.abs(pred[:, None, :] - gt[None, :, :]).mean(axis=2) < 10
        cost = 2.0 - (iou > 0.5) - close
    rows, cols = linear_sum_assignment(cost)
    return float(len(rows) - cost[rows, cols].sum()) / max(len(pred), len(gt))


def stage1_length(text: str, gt_boxes) -> float:
    """1 if there are no GT boxes and none predicted; 0 if none exist but some are predicted; else
    exp(-2 |K - J| / J) over ALL predicted boxes. 0 when the boxes cannot be read."""
    data = _answer_json(text)
    if data is None or data is _NO_JSON:
        return 0.0
    values = _box_values(data)
    if values is None:
        return 0.0
    try:
        k = len(np.array(values))
    except ValueError:                       # ragged box lists
        return 0.0
    j = len(gt_boxes)
    if j == 0:
        return 1.0 if k == 0 else 0.0
    return math.exp(-2.0 * abs(k - j) / j)


def _points_inside(box, ref_box, points) -> bool:
    """Whether an item's points are [x, y] pairs strictly inside its box and the box is stage 1's.
    Evaluated in the released order: a bad point still has its coordinates compared, so a point that
    cannot be indexed or compared raises (TypeError, IndexError, KeyError) and zeroes the caller."""
    ok = ref_box == box
    for p in points:
        if not isinstance(p, list) or len(p) != 2:
            ok = False
        x, inside = p[0], False
        if not (x <= box[0] or x >= box[2]):
            y = p[1]
            inside = not (y <= box[1] or y >= box[3])
        if not inside:
            return False
    return ok


def stage2_format(text: str, bboxes_text: str) -> float:
    """1 for the think/answer layout, plus the share of items repeating stage 1's box at the same index
    with `points` strictly inside it; 0 for that part when the counts differ or anything is malformed."""
    base = think_format(text)
    data = _answer_json(text)
    if data is None or data is _NO_JSON:
        return base
    try:
        ref = json.loads(bboxes_text.replace("'", '"'))
    except (ValueError, RecursionError):
        return base
    if not data or not isinstance(data, list) or not isinstance(ref, list) or len(ref) != len(data):
        return base
    good = 0
    try:
        for it, r in zip(data, ref):
            ref_box = r["bbox_2d"]
            if not isinstance(it, dict):
                return base
            box, pts = it.get("bbox_2d"), it.get("points")
            if ("bbox_2d" in it and "points" in it and isinstance(box, list) and len(box) == 4
                    and isinstance(pts, list)):
                good += _points_inside(box, ref_box, pts)
    except (TypeError, KeyError, IndexError):
        return base
    return base + good / len(data)


def stage2_length(text: str, ideal: int = 2, sigma: float = 2.0) -> float:
    """Mean over answer items of exp(-(n - 2)^2 / 8), n = len(points); items without points add 0."""
    m = ANSWER_RE.search(text)
    if m is None:
        return 0.0
    try:
        data = json.loads(m.group(1).strip())
        total = 0.0
        for it in data:
            if "points" in it:               # an item without points counts, adding nothing
                total += math.exp(-((len(it["points"]) - ideal) ** 2) / (2 * sigma ** 2))
        return total / len(data) if data else 0.0
    except (ValueError, TypeError, KeyError, RecursionError):
        return 0.0


def stage2_accuracy(pred_mask, gt_mask) -> float:
    """IoU of the final mask with the GT mask at the original resolution; 0 if the sizes differ or
    the union is empty."""
    pred, gt = np.asarray(pred_mask), np.asarray(gt_mask)
    if pred.shape != gt.shape:
        return 0.0
    return mask_iou(pred, gt, empty=0.0)


def _check(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"reward variant must be one of {VARIANTS}, not {variant!r}")


def stage1_rewards(response: str, gt_boxes, variant: str = "code") -> dict:
    """{'format', 'accuracy', 'length', 'total'} of a stage-1 (boxes) response (decoded text)."""
    _check(variant)
    text = clean_response(response)
    r = {"format": stage1_format(text), "accuracy": stage1_accuracy(text, gt_boxes, variant),
         "length": stage1_length(text, gt_boxes)}
    gated = variant == "paper" and not think_format(text)
    r["total"] = 0.0 if gated else r["format"] + r["accuracy"] + r["length"]
    return r


def stage2_rewards(response: str, bboxes_text: str, pred_mask, gt_mask, variant: str = "code") -> dict:
    """{'format', 'accuracy', 'length', 'total'} of a stage-2 (points) response.

    `bboxes_text` is what stage 1 handed over (`answer_text(stage1_response)`); `pred_mask` the final
    mask resized to the ground truth's (original) size with nearest neighbour; `gt_mask` boolean.
    """
    _check(variant)
    text = clean_response(response)
    r = {"format": stage2_format(text, bboxes_text), "accuracy": stage2_accuracy(pred_mask, gt_mask),
         "length": stage2_length(text)}
    gated = variant == "paper" and not think_format(text)
    r["total"] = 0.0 if gated else r["format"] + r["accuracy"] + r["length"]
    return r


def released_totals(rewards: list[dict]) -> torch.Tensor:
    """Per-sequence totals as the released pipeline holds them: float16 terms summed in float16
    (format + length + accuracy), clipped to +-REWARD_CLIP."""
    def t(key):
        return torch.tensor([r[key] for r in rewards], dtype=torch.float16)
    return torch.clamp(t("format") + t("length") + t("accuracy"), -REWARD_CLIP, REWARD_CLIP)


def group_advantages(totals, group: int) -> np.ndarray:
    """(r - mean) / (unbiased std + 1e-6) within consecutive groups of `group` rollouts of one sample
    (one call per stage), in the rewards' own dtype as released, then clipped to +-ADVANTAGE_CLIP."""
    if group < 2:
        raise ValueError("GRPO needs at least 2 rollouts per group")
    r = torch.as_tensor(totals)
    if not r.is_floating_point():
        r = r.double()
    r = r.reshape(-1, group)
    r = r - r.mean(dim=-1, keepdim=True)
    r = r / (torch.std(r, dim=-1, keepdim=True) + 1e-6)
    return torch.clamp(r, -ADVANTAGE_CLIP, ADVANTAGE_CLIP).reshape(-1).float().numpy()
