"""GeoParquet 1.1 (https://geoparquet.org/releases/v1.1.0/) written with pyarrow: the GDAL builds this
project meets have no Parquet driver, and GeoPandas is not a dependency. Geometries are WKB, the CRS is
PROJJSON in the file's "geo" metadata, and a per-row bbox column (the spec's "covering") lets GDAL,
DuckDB and GeoPandas skip row groups by extent."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyproj import CRS as ProjCRS

GEO_VERSION = "1.1.0"
GEOMETRY = "geometry"
BBOX = "bbox"


def geo_metadata(geometries: list, crs_wkt: str, geometry_type: str) -> dict:
    bounds = shapely.total_bounds(geometries) if len(geometries) else None
    column = {"encoding": "WKB", "geometry_types": [geometry_type],
              "crs": ProjCRS.from_wkt(crs_wkt).to_json_dict(), "edges": "planar",
              "covering": {"bbox": {k: [BBOX, k] for k in ("xmin", "ymin", "xmax", "ymax")}}}
    if bounds is not None and np.all(np.isfinite(bounds)):
        column["bbox"] = [float(v) for v in bounds]
    return {"version": GEO_VERSION, "primary_column": GEOMETRY, "columns": {GEOMETRY: column}}


def write_geoparquet(path: str, wkb: np.ndarray, columns: list[np.ndarray], names: list[str], crs_wkt: str,
                     geometry_type: str = "MultiPolygon") -> None:
    """One table: the attribute columns, the geometry (WKB) and its bbox; then read back and checked
    (a full disk can leave a file that pyarrow reported as written)."""
    geoms = shapely.from_wkb(list(wkb)) if len(wkb) else np.array([], dtype=object)
    b = shapely.bounds(geoms) if len(geoms) else np.zeros((0, 4))
    # A missing number (NaN here, e.g. no score) is a null in Parquet, as it is in a GeoPackage.
    arrays = {n: pa.array(list(c) if c.dtype == object else c, from_pandas=True) for n, c in zip(names, columns)}
    arrays[GEOMETRY] = pa.array([bytes(g) for g in wkb], type=pa.binary())
    arrays[BBOX] = pa.StructArray.from_arrays([pa.array(b[:, i], type=pa.float64()) for i in range(4)],
                                              ["xmin", "ymin", "xmax", "ymax"])
    table = pa.table(arrays)
    table = table.replace_schema_metadata({b"geo": json.dumps(geo_metadata(geoms, crs_wkt, geometry_type)).encode()})
    pq.write_table(table, path, compression="zstd")
    meta = pq.read_metadata(path)
    if meta.num_rows != len(wkb):
        raise OSError(f"{meta.num_rows} of {len(wkb)} features were written")
    if b"geo" not in (meta.metadata or {}):
        raise OSError("the GeoParquet metadata was not written")


def read_geoparquet(path: str) -> tuple[list, dict, ProjCRS]:
    """(geometries, attribute columns, CRS) of a GeoParquet file's primary geometry column."""
    table = pq.read_table(path)
    geo = json.loads(table.schema.metadata[b"geo"])
    col = geo["primary_column"]
    crs = geo["columns"][col].get("crs")
    geoms = list(shapely.from_wkb(table.column(col).to_pylist()))
    attrs = {n: table.column(n).to_pylist() for n in table.column_names if n not in (col, BBOX)}
    return geoms, attrs, ProjCRS.from_json_dict(crs) if crs else ProjCRS.from_epsg(4326)
