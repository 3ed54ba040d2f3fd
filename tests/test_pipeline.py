"""Two stages on one tile: garbage answers, fallbacks, stage-2 prompt, and the dump."""
import json
import os

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from backend.pipeline.detect import detect, load_scene
from backend.geo.grid import Tile
from backend.pipeline.stages import run_tile
from backend.pipeline.prompts import stage2_prompt
from helpers import FillBoxSegmenter, ScriptedReasoner

T = Affine(1, 0, 500_000, 0, -1, 4_057_000)
IMG = np.full((768, 768, 3), 128, np.uint8)


def _run(reasoner, seg=None):
    return run_tile(Tile(0, 0, 0, 0, 768, 768), IMG, IMG, T, CRS.from_epsg(32650), "school", "class",
                    reasoner, seg or FillBoxSegmenter())


@pytest.mark.parametrize("garbage", ["", "I cannot help with that.", "<answer>[[[", "<answer>null</answer>",
                                     '<answer>[{"bbox_2d": [5, 5, 5, 5]}]</answer>', "\x00\xff" * 50])
def test_garbage_stage1_gives_no_detection_and_a_warning(garbage, caplog):
    seg = FillBoxSegmenter()
    r = _run(ScriptedReasoner(garbage), seg)
    assert not r.final_mask.any() and r.stage2 is None and not r.refined
    assert seg.embed_calls == 0                       # nothing to segment
    assert any("stage 1" in rec.message for rec in caplog.records)


def test_garbage_stage2_keeps_the_stage1_mask_and_says_so(caplog):
    r = _run(ScriptedReasoner('<answer>[{"bbox_2d": [10, 10, 100, 100]}]</answer>', "nonsense"))
    assert r.final_mask.sum() == 91 * 91 and not r.refined
    assert "stage 2 failed; stage-1 mask kept" in r.notes


def test_stage2_is_a_fresh_prompt_with_the_raw_stage1_answer():
    raw = '[{"bbox_2d": [10, 10, 100, 100]},  {"bbox_2d": [200,200,300,300]}]'
    r = _run(ScriptedReasoner(f"<think>a</think><answer>{raw}</answer>"))
    assert r.prompts[1] == stage2_prompt("school", raw)
    assert r.refined and len(r.stage2.items) == 2
    # rendered images carry the blue boxes and the red coarse mask
    assert tuple(r.images["satellite_rendered.png"][10, 50]) == (0, 0, 255)
    assert r.images["map_rendered.png"][50, 50, 0] > r.images["map.png"][50, 50, 0]


def test_model_coordinates_map_to_tile_pixels():
    # 768 px tile -> 756 px model image; model columns 0..377 are tile columns 0..383 exactly
    r = _run(ScriptedReasoner('<answer>[{"bbox_2d": [0, 0, 377, 377]}]</answer>'))
    m = r.mask_on_tile()
    assert r.model_size == (756, 756)
    assert m[:384, :384].all() and not m[384:, :].any() and not m[:, 384:].any()
    assert r.model_transform * (756, 756) == pytest.approx(T * (768, 768))


def test_dump_of_a_multi_tile_run_has_every_stage(tmp_path, sample_dir):
    from backend.reasoners.mapreader import MapReader
    from backend.segmenters.grabcut import GrabCutSegmenter

    scene = load_scene(os.path.join(sample_dir, "satellite.tif"), os.path.join(sample_dir, "map.gpkg"))
    assert len(scene.tiles) > 1
    det = detect(scene, "schools", MapReader(), GrabCutSegmenter(), dump_dir=str(tmp_path))
    assert det.entities
    names = {"map.png", "satellite.png", "stage1_prompt.txt", "stage1_response.txt", "coarse_mask.png",
             "map_rendered.png", "satellite_rendered.png", "stage2_prompt.txt", "stage2_response.txt",
             "final_mask.png", "tile.json"}
    dumped = sorted(os.listdir(tmp_path))
    assert dumped == sorted(t.id for t in scene.tiles)
    from PIL import Image
    with_hits = 0
    for d in dumped:
        files = set(os.listdir(tmp_path / d))
        meta = json.load(open(tmp_path / d / "tile.json"))
        assert meta["crs"] == "EPSG:32650" and len(meta["tile_transform"]) == 6
        if meta["stage2"]:
            with_hits += 1
            assert files == names
            size = tuple(meta["model_size"])
            for img in ("map.png", "satellite_rendered.png", "final_mask.png", "coarse_mask.png"):
                assert Image.open(tmp_path / d / img).size == size
            assert set(meta["seconds"]) >= {"stage1_reasoner", "embedding", "stage2_segmenter"}
    assert with_hits >= 2


def test_cancel_stops_a_multi_tile_run(sample_dir):
    from backend.errors import Cancelled
    from backend.reasoners.mapreader import MapReader

    scene = load_scene(os.path.join(sample_dir, "satellite.tif"), os.path.join(sample_dir, "map.gpkg"))
    seen = []

    def progress(frac, msg):
        seen.append(msg)

    with pytest.raises(Cancelled):
        detect(scene, "parks", MapReader(), FillBoxSegmenter(), progress=progress,
               cancel=lambda: len(seen) >= 2)
    assert len(seen) == 2 and "stage 1" in seen[0]
    assert not any(f"({len(scene.tiles)}/{len(scene.tiles)})" in m for m in seen)   # stopped early
