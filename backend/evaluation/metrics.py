"""SocioSeg metrics: gIoU, cIoU and an instance-level F1 (defined here; the paper does not define it).

- gIoU: mean over samples of the mask IoU; a sample whose prediction and ground truth are both empty
  scores 1.
- cIoU: total intersection over total union across the split.
- F1: instances are the 8-connected components of a mask with more than `MIN_INSTANCE_PX` pixels.
  Predicted and ground-truth instances are matched one-to-one by the Hungarian algorithm on IoU; a
  pair counts as a true positive when its IoU >= 0.5. Counts are pooled over the split:
  precision = TP / predicted, recall = TP / ground truth, F1 = 2PR / (P + R). A split with no
  instances on either side scores 1; one side empty scores 0.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

MIN_INSTANCE_PX = 10
MATCH_IOU = 0.5


def mask_iou(pred: np.ndarray, gt: np.ndarray, empty: float = 1.0) -> float:
    """IoU of two masks; `empty` when both are empty (1 for the metrics, 0 for the GRPO reward)."""
    inter, union = _inter_union(pred, gt)
    return inter / union if union else empty


def _inter_union(pred, gt) -> tuple[int, int]:
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {g.shape} differ in size")
    return int(np.logical_and(p, g).sum()), int(np.logical_or(p, g).sum())


def instances(mask: np.ndarray, min_px: int = MIN_INSTANCE_PX) -> list[np.ndarray]:
    labels, n = ndimage.label(np.asarray(mask, bool), structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel())
    return [labels == k for k in range(1, n + 1) if sizes[k] > min_px]


def match_instances(pred: np.ndarray, gt: np.ndarray, threshold: float = MATCH_IOU) -> tuple[int, int, int]:
    """(true positives, predicted instances, ground-truth instances) of one sample."""
    P, G = instances(pred), instances(gt)
    if not P or not G:
        return 0, len(P), len(G)
    iou = np.array([[mask_iou(p, g) for g in G] for p in P])
    rows, cols = linear_sum_assignment(-iou)
    return int((iou[rows, cols] >= threshold).sum()), len(P), len(G)


@dataclass
class Tally:
    ious: list[float] = field(default_factory=list)
    inter: int = 0
    union: int = 0
    tp: int = 0
    n_pred: int = 0
    n_gt: int = 0
    seconds: float = 0.0

    def add(self, pred, gt, seconds: float = 0.0) -> float:
        inter, union = _inter_union(pred, gt)
        iou = inter / union if union else 1.0
        self.ious.append(iou)
        self.inter += inter
        self.union += union
        tp, n_p, n_g = match_instances(pred, gt)
        self.tp, self.n_pred, self.n_gt = self.tp + tp, self.n_pred + n_p, self.n_gt + n_g
        self.seconds += seconds
        return iou

    @property
    def giou(self) -> float:
        return float(np.mean(self.ious)) if self.ious else float("nan")

    @property
    def ciou(self) -> float:
        return self.inter / self.union if self.union else 1.0

    @property
    def f1(self) -> float:
        if self.n_pred == 0 and self.n_gt == 0:
            return 1.0
        if self.n_pred == 0 or self.n_gt == 0:
            return 0.0
        p, r = self.tp / self.n_pred, self.tp / self.n_gt
        return 2 * p * r / (p + r) if p + r else 0.0

    def summary(self) -> dict:
        n = len(self.ious)
        return {"samples": n, "gIoU": self.giou, "cIoU": self.ciou, "F1": self.f1,
                "seconds_per_sample": self.seconds / n if n else float("nan")}


class Scoreboard:
    """Tallies per task level and overall."""

    def __init__(self):
        self.levels: dict[str, Tally] = defaultdict(Tally)
        self.all = Tally()

    def add(self, pred, gt, level: str | None = None, seconds: float = 0.0) -> float:
        if level:
            self.levels[level].add(pred, gt, seconds)
        return self.all.add(pred, gt, seconds)

    def summary(self) -> dict:
        out = {lvl: t.summary() for lvl, t in sorted(self.levels.items())}
        out["all"] = self.all.summary()
        return out


def format_table(summary: dict) -> str:
    lines = ["| level | samples | cIoU | gIoU | F1 | s/sample |", "|---|---|---|---|---|---|"]
    for level, s in summary.items():
        lines.append(f"| {level} | {s['samples']} | {100 * s['cIoU']:.1f} | {100 * s['gIoU']:.1f} | "
                     f"{100 * s['F1']:.1f} | {s['seconds_per_sample']:.2f} |")
    return "\n".join(lines)
