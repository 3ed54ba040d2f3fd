"""--resume reuses a tile only when nothing that can change it has changed; damaged tiles are computed
again; one run at a time writes a tile folder (issue 20)."""
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pyogrio
import pytest

from backend.cli import main
from backend.errors import Cancelled, InputError
from backend.pipeline.detect import detect, load_scene
from backend.pipeline.resume import TileStore, engine_identity, file_identity
from backend.reasoners.mapreader import MapReader
from backend.resources import resource
from helpers import ROOT, FillBoxSegmenter


def _npz(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".npz"))


def _interrupt(scene, store, reasoner, n=3, **kw):
    """A run stopped (as by a crash or a cancel) once `n` tiles are finished in `store`."""
    with pytest.raises(Cancelled):
        detect(scene, "schools", reasoner, FillBoxSegmenter(), tiles_dir=store,
               cancel=lambda: os.path.isdir(store) and len(_npz(store)) >= n, **kw)
    assert len(_npz(store)) == n


def _same(a, b):
    assert len(a.entities) == len(b.entities) > 0
    for x, y in zip(a.entities, b.entities):
        assert x.geometry.equals_exact(y.geometry, 0)
        assert {k: v for k, v in x.attrs.items() if k != "created"} == \
               {k: v for k, v in y.attrs.items() if k != "created"}


@pytest.fixture
def inputs(sample_dir, tmp_path):
    """The sample scene's files copied (they are edited), and its map as a Shapefile too."""
    d = tmp_path / "in"
    d.mkdir()
    for name in ("satellite.tif", "map.gpkg", "map.tif"):
        shutil.copy(os.path.join(sample_dir, name), d / name)
    meta, _, geoms, fields = pyogrio.raw.read(str(d / "map.gpkg"))
    shp = d / "shp" / "map.shp"
    shp.parent.mkdir()
    pyogrio.raw.write(str(shp), geoms, fields, meta["fields"], crs=meta["crs"], driver="ESRI Shapefile",
                      geometry_type=meta["geometry_type"], encoding="UTF-8")
    return d


def _edit_shapefile_dbf(d):
    """A QGIS attribute edit: only the .dbf changes (the geometry files keep their bytes and times)."""
    shp = d / "shp" / "map.shp"
    meta, _, geoms, fields = pyogrio.raw.read(str(shp))
    names = list(meta["fields"])
    col = next(i for i, n in enumerate(names) if n.lower() == "name")
    fields[col] = np.array([f"renamed {i}" for i in range(len(fields[col]))], dtype=object)
    other = d / "edited" / "map.shp"
    other.parent.mkdir()
    pyogrio.raw.write(str(other), geoms, fields, names, crs=meta["crs"], driver="ESRI Shapefile",
                      geometry_type=meta["geometry_type"], encoding="UTF-8")
    before = os.stat(shp).st_mtime_ns, (d / "shp" / "map.shx").read_bytes()
    shutil.copy(other.with_suffix(".dbf"), shp.with_suffix(".dbf"))
    assert (os.stat(shp).st_mtime_ns, (d / "shp" / "map.shx").read_bytes()) == before


def _edit_shapefile_cpg(d):
    (d / "shp" / "map.cpg").write_text("LATIN1")     # the same bytes now read as other text


def _edit_raster_aux(d):
    """A GDAL side file beside the satellite (statistics, a no-data value set in QGIS)."""
    (d / "satellite.tif.aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><NoDataValue>0</NoDataValue></PAMRasterBand></PAMDataset>')


SHP_CASES = [("dbf attribute edit", _edit_shapefile_dbf), ("cpg encoding", _edit_shapefile_cpg),
             ("satellite .aux.xml", _edit_raster_aux)]


@pytest.mark.parametrize("edit", [c[1] for c in SHP_CASES], ids=[c[0] for c in SHP_CASES])
def test_an_edit_to_any_file_of_an_input_refuses_the_stale_tiles(inputs, tmp_path, edit):
    sat, shp = str(inputs / "satellite.tif"), str(inputs / "shp" / "map.shp")
    store = str(tmp_path / "out.gpkg.tiles")
    _interrupt(load_scene(sat, shp, resolution=1.0, tile_size=512, overlap=64), store, MapReader())
    edit(inputs)
    scene = load_scene(sat, shp, resolution=1.0, tile_size=512, overlap=64)
    with pytest.raises(InputError, match="inputs differ"):
        detect(scene, "schools", MapReader(), FillBoxSegmenter(), tiles_dir=store, resume=True)


def test_an_unchanged_shapefile_resumes(inputs, tmp_path):
    sat, shp = str(inputs / "satellite.tif"), str(inputs / "shp" / "map.shp")
    store = str(tmp_path / "out.gpkg.tiles")
    scene = load_scene(sat, shp, resolution=1.0, tile_size=512, overlap=64)
    full = detect(scene, "schools", MapReader(), FillBoxSegmenter())
    _interrupt(scene, store, MapReader())
    resumed = detect(load_scene(sat, shp, resolution=1.0, tile_size=512, overlap=64), "schools", MapReader(),
                     FillBoxSegmenter(), tiles_dir=store, resume=True)
    assert resumed.resumed == 3
    _same(resumed, full)


def _gpkg_functions(con):
    """The GeoPackage SQL functions its R-tree triggers call (GDAL defines them for its own connections)."""
    import shapely

    def geom(blob):
        env = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}[(blob[3] >> 1) & 7]
        return shapely.from_wkb(bytes(blob[8 + env:]))

    con.create_function("ST_IsEmpty", 1, lambda b: 1 if b is None else int(geom(b).is_empty))
    for i, name in enumerate(("ST_MinX", "ST_MinY", "ST_MaxX", "ST_MaxY")):
        con.create_function(name, 1, lambda b, i=i: None if b is None else float(geom(b).bounds[i]))


def test_a_geopackage_edited_in_wal_mode_refuses_the_stale_tiles(inputs, tmp_path):
    """QGIS edits a GeoPackage in WAL mode: until the last connection closes the change lies only in
    map.gpkg-wal and map.gpkg keeps its bytes and time (here GDAL's read of it checkpoints it, so the
    older key, which statted map.gpkg after the read, happened to see this case too)."""
    sat, gpkg = str(inputs / "satellite.tif"), str(inputs / "map.gpkg")
    store = str(tmp_path / "out.gpkg.tiles")
    with sqlite3.connect(gpkg) as con:
        con.execute("PRAGMA journal_mode=WAL")
    _interrupt(load_scene(sat, gpkg, resolution=1.0, tile_size=512, overlap=64), store, MapReader())
    stat = os.stat(gpkg).st_mtime_ns
    con = sqlite3.connect(gpkg)
    try:
        _gpkg_functions(con)
        con.execute("PRAGMA wal_autocheckpoint=0")
        table = con.execute("SELECT table_name FROM gpkg_contents").fetchone()[0]
        con.execute(f'UPDATE "{table}" SET name = name || \' (closed)\'')
        con.commit()
        assert os.path.getsize(gpkg + "-wal") > 0 and os.stat(gpkg).st_mtime_ns == stat
        scene = load_scene(sat, gpkg, resolution=1.0, tile_size=512, overlap=64)
        with pytest.raises(InputError, match="inputs differ"):
            detect(scene, "schools", MapReader(), FillBoxSegmenter(), tiles_dir=store, resume=True)
    finally:
        con.close()


def test_an_edited_legend_refuses_the_stale_tiles(inputs, tmp_path):
    """The map reader is called "mapreader" with any legend: the legend's contents are in the key."""
    sat, mp = str(inputs / "satellite.tif"), str(inputs / "map.tif")
    legend = tmp_path / "legend.json"
    shutil.copy(resource("legends", "osm_carto.json"), legend)
    store = str(tmp_path / "out.gpkg.tiles")
    scene = load_scene(sat, mp, resolution=1.0, tile_size=512, overlap=64)
    _interrupt(scene, store, MapReader(legend=str(legend)), n=2)
    data = json.loads(legend.read_text())
    data["colours"]["#010203"] = ["school"]       # one more colour read as a school
    legend.write_text(json.dumps(data))
    with pytest.raises(InputError, match="engines differ"):
        detect(scene, "schools", MapReader(legend=str(legend)), FillBoxSegmenter(), tiles_dir=store, resume=True)
    # Another legend file with the same contents is the same request.
    twin = tmp_path / "twin.json"
    shutil.copy(resource("legends", "osm_carto.json"), twin)
    assert engine_identity(MapReader(legend=str(twin))) != engine_identity(MapReader(legend=str(legend)))
    shutil.copy(legend, twin)
    assert engine_identity(MapReader(legend=str(twin)))["legend"] == engine_identity(MapReader(legend=str(legend)))["legend"]


class _Model:
    """An engine as the engines name themselves: kind:model-folder (e.g. sam2:/models/sam2)."""

    def __init__(self, path):
        self.name = f"sam2:{path}"


def test_model_files_are_part_of_the_key(tmp_path):
    m = tmp_path / "model"
    m.mkdir()
    (m / "config.json").write_text("{}")
    (m / "model.safetensors").write_bytes(b"\0" * 100)
    first = engine_identity(_Model(str(m)))
    assert engine_identity(_Model(str(m))) == first
    (m / "model.safetensors").write_bytes(b"\1" * 101)     # fine-tuned weights saved over the old ones
    assert engine_identity(_Model(str(m))) != first
    ckpt = tmp_path / "sam_vit_b.pth"
    ckpt.write_bytes(b"x")
    one = engine_identity(_Model(str(ckpt)))
    os.utime(ckpt, ns=(1, 1))
    assert engine_identity(_Model(str(ckpt))) != one
    assert engine_identity(_Model("facebook/sam2-hiera-tiny")) == {"name": "sam2:facebook/sam2-hiera-tiny"}


def test_identity_of_a_url_is_its_name():
    assert file_identity("/vsicurl/https://example.org/a.tif") == {"path": "/vsicurl/https://example.org/a.tif"}


def _truncate(p):
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) // 2)


def _zero(p):
    open(p, "wb").close()


def _garbage(p):
    with open(p, "r+b") as f:
        f.seek(40)
        f.write(os.urandom(200))


def _no_info(p):
    np.savez_compressed(open(p, "wb"), mask=np.zeros(3, np.uint8))


DAMAGE = [("0-byte", _zero), ("truncated", _truncate), ("garbage", _garbage), ("no info", _no_info)]


@pytest.mark.parametrize("damage", [c[1] for c in DAMAGE], ids=[c[0] for c in DAMAGE])
def test_a_damaged_finished_tile_is_computed_again(sample_dir, tmp_path, caplog, damage):
    sat, mp = os.path.join(sample_dir, "satellite.tif"), os.path.join(sample_dir, "map.gpkg")
    scene = load_scene(sat, mp, resolution=1.0, tile_size=512, overlap=64)
    full = detect(scene, "schools", MapReader(), FillBoxSegmenter())
    store = str(tmp_path / "out.gpkg.tiles")
    _interrupt(scene, store, MapReader(), n=3)
    bad = os.path.join(store, _npz(store)[1])
    damage(bad)
    with caplog.at_level(logging.WARNING, logger="backend"):
        resumed = detect(scene, "schools", MapReader(), FillBoxSegmenter(), tiles_dir=store, resume=True)
    assert resumed.resumed == 2
    assert any("is damaged" in r.getMessage() and os.path.basename(bad) in r.getMessage() for r in caplog.records)
    _same(resumed, full)


def test_tile_files_are_flushed_before_the_rename(sample_dir, tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace " + os.path.basename(b)), real_replace(a, b))[1])
    scene = load_scene(os.path.join(sample_dir, "satellite.tif"), os.path.join(sample_dir, "map.gpkg"),
                       resolution=2.0, tile_size=512, overlap=64)
    detect(scene, "schools", MapReader(), FillBoxSegmenter(), tiles_dir=str(tmp_path / "t"))
    tiles = [i for i, c in enumerate(calls) if c.startswith("replace tile_")]
    assert tiles and all(calls[i - 1] == "fsync" for i in tiles)


def _cli(sample_dir, out):
    return ["detect", "--satellite", os.path.join(sample_dir, "satellite.tif"), "--map",
            os.path.join(sample_dir, "map.gpkg"), "--query", "schools", "--out", out, "--resolution", "2"]


def test_a_second_run_on_the_same_out_is_told_who_writes_it(sample_dir, tmp_path, capsys):
    out = str(tmp_path / "result.gpkg")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from backend.pipeline.resume import TileStore; "
         "TileStore(sys.argv[1], {'a': 1}, False); print('held', flush=True); time.sleep(120)", out + ".tiles"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for extra in ([], ["--resume"]):
            assert main(_cli(sample_dir, out) + extra) == 2
            err = capsys.readouterr().err
            assert f"another run is writing {out} (pid {holder.pid})" in err, err
            assert "interrupted run" not in err and "Traceback" not in err
        assert not os.path.exists(out)
    finally:
        holder.kill()
        holder.wait()
    # The kernel drops a dead run's lock: no stale lock to clear by hand.
    assert main(_cli(sample_dir, out)) == 0
    assert os.path.exists(out) and not os.path.exists(out + ".tiles")


def test_the_lock_is_released_when_a_run_fails(sample_dir, tmp_path):
    store = str(tmp_path / "out.gpkg.tiles")
    scene = load_scene(os.path.join(sample_dir, "satellite.tif"), os.path.join(sample_dir, "map.gpkg"),
                       resolution=2.0, tile_size=512, overlap=64)
    with pytest.raises(Cancelled):
        detect(scene, "schools", MapReader(), FillBoxSegmenter(), tiles_dir=store, cancel=lambda: True)
    assert not os.path.exists(store)       # stopped before any tile finished: no folder left beside --out
    calls = []
    with pytest.raises(Cancelled):         # stopped after two tiles: they stay for --resume
        detect(scene, "schools", MapReader(), FillBoxSegmenter(), tiles_dir=store,
               cancel=lambda: calls.append(1) or len([n for n in os.listdir(store) if n.endswith(".npz")]) >= 2)
    assert len([n for n in os.listdir(store) if n.endswith(".npz")]) >= 2
    shutil.rmtree(store)
    TileStore(store, {"a": 1}, resume=False).close()      # not "another run is writing"
    t0 = time.perf_counter()
    TileStore(store, {"a": 1}, resume=False).close()
    assert time.perf_counter() - t0 < 1
