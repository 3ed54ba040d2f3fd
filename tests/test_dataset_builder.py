"""`python -m training.dataset` on real OpenStreetMap data (Porto): the spatial split has no leakage,
images line up as at detection, masks are the OSM outlines, and bad inputs give clear messages or
counted skips, never a half-written dataset."""
import json
import os

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image

from helpers import ROOT

PORTO = os.path.join(ROOT, "..", "shared", "realdata", "porto")
SAT, OSM, CARTO = (os.path.join(PORTO, f) for f in ("satellite.tif", "extract.osm.pbf", "map_carto.tif"))
real = pytest.mark.skipif(not os.path.isdir(PORTO), reason="the real Porto scene is not on this machine")
# 1.0 x 1.5 km of central Porto (UTM 29N): a district smaller than 1 x 1.7 km
SMALL = (532000.0, 4554500.0, 533000.0, 4556000.0)


def test_a_small_district_gets_three_splits_one_tile_apart():
    from training.citydata.split import SPLITS, min_gap_tiles, plan
    # 1 x 1.7 km at 0.25 m/px: 5 x 8 tiles of 768 px, either way round; and larger areas
    for rows, cols in [(8, 5), (5, 8), (3, 3), (7, 7), (40, 30)]:
        split, block = plan(rows, cols)
        kept = {s: [rc for rc, v in split.items() if v == s] for s in SPLITS}
        assert all(kept[s] for s in SPLITS), (rows, cols, block)
        assert min_gap_tiles(split) >= 1
        for (r, c), s in split.items():        # no kept tile touches one of another split
            if s is not None:
                assert all(split.get((r + dr, c + dc)) in (None, s) for dr in (-1, 0, 1) for dc in (-1, 0, 1))
    with pytest.raises(ValueError, match="cannot hold train, val and test"):
        plan(2, 2)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from training.dataset import main
    out = tmp_path_factory.mktemp("ds") / "porto"
    assert main(["--satellite", SAT, "--osm", OSM, "--map", CARTO, "--resolution", "0.25", "--bbox",
                 *map(str, SMALL), "--per-level", "3", "--out", str(out)]) == 0
    return out


def _truth() -> dict:
    """Porto's reference polygons per class, in UTM 29N."""
    from rasterio.crs import CRS
    from backend.geo.vectormap import VectorMap
    out = {}
    for f in VectorMap.read(os.path.join(PORTO, "truth.geojson"), CRS.from_epsg(32629)).features:
        out.setdefault(f.props["class"], []).append(f.geometry)
    return out


def _samples(root):
    out = {}
    for split in ("train", "val", "test"):
        for d in sorted((root / split).iterdir()):
            out[d.name] = (split, json.loads((d / "question.json").read_text()), d)
    return out


@real
def test_small_district_layout_and_metadata(small):
    from training.citydata.targets import class_table_version
    from training.data import SocioSegData
    meta = json.loads((small / "dataset.json").read_text())
    assert meta["crs_name"] == "EPSG:32629" and meta["resolution_m"] == 0.25 and meta["tile_size"] == 768
    assert meta["class_table"]["version"] == class_table_version()
    assert {s["role"] for s in meta["sources"]} == {"satellite", "osm", "map"}
    assert all(len(s["sha256"]) == 64 for s in meta["sources"])
    for split in ("train", "val", "test"):
        data = SocioSegData(str(small), split)
        assert data.kind == "raw" and len(data) == sum(meta["counts"]["samples"][split].values()) > 0
        s = data.get(0)
        assert s.map_image.shape == s.sat_image.shape == (768, 768, 3) and s.mask.any()
        assert s.level in ("name", "class", "function")
        assert not data.skipped
    for split, levels in meta["counts"]["samples"].items():     # --per-level 3: balanced, at most 3
        assert all(n <= 3 for n in levels.values())
    assert meta["counts"]["skipped"]["point without an enclosing area"] > 0   # counted, not silent
    sheet = Image.open(small / "preview.png")
    assert sheet.width > 1000 and sheet.height > 256


@real
def test_no_pixel_and_no_place_in_two_splits(small):
    meta = json.loads((small / "dataset.json").read_text())
    samples = _samples(small)
    used = {q["tile"]: split for split, q, _ in samples.values()}
    tiles = meta["tiles"]
    for tile, split in used.items():
        assert tiles[tile]["split"] == split
    size = meta["tile_size"]
    names = sorted(used)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if used[a] == used[b]:
                continue
            ta, tb = tiles[a], tiles[b]
            gap = max(abs(ta["x0"] - tb["x0"]), abs(ta["y0"] - tb["y0"])) - size
            assert gap >= size, (a, b, gap)          # at least one whole tile between two splits
    places = {}
    for split, q, _ in samples.values():
        for p in q["places"]:
            places.setdefault(p, set()).add(split)
    assert places and all(len(s) == 1 for s in places.values())


@real
def test_images_are_detections_pixels_and_masks_the_osm_outlines(small):
    """sat.png and map.png are what detection reads for that tile's area; park and school masks are
    Porto's reference polygons (truth.geojson) on the tile."""
    from backend.geo.raster import rasterize
    from backend.pipeline.detect import load_scene
    meta = json.loads((small / "dataset.json").read_text())
    truth = _truth()
    checked = 0
    for split, q, d in _samples(small).values():
        if q["task"] != "class" or q["problem"] not in ("park", "school"):
            continue
        tile = meta["tiles"][q["tile"]]
        minx, miny, maxx, maxy = tile["bounds"]
        mask = np.asarray(Image.open(d / "mask.png")) > 0
        ref = rasterize(truth[q["problem"]], mask.shape,
                        Affine(0.25, 0, minx, 0, -0.25, maxy))
        if q["problem"] == "park":
            assert (mask & ref).sum() / (mask | ref).sum() > 0.99
        else:      # schools mapped as a node also take the building around them: the reference has none
            assert (mask & ref).sum() / ref.sum() > 0.99
        if checked == 0:
            scene = load_scene(SAT, CARTO, resolution=0.25, bbox=tile["bounds"], tile_size=768)
            assert (scene.grid.width, scene.grid.height) == (768, 768)
            sat, map_rgb, _ = scene.read(scene.tiles[0])
            scene.close()
            assert np.array_equal(np.asarray(Image.open(d / "sat.png")), sat)
            # the map is reprojected (Web Mercator to UTM): GDAL's warper approximates the transform
            # over each grid, so at a few places nearest neighbour picks the pixel next door
            same = (np.asarray(Image.open(d / "map.png")) == map_rgb).all(axis=2).mean()
            assert same > 0.97, same
        checked += 1
    assert checked >= 2


def _porto_at_2m(path, hole=None):
    """Porto's image at 2 m per pixel, nodata (0) in the `hole` (row slice, column slice)."""
    with rasterio.open(SAT) as src:
        data = src.read(out_shape=(3, src.height // 4, src.width // 4))
        data[data == 0] = 1                       # 0 is nodata from here on
        if hole is not None:
            data[(slice(None),) + hole] = 0
        with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=3,
                           dtype="uint8", crs=src.crs, transform=src.transform * Affine.scale(4),
                           nodata=0) as dst:
            dst.write(data)
    return str(path)


@real
def test_nodata_tiles_are_counted_and_a_failed_build_leaves_nothing(tmp_path, capsys):
    from training.dataset import main
    holed = _porto_at_2m(tmp_path / "holed.tif", (slice(0, 150), slice(0, 150)))    # 300 m, north-west
    blank = _porto_at_2m(tmp_path / "blank.tif", (slice(None), slice(None)))
    common = ["--osm", OSM, "--resolution", "2", "--tile-size", "128", "--per-level", "2"]
    out = tmp_path / "ds"
    assert main(common + ["--satellite", holed, "--out", str(out)]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["counts"]["skipped"]["tiles with nodata"] > 0
    assert any(t["state"].startswith("skipped") for t in meta["tiles"].values())
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    # an image without data: every tile is skipped, the build fails, the old dataset stays whole
    assert main(common + ["--satellite", blank, "--overwrite", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no sample in the" in err and "--max-nodata" in err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.tif", "ds", "holed.tif"]   # no temporary folder


def test_bad_inputs_are_clear_messages(tmp_path, capsys):
    from training.dataset import main
    img = np.zeros((64, 64, 3), np.uint8)
    no_crs = tmp_path / "nocrs.tif"
    with rasterio.open(no_crs, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                       transform=Affine(1, 0, 0, 0, -1, 64)) as dst:
        dst.write(np.moveaxis(img, -1, 0))
    osm = OSM if os.path.exists(OSM) else str(no_crs)
    cases = [
        (["--satellite", str(no_crs), "--osm", osm], "no coordinate reference system"),
        (["--satellite", str(tmp_path / "missing.tif"), "--osm", osm], "--satellite"),
        (["--satellite", str(no_crs), "--osm", str(no_crs)], "--osm"),
        (["--satellite", str(no_crs), "--osm", osm, "--classes", "schol"], "did you mean school"),
        (["--satellite", str(no_crs), "--osm", osm, "--resolution", "0"], "--resolution"),
    ]
    for args, message in cases:
        assert main(args + ["--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["--satellite", str(no_crs), "--osm", osm, "--out", str(tmp_path / "out")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


@real
def test_imagery_elsewhere_than_the_osm_data(tmp_path, capsys):
    from helpers import write_raster
    from training.dataset import main
    far = write_raster(str(tmp_path / "far.tif"), np.full((64, 64, 3), 90, np.uint8), "EPSG:32629",
                       Affine(1, 0, 400000, 0, -1, 4000000))
    assert main(["--satellite", far, "--osm", OSM, "--out", str(tmp_path / "out")]) == 2
    assert "do not overlap" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@real
def test_processing_builds_a_training_set_from_qgis_layers(plugin_pkg, qgis_processing, qgis_new_project,
                                                           qgis_iface, tmp_path):
    """The Processing algorithm: QGIS renders the satellite layer, writes the OSM layers' features and the
    backend builds the dataset; its park masks are Porto's reference parks."""
    pytest.importorskip("qgis.core")
    import processing
    from qgis.core import QgsCoordinateReferenceSystem, QgsProject
    from backend.geo.raster import rasterize
    plugin = plugin_pkg.classFactory(qgis_iface)
    plugin.initProcessing()
    out = tmp_path / "ds"
    gpkg = os.path.join(PORTO, "map.gpkg")
    try:
        QgsProject.instance().setCrs(QgsCoordinateReferenceSystem("EPSG:32629"))
        box = (532000.0, 4554700.0, 533300.0, 4556000.0)
        res = processing.run("socioseg:build_training_set", {
            "SATELLITE": SAT, "OSM": [f"{gpkg}|layername=multipolygons", f"{gpkg}|layername=points"],
            "EXTENT": f"{box[0]},{box[2]},{box[1]},{box[3]} [EPSG:32629]", "RESOLUTION": 2.0,
            "TILE_SIZE": 128, "PER_LEVEL": 0, "OUTPUT": str(out)})
    finally:
        plugin.unload()
    assert res["OUTPUT"] == str(out)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["crs_name"] == "EPSG:32629" and meta["map"] == "rendered from the OSM data"
    assert all(sum(meta["counts"]["samples"][s].values()) > 0 for s in ("train", "val", "test"))
    parks = _truth()["park"]
    checked = 0
    for split, q, d in _samples(out).values():
        if q["task"] == "class" and q["problem"] == "park":
            minx, _, _, maxy = meta["tiles"][q["tile"]]["bounds"]
            mask = np.asarray(Image.open(d / "mask.png")) > 0
            ref = rasterize(parks, mask.shape, Affine(2.0, 0, minx, 0, -2.0, maxy))
            assert (mask & ref).sum() / (mask | ref).sum() > 0.98
            checked += 1
    assert checked
