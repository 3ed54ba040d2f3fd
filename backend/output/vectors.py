"""Detected entities to files: GeoPackage (default), Shapefile, GeoJSON or GeoParquet, written atomically."""
from __future__ import annotations

import logging
import os

import numpy as np
import pyogrio
import shapely
from pyproj import CRS as ProjCRS, Geod, Transformer
from rasterio.crs import CRS

from ..errors import InputError
from .atomic import check_writable, commit, staging, write_failure
from .schema import FIELDS

log = logging.getLogger(__name__)

DRIVERS = {".gpkg": "GPKG", ".shp": "ESRI Shapefile", ".geojson": "GeoJSON", ".json": "GeoJSON",
           ".parquet": "GeoParquet", ".geoparquet": "GeoParquet"}
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
        raise InputError(f"cannot tell the output format of {path!r}: use .gpkg, .shp or .geojson, or .parquet for GeoParquet")
    return DRIVERS[ext]


def output_files(path: str) -> list[str]:
    """Every file writing `path` creates or replaces (a Shapefile is several)."""
    if os.path.splitext(path)[1].lower() != ".shp":
        return [os.path.abspath(path)]
    stem = os.path.splitext(os.path.abspath(path))[0]
    return [stem + e for e in SHAPEFILE_PARTS]


def _siblings(path: str) -> list[str]:
    return [p for p in output_files(path) if os.path.lexists(p)]


def check_output(path: str, overwrite: bool, option: str = "--out") -> None:
    """Everything about `path` that can be known before the work: format, consent, writability."""
    if os.path.isdir(path):
        raise InputError(f"{option} {path} is a folder: give a file name, e.g. {os.path.join(path, 'result.gpkg')}")
    driver_for(path)
    check_writable(path, option)
    if _siblings(path) and not overwrite:
        raise InputError(f"{path} exists; pass --overwrite to replace it or choose another {option}")


def _dbf_text(values: list, field: str, warned: set) -> list[str]:
    """Shapefile text fields hold at most 254 bytes: cut at a character boundary, and say so once."""
    out = []
    for v in values:
        b = v.encode("utf-8")
        if len(b) > 254:
            v = b[:254].decode("utf-8", errors="ignore")
            if field not in warned:
                warned.add(field)
                log.warning("the %s field was cut to 254 bytes: Shapefiles cannot hold more; write .gpkg or "
                            ".geojson to keep it whole", field)
        out.append(v)
    return out


def _columns(attrs: list[dict], shapefile: bool) -> list[np.ndarray]:
    columns, warned = [], set()
    for n, kind in FIELDS:
        vals = [a.get(n) for a in attrs]
        if kind is str:
            text = ["" if v is None else str(v) for v in vals]
            columns.append(np.array(_dbf_text(text, n, warned) if shapefile else text, dtype=object))
        elif kind is int:
            columns.append(np.array([int(v or 0) for v in vals], dtype=np.int64))
        else:
            columns.append(np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64))
    return columns


def _verify(tmp_path: str, driver: str, count: int, crs: CRS) -> None:
    """Read the new file back: all features there, the CRS kept. A full disk can leave empty or
    truncated files that GDAL reported as written."""
    if driver == "ESRI Shapefile":
        stem = os.path.splitext(tmp_path)[0]
        for ext in (".shp", ".shx", ".dbf", ".prj"):
            if not os.path.exists(stem + ext) or os.path.getsize(stem + ext) == 0:
                raise OSError(f"{os.path.basename(stem + ext)} is missing or empty after writing")
    info = pyogrio.read_info(tmp_path, force_feature_count=True)
    if info["features"] != count:
        raise OSError(f"{info['features']} of {count} features were written")
    if count and not info["crs"]:
        raise OSError("the coordinate reference system was not written")
    if count and not ProjCRS(info["crs"]).equals(ProjCRS(crs.to_wkt()), ignore_axis_order=True):
        log.warning("%s: the file's CRS reads back as %s, not %s", os.path.basename(tmp_path), info["crs"],
                    crs.to_string())


def write_entities(path: str, geometries: list, attrs: list[dict], crs: CRS, overwrite: bool = False,
                   layer: str = "entities", option: str = "--out", metadata: dict | None = None) -> str:
    """Write polygons and their attributes atomically (see `atomic`): the new file is written beside
    the destination, read back and checked, and only then replaces anything. `metadata` (text by
    key) goes into a GeoPackage's layer metadata and a GeoJSON's description; a Shapefile has no
    place for it."""
    driver = driver_for(path)
    existing = _siblings(path)
    if existing and not overwrite:
        raise InputError(f"{path} exists; pass --overwrite to replace it or choose another {option}")
    if os.path.isdir(path):
        raise InputError(f"{option} {path} is a folder: give a file name")
    shapefile = driver == "ESRI Shapefile"
    with staging(path, option) as tmp:
        tmp_path = os.path.join(tmp, os.path.basename(path))
        wkb = np.array([shapely.to_wkb(shapely.geometry.MultiPolygon([g]) if g.geom_type == "Polygon" else g)
                        for g in geometries], dtype=object)
        # GeoPackage 1.2 opens without warnings in older GDALs (QGIS 3.22 LTR ships GDAL 3.6).
        kwargs = {"layer": layer, "dataset_options": {"VERSION": "1.2"}} if driver == "GPKG" else {}
        if metadata and driver == "GPKG":
            kwargs["layer_metadata"] = {k: str(v) for k, v in metadata.items()}
        elif metadata and driver == "GeoJSON":
            kwargs["layer_options"] = {"DESCRIPTION": "; ".join(f"{k}: {v}" for k, v in metadata.items())}
        try:
            if driver == "GeoParquet":     # written with pyarrow: GDAL builds often lack the driver
                from .geoparquet import write_geoparquet
                write_geoparquet(tmp_path, wkb, _columns(attrs, False), [n for n, _ in FIELDS], crs.to_wkt())
            else:
                pyogrio.raw.write(tmp_path, wkb, _columns(attrs, shapefile), [n for n, _ in FIELDS], driver=driver,
                                  crs=crs.to_wkt(), geometry_type="MultiPolygon",
                                  encoding="UTF-8" if shapefile else None, **kwargs)
                _verify(tmp_path, driver, len(geometries), crs)
        except Exception as exc:   # pyogrio's errors, OSError, or a failed check: all mean "not written"
            raise write_failure(path, option, exc) from None
        stem_out = os.path.splitext(os.path.abspath(path))[0]
        produced = {os.path.join(tmp, f): stem_out + os.path.splitext(f)[1] for f in os.listdir(tmp)}
        if not shapefile:
            produced = {tmp_path: os.path.abspath(path)}
        commit(produced, existing, path, option)
    return path


def run_metadata(detection) -> dict[str, str]:
    """What the whole run says about its output: how many tiles got a usable answer."""
    asked, answered = getattr(detection, "asked", 0), getattr(detection, "answered", 0)
    return {"tiles_answered": f"{answered} of {asked}"} if asked else {}


def write_detection(path: str, detection, overwrite: bool = False) -> str:
    return write_entities(path, [e.geometry for e in detection.entities],
                          [e.attrs for e in detection.entities], detection.grid.crs, overwrite,
                          metadata=run_metadata(detection))
