"""Vector maps (GeoPackage, GeoJSON, Shapefile, ...): every layer read and put into the grid's CRS."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pyogrio
import shapely
from pyproj import Transformer
from rasterio.crs import CRS

from ..errors import InputError

log = logging.getLogger(__name__)

VECTOR_EXTENSIONS = {".gpkg", ".geojson", ".json", ".shp", ".fgb", ".kml", ".gml", ".sqlite", ".osm", ".pbf"}


def units_per_metre(crs: CRS) -> float:
    """CRS units in one metre of ground; degrees use the mean metre of a degree (good to ~1% for
    the sizes used here: buffers of metres and areas of hundreds of square metres)."""
    if crs.is_geographic:
        return 1.0 / 111_320.0
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    return 1.0 / factor if factor else 1.0


def is_vector_path(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VECTOR_EXTENSIONS


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
        for layer in layers:
            meta, _, wkb, fields = pyogrio.raw.read(path, layer=layer)
            if wkb is None:
                continue
            if not meta.get("crs"):
                raise InputError(f"layer {layer!r} of {path} has no CRS: set one (QGIS: Layer > "
                                 "Set CRS, then save) and try again")
            geoms = _reproject(shapely.from_wkb(wkb), CRS.from_user_input(meta["crs"]), crs)
            names = list(meta["fields"])
            for i, g in enumerate(geoms):
                if g is None or g.is_empty:
                    continue
                if not g.is_valid:
                    g = shapely.make_valid(g)
                props = {n: (fields[j][i].item() if hasattr(fields[j][i], "item") else fields[j][i])
                         for j, n in enumerate(names)}
                features.append(Feature(g, props, layer))
        if not features:
            raise InputError(f"vector map {path} holds no features")
        log.info("vector map %s: %d features in %d layers", path, len(features), len(layers))
        return cls(features, crs)

    def within(self, bounds) -> list[Feature]:
        idx = self.tree.query(shapely.box(*bounds))
        return [self.features[i] for i in sorted(idx)]
