"""Polygons to pixels and pixels to polygons on a grid, with GDAL's own rasterisation (rasterio).

Only the backend's worker process runs this (the CLI, or `run-scene` for the plugin). QGIS's process
must not: it holds QGIS's GDAL and GEOS, and mixing them with the copies in the rasterio and shapely
wheels returns empty rasters or crashes there. The QGIS side imports only `backend.contract`,
`backend.geo.tiles`, `backend.output.schema` and `backend.errors` (tests/test_plugin.py checks that
loading the plugin imports neither rasterio nor shapely).
"""
from __future__ import annotations

import numpy as np
import shapely
import shapely.geometry
from affine import Affine
from rasterio import features


def rasterize(geoms, shape: tuple[int, int], transform: Affine) -> np.ndarray:
    """Boolean mask of the pixels whose centres fall inside any of `geoms` (GDAL's rule)."""
    shapes = [(g, 1) for g in geoms if g is not None and not g.is_empty]
    if not shapes:
        return np.zeros(shape, bool)
    return features.rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="uint8") > 0


def polygons(labels: np.ndarray, transform: Affine, origin: tuple[int, int] = (0, 0)):
    """(polygon, label) for every label > 0 of a 4-connected label image, in label order, edges on
    pixel borders and holes kept, in map coordinates. `origin` (row, col): where `labels` lies in
    `transform`'s pixels (a window's polygons are then exactly the whole image's)."""
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    t = transform * Affine.translation(origin[1], origin[0])
    parts: dict[int, list] = {}
    for geom, value in features.shapes(labels, mask=labels > 0, connectivity=4, transform=t):
        parts.setdefault(int(value), []).append(shapely.geometry.shape(geom))
    for k in sorted(parts):
        yield (parts[k][0] if len(parts[k]) == 1 else shapely.union_all(parts[k])), k
