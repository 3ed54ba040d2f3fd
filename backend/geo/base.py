"""The processing grid's type and the message for an unreadable file: the bottom of backend.geo's
imports (grid, window and maprender all build on it; it imports none of them)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from affine import Affine
from rasterio.crs import CRS

from ..errors import InputError

TABLE_EXTENSIONS = {".csv", ".tsv", ".txt", ".xls", ".xlsx", ".ods", ".dbf"}


@dataclass(frozen=True)
class Grid:
    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def resolution(self) -> float:
        return abs(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        t = self.transform
        return (t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f)

    def window_transform(self, x0: int, y0: int) -> Affine:
        return self.transform * Affine.translation(x0, y0)


def cannot_read(path: str, exc: Exception, what: str = "raster") -> InputError:
    ext = os.path.splitext(path)[1].lower()
    if ext in TABLE_EXTENSIONS:
        return InputError(f"{path} is a table ({ext[1:].upper()}), not a map or image: give a raster "
                          "(GeoTIFF) or a vector map (GeoPackage, GeoJSON, Shapefile)")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return InputError(f"cannot read {what} {path} ({first}): the file is damaged, truncated or not "
                      "an image GDAL reads; copy or export it again")


# --preview and --truth look at the whole area; above this many pixels they look at every k-th pixel
# (k the smallest step that fits), so the driver's memory stays bounded however large the area.
WHOLE_AREA_MAX_PIXELS = 3000 * 3000


def sample_step(grid: Grid, max_pixels: int | None = None) -> int:
    """The smallest k such that every k-th pixel of each row and column fits `max_pixels`."""
    limit = max_pixels or WHOLE_AREA_MAX_PIXELS
    k = 1
    while -(-grid.width // k) * -(-grid.height // k) > limit:
        k += 1
    return k


def sampled_grid(grid: Grid, k: int) -> Grid:
    """The grid of every k-th pixel: its pixel (j, i) has the centre of `grid`'s pixel (j*k, i*k), so a
    raster drawn on it (pixel-centre rule) equals `grid`'s raster sliced [::k, ::k]."""
    if k == 1:
        return grid
    t = grid.transform * Affine.translation(0.5 - k / 2, 0.5 - k / 2) * Affine.scale(k)
    return Grid(grid.crs, t, -(-grid.width // k), -(-grid.height // k))
