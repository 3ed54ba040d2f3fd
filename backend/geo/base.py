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
