"""Capturing QGIS layers over an area onto one grid, with QGIS's own renderer.

Both layers are rendered with the same QgsMapSettings (only the layer list differs), so the two images
are aligned by construction, and the georeference is taken from the settings' visibleExtent(), which
QGIS widens to the output's aspect ratio.
"""
from __future__ import annotations

import math

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


def grid_from(ms: QgsMapSettings):
    """The backend grid of a rendered QgsMapSettings, from its visible extent."""
    from affine import Affine
    from rasterio.crs import CRS

    from ..backend.geo import Grid

    v = ms.visibleExtent()
    w, h = ms.outputSize().width(), ms.outputSize().height()
    crs = CRS.from_wkt(ms.destinationCrs().toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED))
    return Grid(crs, Affine(v.width() / w, 0.0, v.xMinimum(), 0.0, -v.height() / h, v.yMaximum()), w, h)


def vector_features(layer, crs, extent: QgsRectangle):
    """The layer's features inside `extent` as backend features in `crs` (for the map reader)."""
    import shapely

    from ..backend.vectormap import Feature

    to_map = QgsCoordinateTransform(layer.crs(), crs, QgsProject.instance())
    request = QgsFeatureRequest().setFilterRect(to_map.transformBoundingBox(extent, QgsCoordinateTransform.ReverseTransform))
    names = [f.name() for f in layer.fields()]
    out = []
    for feat in layer.getFeatures(request):
        geom = feat.geometry()
        if geom is None or geom.isEmpty():
            continue
        geom.transform(to_map)
        g = shapely.from_wkb(bytes(geom.asWkb()))
        if not g.is_valid:
            g = shapely.make_valid(g)
        props = {}
        for n, v in zip(names, feat.attributes()):
            props[n] = None if v is None or (hasattr(v, "isNull") and v.isNull()) else v
        out.append(Feature(g, props, layer.name()))
    return out


def capture_scene(sat_layer, map_layer, extent: QgsRectangle, crs, resolution_m: float,
                  tile_size: int = 768, overlap: int = 128, max_tiles: int = 256):
    """A backend Scene of the two layers over `extent` (in `crs`), tiles planned before rendering."""
    import numpy as np

    from ..backend.detect import Scene
    from ..backend.errors import InputError
    from ..backend.geo import tile_layout
    from ..backend.vectormap import VectorMap

    if sat_layer is None or not sat_layer.isValid():
        raise InputError("choose a valid satellite layer")
    if map_layer is None or not map_layer.isValid():
        raise InputError("choose a valid map layer")
    width, height, _ = plan_size(extent, crs, resolution_m)
    tiles = tile_layout(width, height, tile_size, overlap, max_tiles)   # refuses huge areas first
    ms_sat = map_settings(extent, crs, width, height, [sat_layer])
    sat = render(ms_sat)
    ms_map = map_settings(extent, crs, width, height, [map_layer])
    mp = render(ms_map)
    grid = grid_from(ms_sat)
    valid = sat[..., 3] > 0
    if not valid.any():
        raise InputError(f"the satellite layer '{sat_layer.name()}' has no pixels in this area")
    is_vector = map_layer.type() == QgsMapLayer.VectorLayer
    if is_vector:
        alpha = mp[..., 3:4].astype(np.float32) / 255.0
        map_rgb = (mp[..., :3] * alpha + np.array(CARTO_BACKGROUND) * (1 - alpha)).astype(np.uint8)
        feats = vector_features(map_layer, crs, ms_sat.visibleExtent())
        vmap = VectorMap(feats, grid.crs) if feats else None
        if vmap is None:
            raise InputError(f"the map layer '{map_layer.name()}' has no features in this area")
    else:
        valid &= mp[..., 3] > 0
        if not valid.any():
            raise InputError(f"the map layer '{map_layer.name()}' has no pixels where the satellite layer has")
        map_rgb, vmap = np.ascontiguousarray(mp[..., :3]), None
    sat_rgb = np.ascontiguousarray(sat[..., :3])
    return Scene(grid, sat_rgb, map_rgb, valid, tiles, vmap)
