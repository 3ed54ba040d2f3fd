"""The plugin-worker contract (backend/contract.py) and `python -m backend run-scene` on good and bad
scene folders: every malformed, truncated or incomplete request is exit 2 with a message naming it."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from rasterio.crs import CRS

from backend import contract
from backend.geo.grid import Grid, read_on_grid
from helpers import ROOT, write_raster

RES = 4.0     # metres per pixel: a small grid keeps the worker runs short


@pytest.fixture(scope="module")
def scene_folder(tmp_path_factory, sample_dir):
    """A scene folder as the plugin writes it: the sample's satellite and raster map on one grid."""
    from affine import Affine

    folder = tmp_path_factory.mktemp("scene")
    crs = CRS.from_epsg(32650)
    import rasterio
    with rasterio.open(os.path.join(sample_dir, "satellite.tif")) as src:
        b = src.bounds
    w, h = int((b.right - b.left) // RES), int((b.top - b.bottom) // RES)
    grid = Grid(crs, Affine(RES, 0, b.left, 0, -RES, b.top), w, h)
    from rasterio.enums import Resampling
    # QGIS renders a raster map layer with nearest-neighbour resampling by default (the map's colours
    # stay the legend's), the satellite image as the user set it.
    for name, src, how in ((contract.SATELLITE_FILE, "satellite.tif", Resampling.bilinear),
                           (contract.MAP_FILE, "map.tif", Resampling.nearest)):
        rgb, valid = read_on_grid(os.path.join(sample_dir, src), grid, how)
        write_raster(folder / name, np.dstack([rgb, valid.astype(np.uint8) * 255]), crs, grid.transform)
    spec = contract.GridSpec(crs.to_wkt(), tuple(grid.transform)[:6], w, h)
    req = contract.SceneRequest.planned(spec, "parks", None, contract.TilePlan(256, 32, 64),
                                        generation={"max_new_tokens": 64})
    req.write(str(folder))
    return folder


def run_scene(folder):
    r = subprocess.run([sys.executable, "-m", "backend", "run-scene", str(folder)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    return r.returncode, [contract.parse_line(l) for l in r.stdout.splitlines()], r.stderr


def test_a_good_scene_runs_and_reports_tiles_and_the_inferred_task(scene_folder):
    rc, messages, err = run_scene(scene_folder)
    assert rc == 0, err
    progress = [m for m in messages if m and m.kind == "PROGRESS"]
    req = contract.SceneRequest.read(str(scene_folder))
    assert progress and all(m.total == len(req.tiles) for m in progress) and len(req.tiles) > 1
    assert progress[-1].done == len(req.tiles) and progress[-1].fraction == pytest.approx(1.0)
    result = contract.SceneResult.read(str(scene_folder))
    assert messages[-1] == contract.Message("DONE", done=len(result.entities))
    assert result.tiles == len(req.tiles) and result.task == "class"
    assert len(result.entities) == 2 and {e.attrs["task"] for e in result.entities} == {"class"}
    assert {e.attrs["segmenter"] for e in result.entities} == {"map/grabcut"}   # the map reader's outlines


def test_the_outline_choice_reaches_the_worker(scene_folder, tmp_path):
    folder = tmp_path / "scene"
    shutil.copytree(scene_folder, folder)
    d = json.loads((folder / contract.REQUEST_FILE).read_text())
    _dump(folder, _edit(d, "outline", "image"))
    rc, messages, err = run_scene(folder)
    assert rc == 0, err
    result = contract.SceneResult.read(str(folder))
    assert result.entities and {e.attrs["segmenter"] for e in result.entities} == {"grabcut"}


def test_a_vector_scene_reads_every_layer_of_its_features(scene_folder, tmp_path, sample_dir):
    folder = tmp_path / "scene"
    shutil.copytree(scene_folder, folder)
    shutil.copy(os.path.join(sample_dir, "map.gpkg"), folder / contract.FEATURES_FILE)
    req = contract.SceneRequest.read(str(folder))
    req.query, req.map_features, req.map_masks_coverage = "schools", contract.FEATURES_FILE, False
    req.write(str(folder))
    rc, messages, err = run_scene(folder)
    assert rc == 0, err
    result = contract.SceneResult.read(str(folder))
    assert len(result.entities) == 3          # one school is mapped only as a point, in another layer


def _edit(d, path, value):
    """A copy of request dict `d` with the dotted `path` set to `value` (or deleted for DELETE)."""
    d = json.loads(json.dumps(d))
    *parents, key = path.split(".")
    target = d
    for p in parents:
        target = target[p]
    if value is DELETE:
        del target[key]
    else:
        target[key] = value
    return d


DELETE = object()
# (case, how to break the folder, text the message must hold)
BAD = [
    ("no request", lambda f, d: os.remove(f / contract.REQUEST_FILE), "does not exist"),
    ("truncated request", lambda f, d: (f / contract.REQUEST_FILE).write_text(json.dumps(d)[:200]), "not valid JSON"),
    ("not an object", lambda f, d: (f / contract.REQUEST_FILE).write_text("[1, 2]"), "not a JSON object"),
    ("missing query", lambda f, d: _dump(f, _edit(d, "query", DELETE)), "'query' is missing"),
    ("missing grid size", lambda f, d: _dump(f, _edit(d, "grid.width", DELETE)), "'grid.width' is missing"),
    ("bad transform", lambda f, d: _dump(f, _edit(d, "grid.transform", [1, 0, 0])), "'grid.transform' must be 6"),
    ("nan transform", lambda f, d: _dump(f, _edit(d, "grid.transform", [float("nan"), 0, 0, 0, -1, 0])),
     "'grid.transform' must be 6"),
    ("bad CRS", lambda f, d: _dump(f, _edit(d, "grid.crs_wkt", "PROJCS[nonsense")), "not a valid WKT CRS"),
    ("bad task", lambda f, d: _dump(f, _edit(d, "task", "everything")), "'task' must be one of"),
    ("tile outside the grid", lambda f, d: _dump(f, _edit(d, "tiles", [[0, 0, 0, 0, 99999, 10]])), "outside"),
    ("unknown engine", lambda f, d: _dump(f, _edit(d, "reasoner", "gpt")), "unknown reasoner"),
    ("unknown generation field", lambda f, d: _dump(f, _edit(d, "generation", {"beams": 3})), "beams"),
    ("API key in the request", lambda f, d: _dump(f, _edit(d, "server", {"api_key": "sk-1"})), "never be written"),
    ("bad server option", lambda f, d: _dump(f, _edit(d, "server", {"concurrency": 0})),
     "'server.concurrency' must be a whole number of at least 1"),
    ("other protocol", lambda f, d: _dump(f, _edit(d, "protocol", 99)), "different versions"),
    ("bad outline", lambda f, d: _dump(f, _edit(d, "outline", "satellite")), "'outline' must be one of map, image"),
    ("path outside the folder", lambda f, d: _dump(f, _edit(d, "satellite", "../x.tif")), "inside the scene folder"),
    ("missing satellite file", lambda f, d: os.remove(f / contract.SATELLITE_FILE), "lacks satellite.tif"),
    ("truncated map image", lambda f, d: _truncate(f / contract.MAP_FILE), "cannot read the map image"),
    ("truncated features", lambda f, d: (_dump(f, _edit(d, "map_features", "features.gpkg")),
                                         shutil.copy(os.path.join(ROOT, "resources", "sample", "map.gpkg"),
                                                     f / "features.gpkg"), _truncate(f / "features.gpkg")),
     "vector map"),
    ("features that are no GeoPackage", lambda f, d: (_dump(f, _edit(d, "map_features", "features.gpkg")),
                                                      (f / "features.gpkg").write_text("not a gpkg")),
     "cannot read vector map"),
]


def _dump(folder, d):
    (folder / contract.REQUEST_FILE).write_text(json.dumps(d))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("case,breaker,expected", BAD, ids=[b[0] for b in BAD])
def test_a_broken_scene_is_exit_2_with_a_message_naming_it(scene_folder, tmp_path, case, breaker, expected):
    folder = tmp_path / "scene"
    shutil.copytree(scene_folder, folder)
    (folder / contract.RESULT_FILE).unlink(missing_ok=True)
    before = json.loads((folder / contract.REQUEST_FILE).read_text())
    breaker(folder, before)
    rc, messages, err = run_scene(folder)
    errors = [m.text for m in messages if m and m.kind == "ERROR"]
    assert rc == 2 and len(errors) == 1, (rc, messages, err[-2000:])
    assert expected in errors[0], errors[0]
    assert "Traceback" not in err and not (folder / contract.RESULT_FILE).exists()


def test_request_round_trips_and_lines_survive_newlines():
    grid = contract.GridSpec("WKT", (2.0, 0.0, 10.0, 0.0, -2.0, 50.0), 900, 700)
    req = contract.SceneRequest.planned(grid, "Lotus Park", "name", contract.TilePlan(512, 64, 9),
                                        generation={"max_new_tokens": 32, "future_field": 1},
                                        map_features=contract.FEATURES_FILE, map_masks_coverage=False,
                                        outline="image")
    back = contract.SceneRequest.from_dict(json.loads(json.dumps(req.to_dict())))
    assert back == req and len(back.tiles) == 4 and back.generation["future_field"] == 1
    older = req.to_dict()
    del older["outline"]                                # a request written before the choice existed
    assert contract.SceneRequest.from_dict(older).outline == "map"
    line = contract.progress_line(0.5, 3, 10, "tile_0_1 (3/10):\nstage 2 \\ done")
    assert contract.parse_line(line) == contract.Message("PROGRESS", "tile_0_1 (3/10):\nstage 2 \\ done", 0.5, 3, 10)
    assert "\n" not in line
    assert contract.parse_line(contract.error_line("a\nb")) == contract.Message("ERROR", "a\nb")
    assert contract.parse_line("Some library chatter") is None


def test_server_options_round_trip_and_every_bad_one_is_named():
    from dataclasses import fields

    from backend.reasoners.openai_server import API_KEY_ENV, ServerSettings
    assert set(contract.SERVER_KEYS) == {f.name for f in fields(ServerSettings)} - {"base_url"}
    assert contract.API_KEY_ENV == API_KEY_ENV          # the plugin sets the variable the reasoner reads
    grid = contract.GridSpec("WKT", (2.0, 0.0, 10.0, 0.0, -2.0, 50.0), 900, 700)
    req = contract.SceneRequest.planned(grid, "schools", None, contract.TilePlan(), reasoner="openai:http://gpu:8000/v1",
                                        server={"model": "socioreasoner", "concurrency": 8, "timeout": 30.0,
                                                "max_retries": 0})
    d = json.loads(json.dumps(req.to_dict()))
    assert contract.SceneRequest.from_dict(d) == req
    del d["server"]                                     # in-process engines may leave it out
    assert contract.SceneRequest.from_dict(d).server == {}
    d["server"] = {"api_key": "sk-1", "base_url": "x", "model": "", "concurrency": True, "timeout": -1,
                   "max_retries": 1.5}
    with pytest.raises(contract.RequestError) as err:
        contract.SceneRequest.from_dict(d)
    text = str(err.value)
    assert "api_key, base_url" in text and f"it goes in {contract.API_KEY_ENV}" in text
    for key in ("model", "concurrency", "timeout", "max_retries"):
        assert f"'server.{key}' must be" in text, key


def test_too_many_tiles_are_refused_when_planned():
    grid = contract.GridSpec("WKT", (1.0, 0.0, 0.0, 0.0, -1.0, 0.0), 10_000, 10_000)
    with pytest.raises(contract.RequestError.__mro__[1], match="limit of 4"):
        contract.SceneRequest.planned(grid, "schools", None, contract.TilePlan(768, 128, 4))


def test_throughput_reports_rate_and_time_left():
    clock = contract.Throughput()
    assert clock.update(0, 10, 100.0) == "0/10 tiles"
    assert clock.update(2, 10, 104.0) == "2/10 tiles · 0.50 tiles/s · 16 s left"
    assert contract.format_duration(3725) == "1 h 02 min"


def test_the_contract_imports_nothing_that_clashes_with_qgis():
    code = ("import sys; import backend.contract, backend.geo.tiles\n"
            "print(sorted(m for m in ('rasterio', 'shapely', 'pyproj', 'torch', 'numpy', 'osgeo') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stderr
