"""`python -m backend selftest`: the real model classes end to end on the sample, with no download.

Tiny Qwen2.5-VL, SAM 2, SAM 3 and SAM models are built from configs, saved, loaded back through the loading
code users run, and driven through both stages on one tile of the bundled sample. The tiny VLM is
first fitted on the map reader's answers for that tile so that it answers in the released format and
stage 2 and both segmenter calls really run. Random-weight segmenters give meaningless masks: this
proves an installation works, not that it is accurate.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time

import numpy as np


log = logging.getLogger(__name__)

QUERY = "school"


def sample_scene(tile: int = 768):
    """The bundled sample cut to one tile centred on an area-mapped school."""
    from ..pipeline.detect import load_scene
    from ..resources import SAMPLE_DIR
    from ..geo.vectormap import VectorMap
    from ..geo.grid import raster_footprint, default_crs

    sat = os.path.join(SAMPLE_DIR, "satellite.tif")
    crs = default_crs(*raster_footprint(sat))
    truth = VectorMap.read(os.path.join(SAMPLE_DIR, "truth.gpkg"), crs)
    school = next(f for f in truth.features if f.props.get("class") == "school"
                  and f.props.get("mapped_as") == "area")
    c = school.geometry.centroid
    half = tile / 2 - 1
    return load_scene(sat, os.path.join(SAMPLE_DIR, "map.gpkg"),
                      bbox=(c.x - half, c.y - half, c.x + half, c.y + half), tile_size=tile)


def fitting_examples(scene) -> list[tuple]:
    """What the map reader + GrabCut see and answer on the scene's first tile, as VLM targets."""
    from ..pipeline.prompts import Item, format_answer
    from ..pipeline.render import render_overlay
    from ..pipeline.stages import make_view, run_tile
    from ..reasoners.base import SmartResize
    from ..reasoners.mapreader import MapReader
    from ..segmenters.grabcut import GrabCutSegmenter

    tile = scene.tiles[0]
    sat, map_rgb, _ = scene.read(tile)
    reader = MapReader()
    reader.prepare(QUERY, None, scene.map_features)
    # In the vision-language model's frame (the map reader itself would read the tile's own pixels).
    view = make_view(map_rgb, sat, QUERY, SmartResize(),
                     transform=scene.grid.window_transform(tile.x0, tile.y0), crs=scene.grid.crs,
                     tile_id=tile.id, map_features=scene.map_features)
    r = run_tile(view, reader, GrabCutSegmenter())
    if not (r.stage1.ok and r.stage2.ok):
        raise RuntimeError("the map reader found no school on the sample tile")
    im = r.images
    boxes = [it.box for it in r.stage1.items]
    # The released model's habit, two points per box: a short target the tiny model learns in a few
    # steps (the map reader itself may spread more points for GrabCut).
    two = [Item(it.box, it.points[:2]) for it in r.stage2.items]
    answer2 = f"<think>Two points inside each box.</think><answer>{format_answer(two, True)}</answer>"
    examples = [(im["map.png"], im["satellite.png"], r.prompts[0], r.responses[0]),
                (im["map_rendered.png"], im["satellite_rendered.png"], r.prompts[1], answer2)]
    # Stage 2 is also taught on other coarse masks (none, the filled boxes, speckle): the self-test's
    # random-weight segmenters draw masks unlike GrabCut's, and the answer must not depend on them.
    h, w = im["map.png"].shape[:2]
    filled = np.zeros((h, w), bool)
    for x1, y1, x2, y2 in boxes:
        filled[int(y1):int(y2) + 1, int(x1):int(x2) + 1] = True
    speckle = np.random.default_rng(0).random((h, w)) < 0.3
    for mask in (None, filled, speckle):
        examples.append((render_overlay(im["map.png"], boxes, mask), render_overlay(im["satellite.png"], boxes, mask),
                         r.prompts[1], answer2))
    return examples


def run_selftest(models_dir: str | None = None, dump_dir: str | None = None, device: str = "cpu") -> bool:
    import pyogrio

    from ..pipeline.detect import detect
    from ..engines import build_reasoner, build_segmenter
    from ..output.vectors import write_detection
    from ..reasoners.qwen import GenerationSettings
    from .tiny import save_models

    t0 = time.perf_counter()
    ok = True
    tmp = None if models_dir else tempfile.mkdtemp(prefix="socioseg-selftest-")
    models_dir = models_dir or tmp
    try:
        scene = sample_scene()
        print(f"sample tile: {scene.grid.width} x {scene.grid.height} px in {scene.grid.crs}")
        specs = save_models(models_dir, fitting_examples(scene))
        print(f"tiny models built, fitted and saved in {models_dir} ({time.perf_counter() - t0:.0f} s)")
        # Greedy: the tiny model was fitted to one answer; sampling would test luck, not the installation.
        reasoner = build_reasoner(specs["reasoner"], device, GenerationSettings(do_sample=False))
        for seg_key in ("sam2", "sam3", "sam"):
            segmenter = build_segmenter(specs[seg_key], device)
            dump = os.path.join(dump_dir, seg_key) if dump_dir else None
            det = detect(scene, QUERY, reasoner, segmenter, dump_dir=dump, keep_tiles=True)
            checks = {
                "stage 1 answered with boxes": all(t.stage1.ok for t in det.tiles),
                "stage 2 answered with boxes and points":
                    all(t.stage2.ok and t.refined for t in det.tiles),
                "stage-2 boxes repeat stage 1": all(
                    [it.box for it in t.stage1.items] == [it.box for it in t.stage2.items] for t in det.tiles),
                "one image embedding per tile": segmenter.embed_calls == len(det.tiles),
            }
            out = os.path.join(models_dir, f"selftest_{seg_key}.gpkg")
            write_detection(out, det, overwrite=True)
            n = pyogrio.read_info(out)["features"] if det.entities else 0
            checks["output written and read back"] = n == len(det.entities)
            for name, passed in checks.items():
                print(f"  [{'PASS' if passed else 'FAIL'}] {reasoner.name.split(':')[0]} + {seg_key}: {name}")
                ok &= passed
        print(f"selftest {'passed' if ok else 'FAILED'} in {time.perf_counter() - t0:.0f} s")
        return ok
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
