"""Detected entities to files: GeoPackage (default), Shapefile or GeoJSON, written atomically."""
from __future__ import annotations

import glob
import os
import shutil
import tempfile

import numpy as np
import pyogrio
import shapely
from pyproj import Geod, Transformer
from rasterio.crs import CRS

from ..errors import InputError
from .schema import FIELDS

DRIVERS = {".gpkg": "GPKG", ".shp": "ESRI Shapefile", ".geojson": "GeoJSON", ".json": "GeoJSON"}
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx")
_GEOD = Geod(ellps="WGS84")


def geodesic_area_m2(geom: shapely.Geometry, crs: CRS) -> float:
    """Area on the WGS 84 ellipsoid, right in any CRS (geographic ones included)."""
    tr = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    g = shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    return abs(_GEOD.geometry_area_perimeter(g)[0])


def driver_for(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in DRIVERS:
        raise InputError(f"cannot tell the output format of {path!r}: use .gpkg, .shp or .geojson")
    return DRIVERS[ext]


def _siblings(path: str) -> list[str]:
    if driver_for(path) != "ESRI Shapefile":
        return [path] if os.path.exists(path) else []
    stem = os.path.splitext(path)[0]
    return [stem + e for e in SHAPEFILE_PARTS if os.path.exists(stem + e)]


def write_entities(path: str, geometries: list, attrs: list[dict], crs: CRS, overwrite: bool = False,
                   layer: str = "entities") -> str:
    """Write polygons and their attributes; a temp file is renamed into place, so a failure leaves
    no half-written output and an existing file stays until the new one is complete."""
    driver = driver_for(path)
    existing = _siblings(path)
    if existing and not overwrite:
        raise InputError(f"{path} exists; pass --overwrite to replace it or choose another name")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".socioseg-", dir=folder)
    try:
        tmp_path = os.path.join(tmp, os.path.basename(path))
        names = [n for n, _ in FIELDS]
        columns = []
        for n, kind in FIELDS:
            vals = [a.get(n) for a in attrs]
            if kind is str:
                col = np.array(["" if v is None else str(v)[:254] for v in vals], dtype=object)
            elif kind is int:
                col = np.array([int(v or 0) for v in vals], dtype=np.int64)
            else:
                col = np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)
            columns.append(col)
        wkb = np.array([shapely.to_wkb(shapely.geometry.MultiPolygon([g]) if g.geom_type == "Polygon" else g)
                        for g in geometries], dtype=object)
        # GeoPackage 1.2 opens without warnings in older GDALs (QGIS 3.22 LTR ships GDAL 3.6).
        kwargs = {"layer": layer, "dataset_options": {"VERSION": "1.2"}} if driver == "GPKG" else {}
        pyogrio.raw.write(tmp_path, wkb, columns, names, driver=driver, crs=crs.to_wkt(),
                          geometry_type="MultiPolygon", encoding="UTF-8" if driver == "ESRI Shapefile" else None,
                          **kwargs)
        for old in existing:
            os.remove(old)
        stem_tmp = os.path.splitext(tmp_path)[0]
        stem_out = os.path.splitext(os.path.abspath(path))[0]
        for produced in glob.glob(glob.escape(stem_tmp) + ".*"):
            os.replace(produced, stem_out + os.path.splitext(produced)[1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def write_detection(path: str, detection, overwrite: bool = False) -> str:
    return write_entities(path, [e.geometry for e in detection.entities],
                          [e.attrs for e in detection.entities], detection.grid.crs, overwrite)
