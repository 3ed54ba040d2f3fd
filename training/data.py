"""SocioSeg samples from the raw folder layout or the Hugging Face layout, robust to bad samples.

Raw:  <root>/<split>/<id>/map.png sat.png mask.png question.json   ({"problem": ..., "task": optional})
Hub:  datasets.load_dataset(<id or folder or parquet files>) with columns id, problem, map_image,
      sat_image, mask_label (and optionally task / level).
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from backend.pipeline.prompts import smart_resize

log = logging.getLogger(__name__)
LEVEL_KEYS = ("task", "level", "task_level", "type")


@dataclass
class Sample:
    id: str
    query: str
    level: str | None
    map_image: np.ndarray   # H x W x 3 uint8
    sat_image: np.ndarray
    mask: np.ndarray        # H x W bool


def _image(value) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    if isinstance(value, dict) and value.get("bytes") is not None:
        return Image.open(io.BytesIO(value["bytes"]))
    if isinstance(value, dict) and value.get("path"):
        return Image.open(value["path"])
    if isinstance(value, (str, os.PathLike)):
        return Image.open(value)
    raise ValueError(f"not an image: {type(value).__name__}")


def _rgb(value) -> np.ndarray:
    return np.asarray(_image(value).convert("RGB"))


def _mask(value) -> np.ndarray:
    """Ground truth as the released code reads it: the image converted to L, any non-zero pixel."""
    return np.asarray(_image(value).convert("L")) > 0


def _level(record: dict) -> str | None:
    for k in LEVEL_KEYS:
        v = record.get(k)
        if isinstance(v, str) and v.strip():
            v = v.strip().lower().replace("socio-", "")
            return v
    return None


def _check(s: Sample) -> Sample:
    if not s.query.strip():
        raise ValueError("empty question")
    if s.map_image.shape[:2] != s.sat_image.shape[:2] or s.mask.shape != s.sat_image.shape[:2]:
        raise ValueError(f"image sizes differ: map {s.map_image.shape[:2]}, satellite "
                         f"{s.sat_image.shape[:2]}, mask {s.mask.shape}")
    return s


class SocioSegData:
    """A split of SocioSeg; `samples()` yields only the samples that load, counting the others."""

    def __init__(self, source: str, split: str = "train", limit: int | None = None):
        self.source, self.split = source, split
        self.skipped: dict[str, str] = {}
        folder = os.path.join(source, split)
        if os.path.isdir(folder) and any(os.path.isfile(os.path.join(d, "question.json"))
                                         for d in glob.glob(os.path.join(folder, "*"))[:50]):
            self.kind = "raw"
            self._items = sorted(d for d in glob.glob(os.path.join(folder, "*")) if os.path.isdir(d))
        else:
            self.kind = "hub"
            self._items = self._load_hub(source, split)
        if limit is not None:
            self._items = self._items[:limit]

    @staticmethod
    def _load_hub(source: str, split: str):
        try:
            import datasets
        except ImportError as exc:
            raise RuntimeError(f"the datasets package is needed for {source!r}: pip install datasets ({exc})")
        try:
            if os.path.isfile(source) or source.endswith(".parquet"):
                ds = datasets.load_dataset("parquet", data_files={split: source}, split=split)
            else:
                ds = datasets.load_dataset(source, split=split)
        except Exception as exc:  # datasets raises many kinds; the user needs the source and the fix
            raise RuntimeError(
                f"cannot load SocioSeg split {split!r} from {source!r}: {exc}. Give a folder in the raw "
                f"layout (<split>/<id>/map.png sat.png mask.png question.json), parquet files, or a "
                "Hugging Face id reachable from this machine (vvangfaye/SocioSeg).") from None
        return ds

    def __len__(self) -> int:
        return len(self._items)

    def load(self, i: int) -> Sample:
        item = self._items[i]
        if self.kind == "raw":
            with open(os.path.join(item, "question.json"), encoding="utf-8") as f:
                q = json.load(f)
            return _check(Sample(os.path.basename(item), str(q.get("problem", "")), _level(q),
                                 _rgb(os.path.join(item, "map.png")), _rgb(os.path.join(item, "sat.png")),
                                 _mask(os.path.join(item, "mask.png"))))
        r = item
        return _check(Sample(str(r.get("id", i)), str(r.get("problem", "")), _level(r), _rgb(r["map_image"]),
                             _rgb(r["sat_image"]), _mask(r["mask_label"])))

    def get(self, i: int) -> Sample | None:
        """The sample, or None (logged and counted) when it is corrupt or incomplete."""
        try:
            return self.load(i)
        except Exception as exc:  # a bad file must cost one sample, never the run
            key = str(i) if self.kind == "hub" else os.path.basename(self._items[i])
            self.skipped[key] = f"{type(exc).__name__}: {exc}"
            log.warning("skipping sample %s: %s (%d skipped so far)", key, exc, len(self.skipped))
            return None

    def samples(self):
        for i in range(len(self)):
            s = self.get(i)
            if s is not None:
                yield s


def model_view(sample: Sample, frame=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map, satellite and mask at the model's input size (what the model and the rewards see)."""
    from backend.pipeline.stages import resize_rgb

    h, w = sample.sat_image.shape[:2]
    mh, mw = frame.input_size(h, w) if frame is not None else smart_resize(h, w)
    mask = cv2.resize(sample.mask.astype(np.uint8), (mw, mh), interpolation=cv2.INTER_NEAREST).astype(bool)
    return resize_rgb(sample.map_image, mh, mw), resize_rgb(sample.sat_image, mh, mw), mask


def gt_boxes(mask: np.ndarray, min_area: float = 10.0) -> list[list[int]]:
    """Boxes of the mask's connected components whose contour area exceeds `min_area`, as released:
    `[x, y, x + w, y + h]` of cv2.boundingRect (exclusive ends), in the mask's own pixels. GRPO takes
    them from the ORIGINAL-resolution mask although the model answers in its resized pixels (that is
    what the released checkpoint was rewarded against)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    boxes = []
    for c in contours:
        if cv2.contourArea(c) > min_area:
            x, y, w, h = cv2.boundingRect(c)
            boxes.append([int(x), int(y), int(x + w), int(y + h)])
    return boxes
