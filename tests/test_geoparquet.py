"""--out places.parquet: GeoParquet 1.1 with the CRS as PROJJSON, the same places as the GeoPackage."""
import json
import os

import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely
from pyproj import CRS as ProjCRS

from backend.cli import main
from backend.output.geoparquet import read_geoparquet


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    from backend.resources import SAMPLE_DIR

    d = tmp_path_factory.mktemp("gp")
    args = ["detect", "--satellite", os.path.join(SAMPLE_DIR, "satellite.tif"), "--map",
            os.path.join(SAMPLE_DIR, "map.gpkg"), "--query", "schools", "--resolution", "2"]
    for ext in ("gpkg", "parquet"):
        assert main(args + ["--out", str(d / f"places.{ext}")]) == 0
    return d


def test_geoparquet_holds_the_geopackages_places(outputs):
    meta, _, wkb, fields = pyogrio.raw.read(str(outputs / "places.gpkg"))
    geoms, attrs, crs = read_geoparquet(str(outputs / "places.parquet"))
    assert len(geoms) == len(wkb) > 0
    for a, b in zip(geoms, shapely.from_wkb(wkb)):
        assert a.equals_exact(b, 1e-9)
    def plain(values):     # a GeoPackage's null number reads back as NaN through pyogrio's raw reader
        return [None if isinstance(v, float) and v != v else v for v in values]

    for name, column in zip(meta["fields"], fields):
        if name != "created":
            assert plain(attrs[name]) == plain(list(column)), name
    assert attrs["score"] == [None] * len(geoms)      # the map reader gives no score: null, not NaN
    assert crs.equals(ProjCRS.from_user_input(meta["crs"]))


def test_the_geo_metadata_follows_the_spec(outputs):
    table = pq.read_table(str(outputs / "places.parquet"))
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    col = geo["columns"]["geometry"]
    assert col["encoding"] == "WKB" and col["geometry_types"] == ["MultiPolygon"]
    assert ProjCRS.from_json_dict(col["crs"]).to_epsg() == 32650        # PROJJSON, the sample's UTM zone
    assert col["crs"]["type"] == "ProjectedCRS" and "$schema" in col["crs"]
    geoms = shapely.from_wkb(table.column("geometry").to_pylist())
    assert col["bbox"] == pytest.approx(list(shapely.total_bounds(geoms)))
    bbox = table.column("bbox").to_pylist()
    assert [[b["xmin"], b["ymin"], b["xmax"], b["ymax"]] for b in bbox] == [list(g.bounds) for g in geoms]
    assert col["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    assert str(table.schema.field("geometry").type) == "binary"


@pytest.mark.skipif("Parquet" not in pyogrio.list_drivers(), reason="this GDAL has no Parquet driver")
def test_gdal_reads_it(outputs):
    info = pyogrio.read_info(str(outputs / "places.parquet"))
    assert info["features"] > 0 and ProjCRS(info["crs"]).to_epsg() == 32650


def test_an_empty_result_is_a_valid_geoparquet(tmp_path):
    from rasterio.crs import CRS

    from backend.output.vectors import write_entities

    write_entities(str(tmp_path / "none.parquet"), [], [], CRS.from_epsg(3857))
    geoms, attrs, crs = read_geoparquet(str(tmp_path / "none.parquet"))
    assert geoms == [] and attrs["query"] == [] and crs.to_epsg() == 3857


def test_geopandas_reads_it_as_written(outputs):
    """GeoPandas parses the "geo" metadata on its own (version, encoding, CRS) and refuses a file
    that breaks the spec."""
    gpd = pytest.importorskip("geopandas")
    df = gpd.read_parquet(str(outputs / "places.parquet"))
    ref = gpd.read_file(str(outputs / "places.gpkg"))
    assert df.crs.to_epsg() == 32650 and len(df) == len(ref) > 0
    assert all(a.equals_exact(b, 1e-9) for a, b in zip(df.geometry, ref.geometry))
    assert list(df["name"]) == list(ref["name"])
