"""The seam every executor drives (plan -> run_tiles -> merge), and an import graph without cycles."""
import ast
import os

import pytest

from backend.pipeline.detect import EngineFacts, RunSettings, detect, load_scene, plan, run_tiles
from backend.pipeline.resume import read_tile, write_tile
from backend.pipeline.stages import SegmenterSession
from backend.reasoners.mapreader import MapReader
from helpers import ROOT, FillBoxSegmenter


def _modules():
    mods = {}
    for d, _, files in os.walk(os.path.join(ROOT, "backend")):
        for f in files:
            if f.endswith(".py"):
                name = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, ".")
                mods[name[:-len(".__init__")] if name.endswith(".__init__") else name] = os.path.join(d, f)
    return mods


def _imports(mod, path, mods):
    """Modules of the backend that `mod` imports anywhere in its file (function-level imports too:
    a cycle through a deferred import is still a cycle)."""
    pkg = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom):
            base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:
                out.add(f"{name}.{a.name}" if f"{name}.{a.name}" in mods else name)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in mods and m != mod}


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_backend_has_no_import_cycle():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    assert "backend.geo.window" in graph["backend.geo.grid"]     # the graph sees deferred imports
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_tiles_run_anywhere_in_any_order_merge_to_the_local_result(sample_dir, tmp_path):
    """What a distributed executor does: plan, run each tile on its own (a fresh scene opened from the
    paths, fresh engines), hand back a tile result file, merge the files in the order they come."""
    sat, mp = os.path.join(sample_dir, "satellite.tif"), os.path.join(sample_dir, "map.gpkg")
    scene = load_scene(sat, mp, resolution=1.0, tile_size=512, overlap=64)
    assert len(scene.tiles) >= 9
    local = detect(scene, "schools", MapReader(), FillBoxSegmenter())

    settings = RunSettings("schools", tiles_dir=str(tmp_path / "out.gpkg.tiles"))
    reader = MapReader()
    run = plan(scene, settings, EngineFacts.of(reader, FillBoxSegmenter(), scene, settings))
    assert [t.id for t in run.todo] == [t.id for t in scene.tiles]
    for tile in reversed(run.todo):                   # the last row first: the merge waits for rows
        worker_scene = scene.source.open()            # what another process opens from the paths
        worker_reader = MapReader()
        worker_reader.prepare("schools", None, worker_scene.map_features)
        (rec, _), = run_tiles(worker_scene, [tile], settings, worker_reader, SegmenterSession(FillBoxSegmenter()))
        worker_scene.close()
        path = write_tile(settings.tiles_dir, rec)
        run.add(read_tile(path, tile), saved=True)
    merged = run.finish()
    assert len(merged.entities) == len(local.entities) > 0
    for a, b in zip(merged.entities, local.entities):
        assert a.geometry.equals_exact(b.geometry, 0)
        assert {k: v for k, v in a.attrs.items() if k != "created"} == \
               {k: v for k, v in b.attrs.items() if k != "created"}


def test_run_settings_are_one_typed_object(sample_dir):
    scene = load_scene(os.path.join(sample_dir, "satellite.tif"), os.path.join(sample_dir, "map.gpkg"),
                       resolution=2.0, tile_size=512, overlap=64)
    by_kwargs = detect(scene, "schools", MapReader(), FillBoxSegmenter(), keep_mask=True)
    by_settings = detect(scene, RunSettings("schools", keep_mask=True), MapReader(), FillBoxSegmenter())
    assert (by_kwargs.mask == by_settings.mask).all() and by_settings.mask.any()
    with pytest.raises(Exception):
        RunSettings("schools").query = "parks"        # frozen: a run's settings do not change under it


@pytest.mark.parametrize("extra,message", [
    (["--workers", "2"], "--workers is for a Ray run: add --executor ray"),
    (["--ray-address", "auto"], "--ray-address is for a Ray run: add --executor ray"),
    (["--reasoner", "openai:http://127.0.0.1:9/v1,http://127.0.0.1:10/v1"], "shared out by --executor ray"),
    (["--executor", "ray", "--ray-address", "head node"], "is not auto, HOST:PORT or ray://HOST:PORT"),
    (["--executor", "ray", "--reasoner", "openai:http://127.0.0.1:9/v1,"], "an empty URL in the list"),
    (["--executor", "ray", "--workers", "0"], None),
])
def test_executor_options_are_checked_before_the_work(sample_dir, tmp_path, capsys, extra, message):
    from backend.cli import main

    args = ["detect", "--satellite", os.path.join(sample_dir, "satellite.tif"), "--map",
            os.path.join(sample_dir, "map.gpkg"), "--query", "schools", "--out", str(tmp_path / "o.gpkg")]
    try:
        rc = main(args + extra)
    except SystemExit as exc:        # argparse: --workers 0
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "grid:" not in err, err
    if message:
        assert message in err, err
    assert not os.path.exists(tmp_path / "o.gpkg")
