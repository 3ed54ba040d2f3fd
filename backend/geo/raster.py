"""Polygons to pixels and pixels to polygons on a grid, without GDAL.

Inside QGIS two GDAL libraries can share one process (QGIS's own and the one bundled in the rasterio
wheel, or QGIS's GEOS and the one in the shapely wheel): functions that exist in both resolve to
QGIS's copy, newer ones to the wheel's, and mixing them returns empty rasters (rasterio's
rasterisation) or crashes (shapely's contains_xy). These two functions do the same jobs with numpy and
long-standing GEOS calls only, with GDAL's conventions: a pixel belongs to a polygon when its centre
lies inside it, and polygons follow pixel edges exactly.
"""
from __future__ import annotations

import numpy as np
import shapely
from affine import Affine
from scipy import ndimage


def _rings(geom) -> list[np.ndarray]:
    """Exterior and interior rings of every polygon part, as (N, 2) coordinate arrays."""
    out = []
    for part in shapely.get_parts(geom):
        if part.geom_type == "Polygon":
            out.append(shapely.get_coordinates(part.exterior))
            out.extend(shapely.get_coordinates(r) for r in part.interiors)
        elif part.geom_type in ("MultiPolygon", "GeometryCollection"):
            out.extend(_rings(part))
    return out


def rasterize(geoms, shape: tuple[int, int], transform: Affine) -> np.ndarray:
    """Boolean mask of the pixels whose centres fall inside any of `geoms` (north-up transforms).

    An even-odd scanline fill over pixel-centre rows, in numpy: the rule GDAL uses, with no call into
    GEOS beyond reading coordinates (see the module docstring for why).
    """
    h, w = shape
    diff = np.zeros((h, w + 1), np.int32)
    inv = ~transform
    for g in geoms:
        if g is None or g.is_empty:
            continue
        edges = []
        for ring in _rings(g):
            cols, rows = inv * (ring[:, 0], ring[:, 1])
            edges.append(np.column_stack([cols[:-1], rows[:-1], cols[1:], rows[1:]]))
        if not edges:
            continue
        e = np.concatenate(edges)
        e = e[e[:, 1] != e[:, 3]]                       # horizontal edges never cross a centre row
        if len(e) == 0:
            continue
        lo, hi = np.minimum(e[:, 1], e[:, 3]), np.maximum(e[:, 1], e[:, 3])
        r0 = max(0, int(np.floor(lo.min() - 0.5)))
        r1 = min(h, int(np.ceil(hi.max() + 0.5)))
        if r0 >= r1:
            continue
        yc = np.arange(r0, r1) + 0.5
        active = (lo[:, None] <= yc[None, :]) & (hi[:, None] > yc[None, :])     # half-open: no double hits
        ei, ri = np.nonzero(active)
        if len(ei) == 0:
            continue
        x0, y0, x1, y1 = e[ei, 0], e[ei, 1], e[ei, 2], e[ei, 3]
        xs = x0 + (yc[ri] - y0) * (x1 - x0) / (y1 - y0)
        order = np.lexsort((xs, ri))                      # by row, then x: crossings pair up in order
        ri, xs = ri[order], xs[order]
        rows, xa, xb = ri[0::2] + r0, xs[0::2], xs[1::2]
        ca = np.clip(np.ceil(xa - 0.5), 0, w).astype(np.int64)   # first centre at or right of xa
        cb = np.clip(np.ceil(xb - 0.5), 0, w).astype(np.int64)   # first centre at or right of xb
        keep = cb > ca
        np.add.at(diff, (rows[keep], ca[keep]), 1)
        np.add.at(diff, (rows[keep], cb[keep]), -1)
    return np.cumsum(diff, axis=1)[:, :w] > 0


def polygons(labels: np.ndarray, transform: Affine, origin: tuple[int, int] = (0, 0)):
    """(polygon, label) for every label > 0 of a 4-connected label image, edges on pixel borders and
    holes kept, in map coordinates. `origin` (row, col): where `labels` lies in `transform`'s pixels
    (a window's polygons are then exactly the whole image's)."""
    params = [transform.a, transform.b, transform.d, transform.e, transform.c, transform.f]
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        sub = labels[sl] == k
        r0, c0 = sl[0].start + origin[0], sl[1].start + origin[1]
        edges = np.diff(np.pad(sub, ((0, 0), (1, 1))).astype(np.int8), axis=1)
        rs, cs = np.nonzero(edges == 1)     # run starts, row-major
        _, ce = np.nonzero(edges == -1)     # run ends (exclusive), paired in the same order
        runs = shapely.box(c0 + cs, r0 + rs, c0 + ce, r0 + rs + 1)
        poly = shapely.union_all(runs)
        yield shapely.affinity.affine_transform(poly, params), k
