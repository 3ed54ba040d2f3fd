"""Vector maps as users have them: every layer of a GeoPackage, GeoJSON, Shapefile, ... or an
OpenStreetMap `.osm` / `.osm.pbf` file (GDAL's OSM driver), put into the grid's CRS.

OpenStreetMap data converted by GDAL keeps a few keys as columns and the rest in `other_tags`
(hstore text: `"key"=>"value","k2"=>"v2"`); it is parsed so that every tag counts. Real OSM data always
holds some broken geometries (rings of two points, self-intersections): they are repaired
(`shapely.make_valid`) or skipped, and counted in the log; one broken feature never stops a run.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import numpy as np
import pyogrio
import shapely
from pyproj import Transformer
from rasterio.crs import CRS

from ..errors import InputError

log = logging.getLogger(__name__)

VECTOR_EXTENSIONS = {".gpkg", ".geojson", ".json", ".shp", ".fgb", ".kml", ".gml", ".sqlite", ".osm", ".pbf"}
# Columns that GDAL's OSM driver adds and that are no tags.
_NOT_TAGS = {"other_tags", "osm_id", "osm_way_id", "z_order", "all_tags"}
_HSTORE = re.compile(r'"((?:[^"\\]|\\.)*)"\s*=>\s*(?:"((?:[^"\\]|\\.)*)"|NULL)')


def units_per_metre(crs: CRS) -> float:
    """CRS units in one metre of ground; degrees use the mean metre of a degree (good to ~1% for
    the sizes used here: buffers of metres and areas of hundreds of square metres)."""
    if crs.is_geographic:
        return 1.0 / 111_320.0
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    return 1.0 / factor if factor else 1.0


def is_vector_path(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VECTOR_EXTENSIONS


def parse_hstore(text) -> dict[str, str]:
    """GDAL's `other_tags` / `all_tags` text as a dict; anything unparsable gives what could be read."""
    if not text or not isinstance(text, str):
        return {}
    unescape = lambda s: s.replace('\\"', '"').replace("\\\\", "\\")  # noqa: E731
    return {unescape(m.group(1)): unescape(m.group(2)) for m in _HSTORE.finditer(text)
            if m.group(2) is not None}


@dataclass
class Feature:
    geometry: shapely.Geometry
    props: dict
    layer: str

    @property
    def name(self) -> str:
        v = self.props.get("name")
        return str(v) if v not in (None, "") else ""


def _reproject(geoms: np.ndarray, src: CRS, dst: CRS) -> np.ndarray:
    if src == dst:
        return geoms
    tr = Transformer.from_crs(src, dst, always_xy=True)
    return shapely.transform(geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def _props(names, fields, i) -> dict:
    props = {}
    for j, n in enumerate(names):
        v = fields[j][i]
        v = v.item() if hasattr(v, "item") else v
        if v is None or v == "":
            continue
        if n in ("other_tags", "all_tags"):
            for k, tv in parse_hstore(v).items():
                props.setdefault(k, tv)
        else:
            props[n] = v
    return props


def _repair(g):
    """A valid geometry, or None when nothing of it can be kept."""
    if g is None or g.is_empty:
        return None
    if not g.is_valid:
        areal = g.geom_type in ("Polygon", "MultiPolygon")
        g = shapely.make_valid(g)
        if areal:   # keep only the area of a repaired polygon (a 2-point ring repairs to a line)
            parts = [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")]
            g = shapely.union_all(parts) if parts else None
    return None if g is None or g.is_empty else g


class VectorMap:
    """All features of all layers of a vector file, in one CRS, with a spatial index."""

    def __init__(self, features: list[Feature], crs: CRS):
        self.features = features
        self.crs = crs
        self.tree = shapely.STRtree([f.geometry for f in features])

    @classmethod
    def read(cls, path: str, crs: CRS) -> "VectorMap":
        try:
            layers = [name for name, _ in pyogrio.list_layers(path)]
        except Exception as exc:  # pyogrio raises DataSourceError and friends
            raise InputError(f"cannot read vector map {path}: {exc}") from None
        features: list[Feature] = []
        repaired = skipped = 0
        for layer in layers:
            try:
                meta, _, wkb, fields = pyogrio.raw.read(path, layer=layer)
            except Exception as exc:
                log.warning("vector map %s: layer %r cannot be read (%s); skipped", path, layer, exc)
                continue
            if wkb is None or len(wkb) == 0:
                continue
            if not meta.get("crs"):
                raise InputError(f"layer {layer!r} of {path} has no CRS: set one (QGIS: Layer > "
                                 "Set CRS, then save) and try again")
            # "fix" closes rings and pads short ones where GEOS can; the rest come back as None.
            raw = shapely.from_wkb(wkb, on_invalid="fix")
            geoms = _reproject(raw, CRS.from_user_input(meta["crs"]), crs)
            names = list(meta["fields"])
            for i, g in enumerate(geoms):
                if wkb[i] is None:
                    continue                       # a feature without geometry (a table row)
                fixed = _repair(g)
                if fixed is None:
                    skipped += 1
                    continue
                repaired += fixed is not g
                features.append(Feature(fixed, _props(names, fields, i), layer))
        if repaired or skipped:
            log.info("vector map %s: %d invalid geometries repaired, %d unusable ones skipped",
                     path, repaired, skipped)
        if not features:
            raise InputError(f"vector map {path} holds no usable features")
        log.info("vector map %s: %d features in %d layers", path, len(features), len(layers))
        return cls(features, crs)

