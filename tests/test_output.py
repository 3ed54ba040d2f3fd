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
    assert CRS.from_user_input(meta["crs"]) == CRS.from_epsg(32650) or ext == ".geojson"
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


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = str(tmp_path / "out.gpkg")
    write_entities(path, [POLY], [ATTRS], CRS.from_epsg(32650))
    before = open(path, "rb").read()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pyogrio.raw, "write", boom)
    with pytest.raises(OSError):
        write_entities(path, [POLY], [ATTRS], CRS.from_epsg(32650), overwrite=True)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["out.gpkg"]


def test_unknown_extension_is_refused(tmp_path):
    with pytest.raises(InputError, match=".gpkg, .shp or .geojson"):
        write_entities(str(tmp_path / "out.kmz"), [POLY], [ATTRS], CRS.from_epsg(32650))
