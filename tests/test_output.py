import os

import pyogrio
import pytest
import shapely
from rasterio.crs import CRS

from backend.errors import InputError
from backend.output.vectors import FIELDS, write_entities

POLY = shapely.Polygon([(500_000, 4_057_000), (500_100, 4_057_000), (500_100, 4_057_050), (500_000, 4_057_050)],
                       [[(500_010, 4_057_010), (500_020, 4_057_010), (500_020, 4_057_020), (500_010, 4_057_020)]])
ATTRS = {"query": "schools", "task": "class", "name": "Riverside Primary School", "tiles": "tile_0_0",
         "n_boxes1": 2, "n_boxes2": 2, "refined": True, "reasoner": "mapreader", "segmenter": "grabcut",
         "score": None, "area_m2": 4900.0, "note": "", "created": "2026-11-25T00:00:00+00:00"}


@pytest.mark.parametrize("ext", [".gpkg", ".shp", ".geojson"])
def test_round_trip_keeps_geometry_crs_and_attributes(tmp_path, ext):
    path = str(tmp_path / f"out{ext}")
    write_entities(path, [POLY], [ATTRS], CRS.from_epsg(32650))
    meta, _, wkb, fields = pyogrio.raw.read(path)
    got = shapely.from_wkb(wkb[0])
    assert got.equals(shapely.MultiPolygon([POLY]))       # holes kept
    assert CRS.from_user_input(meta["crs"]) == CRS.from_epsg(32650)
    row = dict(zip(meta["fields"], [f[0] for f in fields]))
    assert list(meta["fields"]) == [n for n, _ in FIELDS]
    assert row["name"] == "Riverside Primary School" and int(row["n_boxes1"]) == 2
    if ext == ".shp":
        assert os.path.exists(tmp_path / "out.prj")
    assert [p for p in os.listdir(tmp_path) if p.startswith(".socioseg-")] == []


def test_existing_output_is_not_overwritten_without_consent(tmp_path):
    path = str(tmp_path / "out.gpkg")
    write_entities(path, [POLY], [ATTRS], CRS.from_epsg(32650))
    with pytest.raises(InputError, match="--overwrite"):
        write_entities(path, [POLY], [ATTRS], CRS.from_epsg(32650))
    write_entities(path, [POLY, POLY.buffer(5)], [ATTRS, ATTRS], CRS.from_epsg(32650), overwrite=True)
    assert pyogrio.read_info(path)["features"] == 2


def test_shapefile_cuts_long_text_at_254_bytes_and_says_so(tmp_path, caplog):
    """A DBF field holds 254 bytes: the cut is on a character boundary, logged; GeoPackage keeps all."""
    long = "parks near the river " + "é" * 300
    attrs = dict(ATTRS, query=long)
    shp, gpkg = str(tmp_path / "out.shp"), str(tmp_path / "out.gpkg")
    with caplog.at_level("WARNING"):
        write_entities(shp, [POLY], [attrs], CRS.from_epsg(32650))
    assert "query field was cut to 254 bytes" in caplog.text
    meta, _, _, fields = pyogrio.raw.read(shp)
    got = fields[list(meta["fields"]).index("query")][0]
    assert long.startswith(got) and len(got.encode("utf-8")) <= 254 and len(got) > 100
    caplog.clear()
    with caplog.at_level("WARNING"):
        write_entities(gpkg, [POLY], [attrs], CRS.from_epsg(32650))
    assert "cut" not in caplog.text
    meta, _, _, fields = pyogrio.raw.read(gpkg)
    assert fields[list(meta["fields"]).index("query")][0] == long


def test_overwriting_a_shapefile_replaces_every_part(tmp_path):
    """Stale sidecars of the old Shapefile (a spatial index) go; the new parts are complete."""
    path = str(tmp_path / "out.shp")
    write_entities(path, [POLY], [ATTRS], CRS.from_epsg(32650))
    (tmp_path / "out.qix").write_bytes(b"stale index")
    write_entities(path, [POLY, POLY.buffer(5)], [ATTRS, ATTRS], CRS.from_epsg(32650), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["out.cpg", "out.dbf", "out.prj", "out.shp", "out.shx"]
    assert pyogrio.read_info(path)["features"] == 2


def test_unknown_extension_is_refused(tmp_path):
    with pytest.raises(InputError, match=".gpkg, .shp or .geojson"):
        write_entities(str(tmp_path / "out.kmz"), [POLY], [ATTRS], CRS.from_epsg(32650))


def test_a_failed_replace_puts_every_old_part_back(tmp_path):
    """The swap itself failing half-way (here: the last rename's folder is gone) restores the old
    Shapefile, every part byte-identical, and leaves none of the new parts."""
    from backend.output.atomic import commit

    path = str(tmp_path / "out.shp")
    write_entities(path, [POLY], [ATTRS], CRS.from_epsg(32650))
    old = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)}
    staged = tmp_path.parent / (tmp_path.name + "_staged")
    staged.mkdir()
    for part in ("shp", "dbf", "shx"):
        (staged / f"out.{part}").write_bytes(b"new " + part.encode())
    produced = {str(staged / "out.shp"): str(tmp_path / "out.shp"), str(staged / "out.dbf"): str(tmp_path / "out.dbf"),
                str(staged / "out.shx"): str(tmp_path / "gone" / "out.shx")}
    with pytest.raises(InputError, match="cannot write .*out.shp"):
        commit(produced, [str(tmp_path / p) for p in old], path, "--out")
    assert {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)} == old
