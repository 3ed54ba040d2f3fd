"""The two stages of render-and-refine over a batch of tiles; a batch of one is the per-tile case.

Data path of each tile, as the released inference code runs it: tile images -> model-size views
(`make_view`, bicubic) -> stage 1 (reasoner) -> segmenter on the satellite view, one prediction per
object -> coarse mask (model size -> tile size -> model size, nearest) -> render on both images (boxes,
then the mask) -> stage 2 (reasoner, a fresh conversation fed with stage 1's answer text) ->
segmenter with each object's box and points -> final mask (model size; tile size with nearest).
Stage 2 always runs. Where the product departs from the release it is an option of `PipelineOptions`.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from affine import Affine
from PIL import Image

from ..contract import OUTLINES
from ..errors import Cancelled
from ..reasoners.base import Reasoner, Reply, TileView
from ..segmenters.base import Prompt, Segmentation, Segmenter, union
from .prompts import MAX_OBJECTS, ParsedAnswer, parse_answer, render_boxes, stage1_prompt, stage2_prompt
from .render import render_overlay, resize_nearest

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
CancelCheck = Callable[[], bool]


@dataclass
class PipelineOptions:
    """Where the product may depart from the released procedure; the defaults say which way."""
    tolerant_parsing: bool = True
    """Salvage answers that json.loads rejects (Python-style literals, JSON-like text). The released
    code gives such an answer no objects; False restores that."""
    keep_coarse_on_failure: bool = False
    """Keep the stage-1 mask when the stage-2 answer is unusable (released: an empty mask)."""
    outline: str = "map"
    """Where the reasoner read an object's outline off the map (the map reader does; a vision-language
    model does not), "map" takes that outline as the object's mask and "image" lets the segmenter cut
    it from the satellite image, as the released procedure always does."""

    def __post_init__(self):
        if self.outline not in OUTLINES:
            raise ValueError(f"outline must be one of {', '.join(OUTLINES)}, not {self.outline!r}")



@dataclass
class TileResult:
    view: TileView
    prompts: tuple[str, str]
    responses: tuple[str, str]
    stage1: ParsedAnswer
    stage2: ParsedAnswer
    coarse_mask: np.ndarray                # model size
    final_mask: np.ndarray                 # model size
    scores: list[float]
    images: dict[str, np.ndarray]          # what the model saw, by dump file name
    refined: bool                          # stage 2 gave a usable answer
    coarse_kept: bool = False              # stage 2 was unusable and the stage-1 mask was kept
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    objects: list[tuple[np.ndarray, str]] = field(default_factory=list)  # (model-size mask, label)
    generation: dict | None = None

    @property
    def model_size(self) -> tuple[int, int]:
        return self.view.model_size

    def mask_on_tile(self, mask: np.ndarray | None = None) -> np.ndarray:
        """A model-size mask (the final one by default) on the tile's pixels, nearest neighbour as
        the released code resizes its masks."""
        return resize_nearest(self.final_mask if mask is None else mask, *self.view.original_size)


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    # Bicubic, as Qwen2.5-VL's processor (and the released code) resizes.
    return np.asarray(Image.fromarray(np.ascontiguousarray(image[..., :3])).resize((width, height), Image.BICUBIC))


def make_view(map_rgb: np.ndarray, sat_rgb: np.ndarray, query: str, reasoner: Reasoner, *,
              task: str | None = None, transform: Affine | None = None, crs=None, tile_id: str = "tile",
              map_features=None, map_around=None) -> TileView:
    """A tile in the model's frame: both images resized to the reasoner's input size; `transform`
    (tile pixel -> map coordinates) becomes the model-pixel transform."""
    th, tw = sat_rgb.shape[:2]
    if map_rgb.shape[:2] != (th, tw):
        raise ValueError(f"map ({map_rgb.shape[1]}x{map_rgb.shape[0]}) and satellite ({tw}x{th}) tiles differ")
    mh, mw = reasoner.input_size(th, tw)
    model_transform = None if transform is None else transform * Affine.scale(tw / mw, th / mh)
    return TileView(query, task, resize_rgb(map_rgb, mh, mw), resize_rgb(sat_rgb, mh, mw), model_transform,
                    crs, tile_id, map_features, (th, tw), map_around)


def check_cancel(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("cancelled by the user")


class SegmenterSession:
    """A segmenter shared by tiles in flight. Each tile's embedding is computed once, when the tile
    first has something to segment, and made current again for its second stage (`embedding` /
    `restore` where the segmenter has them, else the image is set again). The lock serialises
    segmenter use when tiles run in threads."""

    def __init__(self, segmenter: Segmenter, lock: threading.Lock | None = None):
        self.segmenter, self.lock = segmenter, lock or threading.Lock()
        self._current = None

    def handle(self, image: np.ndarray) -> dict:
        return {"image": image, "state": None, "seconds": 0.0}

    def segment(self, handle: dict, prompts: list[Prompt]) -> list[Segmentation]:
        if not prompts:
            return []
        seg = self.segmenter
        with self.lock:
            if handle["state"] is None:
                t = time.perf_counter()
                seg.set_image(handle["image"])
                handle["state"] = seg.embedding() if hasattr(seg, "embedding") else handle["image"]
                handle["seconds"] = time.perf_counter() - t
                self._current = handle["state"]
            elif self._current is not handle["state"]:
                seg.restore(handle["state"]) if hasattr(seg, "restore") else seg.set_image(handle["image"])
                self._current = handle["state"]
            return seg.segment(prompts)


def segment_items(session: SegmenterSession, handle, items: list[Prompt], outlines=None) -> list[Segmentation]:
    """One segmentation per item: the map's outline where one is given, else the segmenter's cut."""
    outlines = outlines if outlines and len(outlines) == len(items) else [None] * len(items)
    # A non-finite coordinate (the released code hands it to SAM) spreads NaN through SAM's attention
    # and gives no mask (tests/test_prompts.py runs SAM 2 on it); GrabCut cannot take one at all.
    empty = {i for i, it in enumerate(items)
             if not np.isfinite([*it.box, *(v for p in it.points for v in p)]).all()}
    todo = [i for i, o in enumerate(outlines) if o is None and i not in empty]
    cut = dict(zip(todo, session.segment(handle, [items[i] for i in todo])))
    cut.update({i: Segmentation(np.zeros(handle["image"].shape[:2], bool), None) for i in empty})
    return [cut[i] if o is None or i in empty else Segmentation(np.asarray(o, bool), None)
            for i, o in enumerate(outlines)]


def coarse_and_render(view: TileView, stage1: ParsedAnswer, session: SegmenterSession, handle, outlines=None):
    """Stage 1's objects through the segmenter (or their map outlines, see `PipelineOptions.outline`),
    the coarse mask, both rendered images and the stage-2 text: exactly what the released code builds
    between its two stages. Shared by inference and training."""
    mh, mw = view.model_size
    segs = segment_items(session, handle, stage1.items, outlines)
    coarse = union(segs, (mh, mw))
    # The released segmenter hands its mask over at tile size; the render resizes it back.
    shown = resize_nearest(resize_nearest(coarse, *view.original_size), mh, mw)
    boxes = render_boxes(stage1)
    return (segs, coarse, render_overlay(view.map_image, boxes, shown),
            render_overlay(view.sat_image, boxes, shown), stage2_prompt(view.query, stage1.stage2_boxes_text))


def stage2_inputs(query: str, map_m: np.ndarray, sat_m: np.ndarray, stage1: ParsedAnswer, segmenter: Segmenter,
                  tile_size: tuple[int, int] | None = None):
    """`coarse_and_render` for one pair of model-size images whose embedding is already set on
    `segmenter` (training's rollouts): (segmentations, coarse mask, rendered map, rendered satellite,
    stage-2 text)."""
    view = TileView(query, None, map_m, sat_m, tile_size=tile_size)
    session = SegmenterSession(segmenter)
    handle = session.handle(sat_m)
    handle["state"] = session._current = segmenter.embedding() if hasattr(segmenter, "embedding") else sat_m
    return coarse_and_render(view, stage1, session, handle)


def _ask(reasoner: Reasoner, stage: int, views: list[TileView], prompts: list[str], *extra) -> list[Reply]:
    batch = getattr(reasoner, f"stage{stage}_batch", None)
    if batch is not None and len(views) > 1:
        return batch(views, prompts, *extra)
    one = reasoner.stage1 if stage == 1 else reasoner.stage2
    if stage == 1:
        return [one(v, p) for v, p in zip(views, prompts)]
    rendered, answers = extra
    return [one(v, p, r[0], r[1], a) for v, p, r, a in zip(views, prompts, rendered, answers)]


def usable(answer: ParsedAnswer) -> bool:
    """An answer the segmenter can act on: json.loads read it, or the tolerant parser found objects."""
    return answer.raw is not None and (answer.released or bool(answer.items))


UNUSABLE_NOTE = "stage 2 answer unusable; tile left empty"


def answered_summary(asked: int, answered: int) -> str | None:
    """'k of N tiles answered' for a run where some tiles got no usable answer (None when all did)."""
    if asked and answered < asked:
        return f"{answered} of {asked} tiles answered"
    return None


def no_answers_message(asked: int, notes: dict, max_new_tokens: int | None = None) -> str:
    """Why a run in which no tile got a usable answer found nothing, and what to change: it is an
    error, not an empty result."""
    reasons = sorted((n for n in notes if n != UNUSABLE_NOTE and "stage-1 mask kept" not in n),
                     key=lambda n: -notes[n])
    cut = [n for n in reasons if "--max-new-tokens" in n]
    budget = f" (now {max_new_tokens})" if max_new_tokens else ""
    if cut:
        cause = (f"the answers were cut off at the response budget: raise --max-new-tokens{budget}, or check "
                 "that the model answers briefly")
    else:
        cause = (f"the model's answers had no usable <answer> part: check the model (--reasoner), or raise "
                 f"--max-new-tokens{budget} if its answers are cut off; --dump DIR keeps every answer")
    shown = f" ({'; '.join(reasons[:2])})" if reasons else ""
    return f"none of the {asked} tile(s) got a usable answer from the model{shown}: {cause}"


def run_batch(views: list[TileView], reasoner: Reasoner, segmenter: Segmenter | SegmenterSession,
              options: PipelineOptions | None = None, cancel: CancelCheck | None = None,
              on_stage: Callable[[str], None] | None = None) -> list[TileResult]:
    """Both stages for a batch of tiles: stage 1 for all, the segmenter and render per tile, stage 2
    for all, the segmenter per tile."""
    options = options or PipelineOptions()
    session = segmenter if isinstance(segmenter, SegmenterSession) else SegmenterSession(segmenter)
    stage = on_stage or (lambda name: None)
    n = len(views)
    seconds: list[dict[str, float]] = [{} for _ in views]
    generation = getattr(reasoner, "generation_record", lambda: None)()

    def timed(key: str, start: float, each: bool = True) -> None:
        for s in seconds:
            s[key] = (time.perf_counter() - start) / (n if each else 1)

    stage("stage 1: reasoning")
    t = time.perf_counter()
    p1 = [stage1_prompt(v.query) for v in views]
    r1 = _ask(reasoner, 1, views, p1)
    timed("stage1_reasoner", t)
    # at most MAX_OBJECTS objects per model answer; a reasoner may lift the cap (the map reader lists
    # every place its map shows)
    cap = getattr(reasoner, "max_objects", MAX_OBJECTS)
    a1 = [parse_answer(r.text, v.model_size[1], v.model_size[0], options.tolerant_parsing, shown=r.shown_text,
                       max_objects=cap) for r, v in zip(r1, views)]
    for v, a in zip(views, a1):
        for w in a.warnings:
            log.warning("%s stage 1: %s", v.tile_id, w)
    check_cancel(cancel)

    stage("stage 1: segmenting")
    handles, coarse, segs1, rendered, p2 = [], [], [], [], []
    for v, a, sec, r in zip(views, a1, seconds, r1):
        handles.append(session.handle(v.sat_image))
        t = time.perf_counter()
        segs, mask, map_r, sat_r, prompt2 = coarse_and_render(v, a, session, handles[-1],
                                                              r.outlines if options.outline == "map" else None)
        sec["stage1_segmenter"] = time.perf_counter() - t - handles[-1]["seconds"]
        segs1.append(segs)
        coarse.append(mask)
        rendered.append((map_r, sat_r))
        p2.append(prompt2)
        check_cancel(cancel)

    stage("stage 2: reasoning")
    t = time.perf_counter()
    r2 = _ask(reasoner, 2, views, p2, rendered, a1)
    timed("stage2_reasoner", t)
    check_cancel(cancel)

    stage("stage 2: segmenting")
    results = []
    for i, v in enumerate(views):
        mh, mw = v.model_size
        a2 = parse_answer(r2[i].text, mw, mh, options.tolerant_parsing, max_objects=cap)
        for w in a2.warnings:
            log.warning("%s stage 2: %s", v.tile_id, w)
        notes = list(r1[i].notes) + list(r2[i].notes)
        t, embedded = time.perf_counter(), handles[i]["seconds"]
        labels1 = r1[i].labels if len(r1[i].labels) == len(a1[i].items) else [""] * len(a1[i].items)
        if usable(a2):
            segs = segment_items(session, handles[i], a2.items,
                                 r2[i].outlines if options.outline == "map" else None)
            final, refined, kept = union(segs, (mh, mw)), True, False
            labels = labels1 if len(labels1) == len(segs) else [""] * len(segs)
        elif options.keep_coarse_on_failure:
            log.warning("%s: stage 2 gave no usable answer; keeping the stage-1 mask", v.tile_id)
            notes.append("stage 2 failed; stage-1 mask kept")
            segs, final, refined, kept, labels = segs1[i], coarse[i], False, True, labels1
        else:
            log.warning("%s: stage 2 gave no usable answer; no mask for this tile (as released)", v.tile_id)
            notes.append(UNUSABLE_NOTE)
            segs, final, refined, kept, labels = [], np.zeros((mh, mw), bool), False, False, []
        seconds[i]["stage2_segmenter"] = time.perf_counter() - t - (handles[i]["seconds"] - embedded)
        seconds[i]["embedding"] = handles[i]["seconds"]
        images = {"map.png": v.map_image, "satellite.png": v.sat_image,
                  "map_rendered.png": rendered[i][0], "satellite_rendered.png": rendered[i][1]}
        results.append(TileResult(
            view=v, prompts=(p1[i], p2[i]), responses=(r1[i].text, r2[i].text), stage1=a1[i], stage2=a2,
            coarse_mask=coarse[i], final_mask=final, scores=[s.score for s in segs if s.score is not None],
            images=images, refined=refined, coarse_kept=kept, notes=notes, seconds=seconds[i],
            objects=[(s.mask, lab) for s, lab in zip(segs, labels)], generation=generation))
    return results


def run_tile(view: TileView, reasoner: Reasoner, segmenter: Segmenter, options: PipelineOptions | None = None,
             cancel: CancelCheck | None = None, on_stage: Callable[[str], None] | None = None) -> TileResult:
    """One tile through both stages: the batch of one."""
    return run_batch([view], reasoner, segmenter, options, cancel, on_stage)[0]


def _png(path: str, array: np.ndarray) -> None:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    Image.fromarray(array).save(path)


def dump_tile(result: TileResult, folder: str, extra: dict | None = None) -> str:
    """Everything the model saw and said for one tile, at its input size (see README, --dump)."""
    try:
        return _dump_tile(result, folder, extra)
    except OSError as exc:       # PIL's errors name no file: name the dump's, so the message blames --dump
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), os.path.join(folder, result.view.tile_id)) from exc
        raise


def _dump_tile(result: TileResult, folder: str, extra: dict | None = None) -> str:
    v = result.view
    d = os.path.join(folder, v.tile_id)
    os.makedirs(d, exist_ok=True)
    for name, img in result.images.items():
        _png(os.path.join(d, name), img)
    _png(os.path.join(d, "coarse_mask.png"), result.coarse_mask)
    _png(os.path.join(d, "final_mask.png"), result.final_mask)
    for i, (prompt, response) in enumerate(zip(result.prompts, result.responses), start=1):
        with open(os.path.join(d, f"stage{i}_prompt.txt"), "w", encoding="utf-8") as f:
            f.write(prompt)
        with open(os.path.join(d, f"stage{i}_response.txt"), "w", encoding="utf-8") as f:
            f.write(response or "")
    th, tw = v.original_size
    meta = {
        "tile": v.tile_id, **(extra or {}),
        "tile_size": [tw, th], "model_size": [v.model_size[1], v.model_size[0]],
        "crs": v.crs.to_string() if v.crs is not None else None,
        "model_transform": list(v.transform.to_gdal()) if v.transform is not None else None,
        "stage1_boxes": [list(it.box) for it in result.stage1.items],
        "stage2": [{"box": list(it.box), "points": [list(p) for p in it.points]} for it in result.stage2.items],
        "stage1_json": result.stage1.released, "stage2_json": result.stage2.released,
        "refined": result.refined, "coarse_kept": result.coarse_kept,
        "warnings": result.stage1.warnings + result.stage2.warnings,
        "notes": result.notes, "scores": result.scores, "generation": result.generation,
        "seconds": {k: round(val, 4) for k, val in result.seconds.items()},
    }
    with open(os.path.join(d, "tile.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    return d
