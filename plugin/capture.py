"""Capturing QGIS layers over an area onto one grid, with QGIS's own renderer.

Both layers are rendered with the same QgsMapSettings (only the layer list differs), so the two images
are aligned by construction, and the georeference is taken from the settings' visibleExtent(), which
QGIS widens to the output's aspect ratio. Only QGIS and numpy are used here: the detection itself runs
in the backend's worker process (plugin/worker_client.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsFeatureRequest,
                       QgsMapLayer, QgsMapRendererCustomPainterJob, QgsMapSettings, QgsProject,
                       QgsRectangle, QgsUnitTypes)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor, QImage, QPainter

CARTO_BACKGROUND = (242, 239, 233)


def units_per_metre(crs: QgsCoordinateReferenceSystem, latitude: float = 0.0) -> float:
    """Map units in one metre of ground (degrees take the latitude into account for x)."""
    units = crs.mapUnits()
    if units == QgsUnitTypes.DistanceDegrees:
        return 1.0 / 111_320.0
    factor = QgsUnitTypes.fromUnitToUnitFactor(QgsUnitTypes.DistanceMeters, units)
    return factor if factor > 0 else 1.0


def plan_size(extent: QgsRectangle, crs, resolution_m: float) -> tuple[int, int, float]:
    """(width, height, map units per pixel) of a capture of `extent` at `resolution_m` metres/px."""
    from ..backend.errors import InputError

    if extent is None or extent.isEmpty() or extent.width() <= 0 or extent.height() <= 0:
        raise InputError("the area is empty: choose the canvas extent, a layer's extent or draw a rectangle")
    if resolution_m <= 0 or not math.isfinite(resolution_m):
        raise InputError("the resolution must be a positive number of metres per pixel")
    res = resolution_m * units_per_metre(crs, extent.center().y())
    return max(1, int(math.ceil(extent.width() / res))), max(1, int(math.ceil(extent.height() / res))), res


def map_settings(extent: QgsRectangle, crs, width: int, height: int, layers) -> QgsMapSettings:
    ms = QgsMapSettings()
    ms.setDestinationCrs(crs)
    ms.setLayers(layers)
    ms.setExtent(extent)
    ms.setOutputSize(QSize(width, height))
    ms.setOutputDpi(96)
    ms.setBackgroundColor(QColor(0, 0, 0, 0))
    ms.setTransformContext(QgsProject.instance().transformContext())
    ms.setFlag(QgsMapSettings.Antialiasing, True)
    return ms


def render(ms: QgsMapSettings):
    """RGBA uint8 array of what `ms` shows, rendered in the calling thread."""
    import numpy as np

    size = ms.outputSize()
    img = QImage(size, QImage.Format_RGBA8888)
    img.fill(QColor(0, 0, 0, 0))
    painter = QPainter(img)
    job = QgsMapRendererCustomPainterJob(ms, painter)
    job.renderSynchronously()
    painter.end()
    ptr = img.constBits()
    ptr.setsize(img.sizeInBytes() if hasattr(img, "sizeInBytes") else img.byteCount())
    arr = np.frombuffer(ptr, np.uint8).reshape(size.height(), img.bytesPerLine())
    return arr[:, : size.width() * 4].reshape(size.height(), size.width(), 4).copy()


@dataclass
class CapturedScene:
    """What QGIS rendered over the area, aligned on one grid; no heavy imports needed to hold it."""
    satellite: "object"            # H x W x 3 uint8
    map_image: "object"
    valid: "object"                # H x W bool
    transform: tuple               # (a, b, c, d, e, f): pixel corner (col, row) -> map coordinates
    crs_wkt: str
    tiles: list
    features: list | None          # vector map: [{"wkb": hex, "props": {...}, "layer": name}]

    def pixel_to_map(self, col: float, row: float) -> tuple[float, float]:
        a, b, c, d, e, f = self.transform
        return a * col + b * row + c, d * col + e * row + f


def transform_of(ms: QgsMapSettings) -> tuple:
    """The affine transform of a rendered QgsMapSettings, from its visible extent."""
    v = ms.visibleExtent()
    w, h = ms.outputSize().width(), ms.outputSize().height()
    return (v.width() / w, 0.0, v.xMinimum(), 0.0, -v.height() / h, v.yMaximum())


def _json_value(v):
    if v is None or (hasattr(v, "isNull") and v.isNull()):
        return None
    if isinstance(v, (str, int, float, bool)):
        return v
    return str(v.toString() if hasattr(v, "toString") else v)


def vector_features(layer, crs, extent: QgsRectangle) -> list[dict]:
    """The layer's features inside `extent`, in `crs`, as WKB and JSON-safe attributes."""
    to_map = QgsCoordinateTransform(layer.crs(), crs, QgsProject.instance())
    request = QgsFeatureRequest().setFilterRect(
        to_map.transformBoundingBox(extent, QgsCoordinateTransform.ReverseTransform))
    names = [f.name() for f in layer.fields()]
    out = []
    for feat in layer.getFeatures(request):
        geom = feat.geometry()
        if geom is None or geom.isEmpty():
            continue
        geom.transform(to_map)
        out.append({"wkb": bytes(geom.asWkb()).hex(), "layer": layer.name(),
                    "props": {n: _json_value(v) for n, v in zip(names, feat.attributes())}})
    return out


def capture_scene(sat_layer, map_layer, extent: QgsRectangle, crs, resolution_m: float,
                  tile_size: int = 768, overlap: int = 128, max_tiles: int = 256) -> CapturedScene:
    """Both layers rendered over `extent` (in `crs`) on one grid; tiles are planned before rendering."""
    import numpy as np

    from ..backend.errors import InputError
    from ..backend.geo.tiles import tile_layout

    if sat_layer is None or not sat_layer.isValid():
        raise InputError("choose a valid satellite layer")
    if map_layer is None or not map_layer.isValid():
        raise InputError("choose a valid map layer")
    width, height, _ = plan_size(extent, crs, resolution_m)
    tiles = tile_layout(width, height, tile_size, overlap, max_tiles)   # refuses huge areas first
    ms_sat = map_settings(extent, crs, width, height, [sat_layer])
    sat = render(ms_sat)
    mp = render(map_settings(extent, crs, width, height, [map_layer]))
    valid = sat[..., 3] > 0
    if not valid.any():
        raise InputError(f"the satellite layer '{sat_layer.name()}' has no pixels in this area")
    features = None
    if map_layer.type() == QgsMapLayer.VectorLayer:
        alpha = mp[..., 3:4].astype(np.float32) / 255.0
        map_rgb = (mp[..., :3] * alpha + np.array(CARTO_BACKGROUND) * (1 - alpha)).astype(np.uint8)
        features = vector_features(map_layer, crs, ms_sat.visibleExtent())
        if not features:
            raise InputError(f"the map layer '{map_layer.name()}' has no features in this area")
    else:
        valid &= mp[..., 3] > 0
        if not valid.any():
            raise InputError(f"the map layer '{map_layer.name()}' has no pixels where the satellite layer has")
        map_rgb = np.ascontiguousarray(mp[..., :3])
    return CapturedScene(np.ascontiguousarray(sat[..., :3]), map_rgb, valid, transform_of(ms_sat),
                         crs.toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED), tiles, features)
