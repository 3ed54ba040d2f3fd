"""Georeferenced images: one processing grid, rasters resampled onto it, and tiles over it.

A `Grid` is the single source of truth for georeferencing: every array the pipeline handles is a window
of it, and its affine transform maps pixel corners (col, row) to map coordinates in its CRS.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import transform_bounds

from ..errors import InputError
from .base import TABLE_EXTENSIONS, Grid, cannot_read as _cannot_read, sampled_grid  # noqa: F401
from .tiles import DEFAULT_MAX_TILES, DEFAULT_OVERLAP, DEFAULT_TILE, Tile, tile_layout  # noqa: F401

log = logging.getLogger(__name__)

DEFAULT_RESOLUTION = None     # about 1 m per pixel, in the processing CRS's own units (see metre_in)
MIN_GRID_PX = 16              # a grid narrower than this is a resolution mistake, not a useful request


def utm_crs_for(lon: float, lat: float) -> CRS:
    """The WGS 84 / UTM zone CRS holding a geographic point."""
    zone = min(60, max(1, int(math.floor((lon + 180.0) / 6.0)) + 1))
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def parse_crs(value) -> CRS:
    try:
        return CRS.from_user_input(value)
    except Exception as exc:  # rasterio raises CRSError; user text can be anything
        raise InputError(f"unknown CRS {value!r}: give an EPSG code such as EPSG:32650 ({exc})") from None


def metre_in(crs: CRS) -> float:
    """One metre of ground in `crs` units (degrees for a geographic CRS, feet for a US-feet CRS)."""
    from .vectormap import units_per_metre

    return units_per_metre(crs)


def raster_footprint(path: str) -> tuple[CRS, tuple[float, float, float, float]]:
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise InputError(
                    f"{path} has no coordinate reference system. Georeference it first "
                    "(QGIS Georeferencer, or `gdal_edit.py -a_srs EPSG:XXXX -a_ullr ...`).")
            if src.transform == Affine.identity() and not src.gcps[0]:
                raise InputError(f"{path} has a CRS but no geotransform; georeference it first.")
            return src.crs, tuple(src.bounds)
    except rasterio.errors.RasterioIOError as exc:
        raise _cannot_read(path, exc) from None


def default_crs(crs: CRS, bounds) -> CRS:
    """The source CRS when it is projected, else the UTM zone of the area's centre."""
    if crs.is_projected:
        return crs
    lon_lat = transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21)
    return utm_crs_for((lon_lat[0] + lon_lat[2]) / 2, (lon_lat[1] + lon_lat[3]) / 2)


def _crosses_antimeridian(boxes) -> bool:
    """Longitude/latitude boxes of inputs that lie across 180°: a box past ±180 or inverted, or a box
    spanning more than half the globe (features on both sides, -179.9 and 179.9) with another input
    at the line."""
    if any(b[0] > b[2] or b[0] < -180 or b[2] > 180 for b in boxes):
        return True
    wide = [b for b in boxes if b[2] - b[0] > 180]
    return bool(wide) and any(b[0] < -179 or b[2] > 179 for b in boxes if b not in wide)


def plan_grid(footprints: list[tuple[CRS, tuple]], crs: CRS | None = None,
              resolution: float = DEFAULT_RESOLUTION, bbox=None, bbox_crs=None) -> Grid:
    """One north-up grid over the sources' common area (or `bbox`), at `resolution` CRS units/pixel
    (default: about 1 m in the CRS's units)."""
    crs = crs or default_crs(*footprints[0])
    unit = crs.linear_units or "units" if crs.is_projected else "degrees"
    if resolution is None:
        resolution = metre_in(crs)
    elif resolution <= 0 or not math.isfinite(resolution):
        raise InputError(f"--resolution must be a positive number of CRS {unit} per pixel, got {resolution}")
    if bbox is not None and not all(math.isfinite(v) for v in bbox):
        raise InputError(f"--bbox {' '.join(str(v) for v in bbox)} is not four finite numbers: give "
                         "MINX MINY MAXX MAXY")
    boxes = [transform_bounds(c, crs, *b, densify_pts=21) for c, b in footprints]
    if crs.is_geographic and _crosses_antimeridian(boxes):
        # In longitude/latitude such an area is two pieces, at both ends of the grid's x axis.
        raise InputError(f"the inputs cross the antimeridian (180° longitude), which a grid in {crs.to_string()} "
                         "cannot hold: leave --crs out (the UTM zone of the area is used) or give a projected "
                         "--crs that covers both sides")
    minx = max(b[0] for b in boxes)
    miny = max(b[1] for b in boxes)
    maxx = min(b[2] for b in boxes)
    maxy = min(b[3] for b in boxes)
    flat = [i for i, b in enumerate(boxes) if not (b[0] < b[2] and b[1] < b[3])]
    if flat:      # only a vector map's features can span no area: rasters always have some
        b = boxes[flat[0]]
        raise InputError(f"the {'map' if flat[0] else 'satellite'}'s features cover no area (they span "
                         f"{b[2] - b[0]:.6g} x {b[3] - b[1]:.6g} {crs.linear_units if crs.is_projected else 'degrees'}"
                         ": a single point, or points on one line), so they cannot say where to look: give a "
                         "map with the area's features (streets, buildings, land use), or a raster map")
    if minx >= maxx or miny >= maxy:
        raise InputError("the satellite and map do not overlap: check that both cover the same place and "
                         "that their CRSs are set correctly")
    if bbox is not None:
        if bbox[0] >= bbox[2] or bbox[1] >= bbox[3]:
            raise InputError(f"--bbox {tuple(bbox)} is empty: give MINX MINY MAXX MAXY (min before max)")
        try:
            bx = transform_bounds(bbox_crs or crs, crs, *bbox, densify_pts=21)
        except Exception as exc:   # PROJ refuses coordinates outside the CRS's area
            raise InputError(f"--bbox {tuple(bbox)} cannot be placed in {(bbox_crs or crs).to_string()} "
                             f"({exc}); check --bbox-crs") from None
        if not all(math.isfinite(v) for v in bx) or bx[0] >= bx[2] or bx[1] >= bx[3]:
            raise InputError(f"--bbox {tuple(bbox)} is outside the area {(bbox_crs or crs).to_string()} "
                             "covers; check --bbox-crs")
        area = (minx, miny, maxx, maxy)
        minx, miny = max(minx, bx[0]), max(miny, bx[1])
        maxx, maxy = min(maxx, bx[2]), min(maxy, bx[3])
        if minx >= maxx or miny >= maxy:
            hint = ""
            if bbox_crs is None and crs.is_projected and -180 <= bbox[0] <= 180 and -180 <= bbox[2] <= 180 \
                    and -90 <= bbox[1] <= 90 and -90 <= bbox[3] <= 90:
                hint = (f"; it looks like longitude/latitude while the processing CRS is {crs.to_string()}: "
                        "add --bbox-crs EPSG:4326")
            raise InputError(f"--bbox {tuple(bbox)} does not intersect the area both inputs cover "
                             f"({', '.join(f'{v:.6g}' for v in area)} in {crs.to_string()}){hint}")
    # Snap the origin to whole pixels of the resolution so that repeated runs share one lattice.
    minx = math.floor(minx / resolution) * resolution
    maxy = math.ceil(maxy / resolution) * resolution
    width = max(1, int(math.ceil((maxx - minx) / resolution - 1e-9)))
    height = max(1, int(math.ceil((maxy - miny) / resolution - 1e-9)))
    if min(width, height) < MIN_GRID_PX:
        metre = metre_in(crs)
        size = f"{(maxx - minx) / metre:,.0f} x {(maxy - miny) / metre:,.0f} m"
        if resolution / metre > 4:
            raise InputError(
                f"--resolution {resolution:g} {unit}/px ({resolution / metre:,.3g} m per pixel) leaves only "
                f"{width} x {height} px for an area of {size}: give a finer resolution (1 m is {metre:.3g} "
                f"{unit}; leave --resolution out for that default)")
        if bbox is not None:
            raise InputError(f"--bbox covers only {size} ({width} x {height} px) of the inputs: choose a larger area")
        raise InputError(f"the satellite and map overlap on only {size} ({width} x {height} px): check that "
                         "both cover the same place")
    return Grid(crs, Affine(resolution, 0.0, minx, 0.0, -resolution, maxy), width, height)


def read_on_grid(path: str, grid: Grid, resampling: Resampling = Resampling.bilinear
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A raster resampled onto the whole of `grid`: (H x W x 3 uint8 RGB, H x W bool valid-pixel mask).
    For small grids (tests, previews); detection reads tile windows through `window.GridRaster`."""
    from .window import GridRaster   # window builds on base, not on this module

    raster = GridRaster(path, grid, resampling)
    try:
        return raster.read(0, 0, grid.width, grid.height)
    finally:
        raster.close()
