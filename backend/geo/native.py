"""A raster map read at its own pixels, in its own CRS, wherever the processing grid lies.

A rendered map's one-pixel lines and label strokes survive a resampling onto another grid or not
depending on where the grid's pixels fall (OSM Carto at zoom 17 has pixels of 0.7-0.9 m of ground; a
1 m grid drops some of them, a 0.25 m grid repeats them). The map reader reads the map's own pixels,
or every k-th of them on a lattice anchored to the map's own origin for a map much finer than it needs,
so the same place reads the same on any grid; its result is then warped onto the grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from pyproj import Geod, Transformer
from rasterio.warp import transform_bounds

_GEOD = Geod(ellps="WGS84")


@dataclass
class NativeMap:
    """A raster map's own pixel lattice (every `step`-th map pixel, anchored to the map's origin) and
    the part of it that covers the requested area (`window`: lattice columns and rows c0, r0, c1, r1)."""
    raster: object            # backend.geo.window.GridRaster (its open file, bands, palette, stretch)
    transform: Affine         # of the lattice, in the map's CRS (lattice pixel (0, 0) is map pixel (0, 0))
    crs: object
    pixel_m: float            # metres of ground per lattice pixel
    map_pixel_m: float        # metres of ground per pixel of the map itself
    step: int
    window: tuple[int, int, int, int]
    size: tuple[int, int]     # the lattice's width and height
    lock: object = None

    def read(self, c0: int, r0: int, c1: int, r1: int) -> tuple[np.ndarray, Affine]:
        """RGB of lattice columns c0..c1 and rows r0..r1 (clipped to the map), and its transform."""
        c0, r0 = max(0, c0), max(0, r0)
        c1, r1 = min(self.size[0], c1), min(self.size[1], r1)
        k = self.step
        src = self.raster.src
        window = rasterio.windows.Window(c0 * k, r0 * k, min(src.width, c1 * k) - c0 * k,
                                         min(src.height, r1 * k) - r0 * k)
        if self.lock is not None:
            with self.lock:
                data = src.read(self.raster.bands, window=window)
        else:
            data = src.read(self.raster.bands, window=window)
        data = data[:, ::k, ::k]
        return _rgb(self.raster, data), self.transform * Affine.translation(c0, r0)


def _rgb(raster, data: np.ndarray) -> np.ndarray:
    lut = getattr(raster, "lut", None)
    if lut is not None:
        return lut[data[0]]
    stretch = getattr(raster, "stretch", None)
    if stretch is not None:
        lo, hi = stretch
        scale = 255.0 / (hi - lo) if hi > lo else 1.0
        data = np.clip((data.astype(np.float64) - lo) * scale, 0, 255).astype(np.uint8)
    if data.shape[0] < 3:
        data = np.concatenate([data] * 3, axis=0)[:3]
    return np.ascontiguousarray(np.moveaxis(data, 0, -1)).astype(np.uint8, copy=False)


def ground_pixel_m(transform: Affine, crs, col: float, row: float) -> float:
    """Metres of ground per pixel around pixel (col, row): the mean of its width and height on the
    WGS 84 ellipsoid (in Web Mercator a 1.19 m pixel is 0.9 m of ground at 41°N)."""
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    pts = [transform * (col, row), transform * (col + 1, row), transform * (col, row + 1)]
    (x0, x1, x2), (y0, y1, y2) = zip(*pts)
    lon, lat = to_ll.transform([x0, x1, x2], [y0, y1, y2])
    w = _GEOD.inv(lon[0], lat[0], lon[1], lat[1])[2]
    h = _GEOD.inv(lon[0], lat[0], lon[2], lat[2])[2]
    return float((w + h) / 2)


def read_native(raster, grid_crs, bounds, work_m: float, lock=None) -> NativeMap | None:
    """The lattice of `raster`'s (a backend.geo.window.GridRaster) own pixels, or of every k-th of them
    for a map finer than `work_m` (k = round(work_m / map pixel), anchored to the map's origin), with
    the window that covers `bounds` (in `grid_crs`). None where the file cannot be read so (no CRS, a
    rotated or GCP georeference): the caller reads the grid's pixels instead. Nothing is read yet."""
    src = getattr(raster, "src", None)
    if src is None or src.crs is None or src.transform.b or src.transform.d or src.transform.is_identity:
        return None
    t = src.transform
    try:
        b = transform_bounds(grid_crs, src.crs, *bounds, densify_pts=21)
    except Exception:      # PROJ refuses the area: read the grid's pixels instead
        return None
    inv = ~t
    cols = [(inv * (x, y))[0] for x in (b[0], b[2]) for y in (b[1], b[3])]
    rows = [(inv * (x, y))[1] for x in (b[0], b[2]) for y in (b[1], b[3])]
    c0, c1 = max(0, math.floor(min(cols))), min(src.width, math.ceil(max(cols)))
    r0, r1 = max(0, math.floor(min(rows))), min(src.height, math.ceil(max(rows)))
    if c0 >= c1 or r0 >= r1:
        return None
    map_px = ground_pixel_m(t, src.crs, (c0 + c1) / 2, (r0 + r1) / 2)
    k = max(1, int(round(work_m / map_px))) if map_px > 0 else 1
    return NativeMap(raster, t * Affine.scale(k), src.crs, map_px * k, map_px, k,
                     (c0 // k, r0 // k, -(-c1 // k), -(-r1 // k)), (-(-src.width // k), -(-src.height // k)), lock)
