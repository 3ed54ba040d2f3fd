"""The rewards of SocioReasoner's released training code (and the paper-text variants).

Stage 1 (boxes): format + accuracy + length; stage 2 (points): format + accuracy (mask IoU) + length.
Boxes are in the model's input pixels. See ../shared/reference/socioreasoner.md for the formulas.
"""
from __future__ import annotations

import json
import math

import numpy as np
from scipy.optimize import linear_sum_assignment

from backend.evaluation.metrics import mask_iou
from backend.pipeline.prompts import ANSWER_RE, THINK_ANSWER_RE

MAX_BOXES = 120
VARIANTS = ("code", "paper")


def format_ok(completion: str) -> bool:
    return bool(THINK_ANSWER_RE.fullmatch(completion.strip()))


def answer_list(text: str):
    """The JSON list inside <answer> tags (or `text` itself when it has no tags); None if not a list."""
    m = ANSWER_RE.search(text)
    raw = m.group(1) if m else text
    try:
        value = json.loads(raw.strip())
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, list) else None


def _numbers(v, n):
    return (isinstance(v, list) and len(v) == n
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v))


def _is_box_item(item) -> bool:
    return isinstance(item, dict) and set(item) == {"bbox_2d"} and _numbers(item["bbox_2d"], 4)


def box_iou_inclusive(a, b) -> float:
    """IoU of pixel boxes whose corners are both inside (+1 on widths and heights)."""
    ix = min(a[2], b[2]) - max(a[0], b[0]) + 1
    iy = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(0.0, ix) * max(0.0, iy)
    area = lambda r: max(0.0, r[2] - r[0] + 1) * max(0.0, r[3] - r[1] + 1)  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def stage1_rewards(completion: str, gt_boxes: list[list[float]], variant: str = "code") -> dict:
    """{'format', 'accuracy', 'length', 'total'} of a stage-1 (boxes) completion."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    fmt_match = format_ok(completion)
    items = answer_list(completion)
    fmt = float(fmt_match)
    if items:
        fmt += sum(_is_box_item(it) for it in items) / len(items)
    gt = [list(map(float, b)) for b in gt_boxes][:MAX_BOXES]
    if items is None:
        acc = length = 0.0
    else:
        pred = [list(map(float, it["bbox_2d"])) for it in items
                if isinstance(it, dict) and _numbers(it.get("bbox_2d"), 4)][:MAX_BOXES]
        K, J = len(pred), len(gt)
        if K and J:
            iou = np.array([[box_iou_inclusive(p, g) for g in gt] for p in pred])
            if variant == "paper":
                r, c = linear_sum_assignment(-iou)
                acc = float((iou[r, c] > 0.5).sum()) / max(K, J)
            else:
                l1 = np.array([[np.mean(np.abs(np.subtract(p, g))) for g in gt] for p in pred])
                cost = 2.0 - (iou > 0.5) - (l1 < 10.0)
                r, c = linear_sum_assignment(cost)
                acc = float(len(r) - cost[r, c].sum()) / max(K, J)
        else:
            acc = 0.0
        if J == 0:
            length = 1.0 if K == 0 else 0.0
        else:
            length = math.exp(-2.0 * abs(K - J) / J)
    total = fmt + acc + length
    if variant == "paper" and not fmt_match:
        total = 0.0
    return {"format": fmt, "accuracy": acc, "length": length, "total": total}


def stage2_rewards(completion: str, stage1_answer: str, pred_mask, gt_mask, variant: str = "code") -> dict:
    """{'format', 'accuracy', 'length', 'total'} of a stage-2 (points) completion.

    `stage1_answer` is stage 1's answer (its completion, or the raw text inside its <answer> tags);
    `pred_mask` the segmenter's final mask from this completion, `gt_mask` the ground truth.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    fmt_match = format_ok(completion)
    items = answer_list(completion) or []
    ref = answer_list(stage1_answer) or []
    fmt = float(fmt_match)
    if items and len(items) == len(ref):
        good = 0
        for it, r in zip(items, ref):
            if not (isinstance(it, dict) and isinstance(r, dict) and _numbers(it.get("bbox_2d"), 4)
                    and it.get("bbox_2d") == r.get("bbox_2d")):
                continue
            x1, y1, x2, y2 = it["bbox_2d"]
            pts = it.get("points")
            if isinstance(pts, list) and pts and all(_numbers(p, 2) and x1 < p[0] < x2 and y1 < p[1] < y2
                                                     for p in pts):
                good += 1
        fmt += good / len(items)
    lengths = []
    for it in items:
        pts = it.get("points") if isinstance(it, dict) else None
        lengths.append(math.exp(-((len(pts) - 2) ** 2) / (2 * 2.0 ** 2)) if isinstance(pts, list) and pts else 0.0)
    length = float(np.mean(lengths)) if lengths else 0.0
    acc = mask_iou(pred_mask, gt_mask, empty=0.0)
    total = fmt + acc + length
    if variant == "paper" and not fmt_match:
        total = 0.0
    return {"format": fmt, "accuracy": acc, "length": length, "total": total}


def group_advantages(rewards, group: int, eps: float = 1e-4) -> np.ndarray:
    """(r - mean) / (std + eps) within consecutive groups of `group` rollouts of the same sample."""
    r = np.asarray(rewards, np.float64).reshape(-1, group)
    return ((r - r.mean(axis=1, keepdims=True)) / (r.std(axis=1, keepdims=True) + eps)).reshape(-1)
