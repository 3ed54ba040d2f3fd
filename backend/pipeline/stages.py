"""One tile through both stages, and many tiles over an area merged into one mask.

Data path: tile arrays -> model-size images -> stage 1 (reasoner) -> segmenter -> render -> stage 2
(reasoner, a fresh conversation) -> segmenter -> final mask at model size -> back to the tile grid.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
from affine import Affine
from PIL import Image

from ..errors import Cancelled
from ..geo.grid import Grid, Tile
from .prompts import ParsedAnswer, parse_answer, stage1_prompt, stage2_prompt
from ..reasoners.base import Reasoner, TileView
from .render import render_overlay
from ..segmenters.base import Prompt, Segmenter, union

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
CancelCheck = Callable[[], bool]


@dataclass
class TileResult:
    tile: Tile
    model_size: tuple[int, int]            # (height, width) the reasoner and segmenter saw
    model_transform: Affine
    prompts: tuple[str, str | None]
    responses: tuple[str, str | None]
    stage1: ParsedAnswer
    stage2: ParsedAnswer | None
    coarse_mask: np.ndarray                # model size
    final_mask: np.ndarray                 # model size
    scores: list[float]
    images: dict[str, np.ndarray]
    refined: bool                          # False when stage 2 failed and the coarse mask was kept
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    objects: list[tuple[np.ndarray, str]] = field(default_factory=list)  # (model-size mask, label)

    def mask_on_tile(self, mask: np.ndarray | None = None) -> np.ndarray:
        """A model-size mask (the final one by default) resampled to the tile's grid pixels."""
        mask = self.final_mask if mask is None else mask
        if not mask.any():
            return np.zeros((self.tile.height, self.tile.width), bool)
        m = cv2.resize(mask.astype(np.float32), (self.tile.width, self.tile.height),
                       interpolation=cv2.INTER_LINEAR)
        return m >= 0.5


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    # Bicubic, as Qwen2.5-VL's processor resizes.
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def _check(cancel: CancelCheck | None):
    if cancel is not None and cancel():
        raise Cancelled("cancelled by the user")


def stage2_inputs(query: str, map_m: np.ndarray, sat_m: np.ndarray, stage1: ParsedAnswer,
                  segmenter: Segmenter):
    """Stage 1's boxes through the segmenter (image already set), rendered onto both images, and the
    stage-2 text: (segmentations, coarse mask, rendered map, rendered satellite, stage-2 prompt).
    Shared by inference and training so that both build exactly the same stage-2 conversation."""
    boxes = [it.box for it in stage1.items]
    segs = segmenter.segment([Prompt(b) for b in boxes]) if boxes else []
    coarse = union(segs, map_m.shape[:2])
    return (segs, coarse, render_overlay(map_m, boxes, coarse), render_overlay(sat_m, boxes, coarse),
            stage2_prompt(query, stage1.raw if stage1.raw is not None else ""))


def run_tile(tile: Tile, sat: np.ndarray, map_rgb: np.ndarray, tile_transform: Affine, crs,
             query: str, task: str | None, reasoner: Reasoner, segmenter: Segmenter,
             map_features=None, cancel: CancelCheck | None = None,
             on_stage: Callable[[str], None] | None = None) -> TileResult:
    th, tw = sat.shape[:2]
    stage = on_stage or (lambda name: None)
    mh, mw = reasoner.input_size(th, tw)
    model_transform = tile_transform * Affine.scale(tw / mw, th / mh)
    sat_m, map_m = resize_rgb(sat, mh, mw), resize_rgb(map_rgb, mh, mw)
    view = TileView(query, task, map_m, sat_m, model_transform, crs, tile.id, map_features)
    seconds: dict[str, float] = {}
    notes: list[str] = []
    empty = np.zeros((mh, mw), bool)

    stage("stage 1: reasoning")
    t = time.perf_counter()
    p1 = stage1_prompt(query)
    r1 = reasoner.stage1(view, p1)
    notes += r1.notes
    a1 = parse_answer(r1.text, mw, mh)
    seconds["stage1_reasoner"] = time.perf_counter() - t
    for w in a1.warnings:
        log.warning("%s stage 1: %s", tile.id, w)
    images = {"map.png": map_m, "satellite.png": sat_m}
    if not a1.ok:
        return TileResult(tile, (mh, mw), model_transform, (p1, None), (r1.text, None), a1, None,
                          empty, empty, [], images, False, notes, seconds)
    _check(cancel)

    stage("stage 1: segmenting")
    t = time.perf_counter()
    segmenter.set_image(sat_m)          # the one embedding of this tile, reused by stage 2
    seconds["embedding"] = time.perf_counter() - t
    t = time.perf_counter()
    segs1, coarse, map_r, sat_r, p2 = stage2_inputs(query, map_m, sat_m, a1, segmenter)
    seconds["stage1_segmenter"] = time.perf_counter() - t
    images.update({"map_rendered.png": map_r, "satellite_rendered.png": sat_r})
    _check(cancel)

    stage("stage 2: reasoning")
    t = time.perf_counter()
    r2 = reasoner.stage2(view, p2, map_r, sat_r, a1)
    notes += r2.notes
    a2 = parse_answer(r2.text, mw, mh)
    seconds["stage2_reasoner"] = time.perf_counter() - t
    for w in a2.warnings:
        log.warning("%s stage 2: %s", tile.id, w)
    labels = r1.labels if len(r1.labels) == len(a1.items) else [""] * len(a1.items)
    if not a2.ok:
        log.warning("%s: stage 2 gave no usable boxes; keeping the stage-1 mask", tile.id)
        notes.append("stage 2 failed; stage-1 mask kept")
        return TileResult(tile, (mh, mw), model_transform, (p1, p2), (r1.text, r2.text), a1, a2,
                          coarse, coarse, [s.score for s in segs1 if s.score is not None], images,
                          False, notes, seconds, [(s.mask, lab) for s, lab in zip(segs1, labels)])
    _check(cancel)
    stage("stage 2: segmenting")
    t = time.perf_counter()
    segs2 = segmenter.segment([Prompt(it.box, it.points) for it in a2.items])
    final = union(segs2, (mh, mw))
    seconds["stage2_segmenter"] = time.perf_counter() - t
    if len(labels) != len(segs2):
        labels = [""] * len(segs2)
    return TileResult(tile, (mh, mw), model_transform, (p1, p2), (r1.text, r2.text), a1, a2, coarse,
                      final, [s.score for s in segs2 if s.score is not None], images, True, notes, seconds,
                      [(s.mask, lab) for s, lab in zip(segs2, labels)])


def _png(path: str, array: np.ndarray) -> None:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    Image.fromarray(array).save(path)


def dump_tile(result: TileResult, grid: Grid, folder: str) -> None:
    """Everything the model saw and said for one tile, at its input size (see README, --dump)."""
    d = os.path.join(folder, result.tile.id)
    os.makedirs(d, exist_ok=True)
    for name, img in result.images.items():
        _png(os.path.join(d, name), img)
    _png(os.path.join(d, "coarse_mask.png"), result.coarse_mask)
    _png(os.path.join(d, "final_mask.png"), result.final_mask)
    for i, (prompt, response) in enumerate(zip(result.prompts, result.responses), start=1):
        if prompt is not None:
            with open(os.path.join(d, f"stage{i}_prompt.txt"), "w", encoding="utf-8") as f:
                f.write(prompt)
            with open(os.path.join(d, f"stage{i}_response.txt"), "w", encoding="utf-8") as f:
                f.write(response or "")
    t = result.tile
    meta = {
        "tile": t.id, "row": t.row, "col": t.col, "x0": t.x0, "y0": t.y0,
        "tile_size": [t.width, t.height], "model_size": [result.model_size[1], result.model_size[0]],
        "crs": grid.crs.to_string(),
        "tile_transform": list(grid.window_transform(t.x0, t.y0).to_gdal()),
        "model_transform": list(result.model_transform.to_gdal()),
        "stage1_boxes": [list(it.box) for it in result.stage1.items],
        "stage2": None if result.stage2 is None else
        [{"box": list(it.box), "points": [list(p) for p in it.points]} for it in result.stage2.items],
        "refined": result.refined,
        "warnings": result.stage1.warnings + (result.stage2.warnings if result.stage2 else []),
        "notes": result.notes, "scores": result.scores,
        "seconds": {k: round(v, 4) for k, v in result.seconds.items()},
    }
    with open(os.path.join(d, "tile.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
