"""Windows of the processing grid read from the inputs on demand, so that no layer is held whole.

A raster is warped onto the grid through one WarpedVRT kept open for the run; each tile reads its window
of it. Resampling is per destination pixel, so a window equals the same pixels of a whole-grid read
(tests/test_streaming.py checks this). A vector map is rendered per window with the features near it.
"""
from __future__ import annotations

import numpy as np
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ..errors import InputError
from .base import Grid, cannot_read as _cannot_read
from .maprender import render_map

STRETCH_SAMPLE_PX = 1_000_000   # non-8-bit rasters: contrast stretch from at most this many grid pixels
LABEL_MARGIN_PX = 256           # map labels are drawn around a feature's centre and may reach this far
EDGE_PAD_PX = 16
# GDAL caches every block a read touches, the warped grid's own blocks included, up to 5 % of the
# machine's memory by default: enough to hold a whole large grid. Reads here run under this cap.
GDAL_CACHE_BYTES = 64 * 2 ** 20


def _bounded_cache() -> rasterio.Env:
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)


def sub_grid(grid: Grid, x0: int, y0: int, width: int, height: int) -> Grid:
    return Grid(grid.crs, grid.window_transform(x0, y0), width, height)


def _wrapped_source(src) -> dict:
    """A geographic raster that runs past 180° (or -180°) crosses the antimeridian: GDAL maps a grid
    pixel east of it back to a longitude of -179.x, outside the raster, and would leave that half
    empty. Read with longitudes wrapped to the raster's own side of the line."""
    crs = src.crs
    if crs is None or not crs.is_geographic:
        return {}
    left, right = src.bounds.left, src.bounds.right
    centre = 180 if right > 180 else -180 if left < -180 else None
    if centre is None:
        return {}
    return {"src_crs": CRS.from_proj4(f"{crs.to_proj4()} +lon_wrap={centre}")}


class GridRaster:
    """A raster file resampled onto `grid`, read window by window: (h x w x 3 uint8 RGB, h x w valid).

    `use_mask=False` treats every pixel as valid (a map whose transparency is not coverage);
    `fourth_is_alpha`: a 4-band file's 4th band is coverage even where it is not tagged as alpha (the
    plugin's RGBA scene files; elsewhere 4 bands may be RGB + near infrared). `error(exc)` makes the
    exception for a file that cannot be read, at opening or at any later window (a damaged block)."""

    def __init__(self, path: str, grid: Grid, resampling: Resampling = Resampling.bilinear,
                 use_mask: bool = True, fourth_is_alpha: bool = False, error=None):
        self.path, self.grid, self.use_mask = path, grid, use_mask
        self.fourth_is_alpha = fourth_is_alpha
        self.error = error or (lambda exc: _cannot_read(path, exc))
        try:
            with _bounded_cache():
                self._open(resampling)
        except rasterio.errors.RasterioError as exc:
            raise self.error(exc) from None

    def _open(self, resampling: Resampling) -> None:
        self.src = rasterio.open(self.path)
        interp = self.src.colorinterp
        self.lut = None
        if self.src.count == 1 and interp[0] == ColorInterp.palette:
            self.lut = np.zeros((256, 3), np.uint8)
            for k, rgba in self.src.colormap(1).items():
                if 0 <= k < 256:
                    self.lut[k] = rgba[:3]
            resampling = Resampling.nearest      # palette indices must not be averaged
        alpha = [i + 1 for i, c in enumerate(interp) if c == ColorInterp.alpha]
        if self.fourth_is_alpha and self.src.count == 4:
            alpha = [4]
        self.bands = [i for i in range(1, self.src.count + 1) if i not in alpha][:3]
        g = self.grid
        self.alpha = alpha[0] if alpha else None
        # A float raster without a nodata tag marks its gaps with NaN (GDAL's own convention): NaN is no
        # data, not imagery. Without this an all-NaN satellite would be read as a black image.
        nan_gaps = not alpha and self.src.nodata is None and np.dtype(self.src.dtypes[0]).kind == "f"
        self.vrt = WarpedVRT(self.src, crs=g.crs, transform=g.transform, width=g.width, height=g.height,
                             resampling=resampling, **_wrapped_source(self.src),
                             add_alpha=not alpha and self.src.nodata is None and not nan_gaps,
                             **({"src_nodata": np.nan, "nodata": np.nan} if nan_gaps else {}))
        self.stretch = None if self.lut is not None or self.src.dtypes[0] == "uint8" else self._stretch()

    def _stretch(self) -> tuple[float, float]:
        """The 2-98 % range of the valid pixels over the whole grid, for rasters that are not 8-bit.
        Small grids are read whole (as before); larger ones at a decimated size, so that memory stays
        bounded. Every window is then scaled with the same range, so seams do not show."""
        g = self.grid
        f = max(1.0, (g.width * g.height / STRETCH_SAMPLE_PX) ** 0.5)
        shape = (max(1, int(g.height / f)), max(1, int(g.width / f)))
        data = self.vrt.read(self.bands, out_shape=(len(self.bands), *shape))
        valid = self._mask(out_shape=shape)
        values = data[:, valid].astype(np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return 0.0, 255.0
        return float(np.percentile(values, 2)), float(np.percentile(values, 98))

    def read(self, x0: int, y0: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            window = Window(x0, y0, width, height)
            with _bounded_cache():
                data = self.vrt.read(self.bands, window=window)
            valid = self._mask(window) if self.use_mask else np.ones((height, width), bool)
        except rasterio.errors.RasterioError as exc:   # a damaged block half-way through the run
            raise self.error(exc) from None
        if self.lut is not None:
            rgb = self.lut[data[0]]
        else:
            if self.stretch is not None:
                if data.dtype.kind == "f":       # NaN or infinite in some band: no data there either
                    finite = np.isfinite(data)
                    valid = valid & finite.all(axis=0)
                    data = np.where(finite, data, 0)
                lo, hi = self.stretch
                scale = 255.0 / (hi - lo) if hi > lo else 1.0
                data = np.clip((data.astype(np.float64) - lo) * scale, 0, 255).astype(np.uint8)
            if data.shape[0] == 1:
                data = np.repeat(data, 3, axis=0)
            elif data.shape[0] == 2:
                data = np.concatenate([data, data[:1]], axis=0)
            rgb = np.ascontiguousarray(np.moveaxis(data, 0, -1))
        rgb[~valid] = 0
        return rgb, valid

    def _mask(self, window: Window | None = None, out_shape=None) -> np.ndarray:
        try:
            with _bounded_cache():
                if self.fourth_is_alpha and self.alpha is not None:
                    return self.vrt.read(self.alpha, window=window, out_shape=out_shape) > 0
                return self.vrt.dataset_mask(window=window, out_shape=out_shape) > 0
        except rasterio.errors.RasterioError as exc:
            raise self.error(exc) from None

    def any_valid(self, rows_per_read: int = 512) -> bool:
        """Whether any grid pixel is valid: a decimated look first, then band by band to be sure."""
        g = self.grid
        if not self.use_mask:
            return True
        f = max(1.0, (g.width * g.height / STRETCH_SAMPLE_PX) ** 0.5)
        if self._mask(out_shape=(max(1, int(g.height / f)), max(1, int(g.width / f)))).any():
            return True
        for y0 in range(0, g.height, rows_per_read):
            if self._mask(Window(0, y0, g.width, min(rows_per_read, g.height - y0))).any():
                return True
        return False

    def close(self) -> None:
        self.vrt.close()
        self.src.close()


class MapWindows:
    """A vector map (features in the grid's CRS) rendered window by window, with only the features
    that reach the window (their labels included)."""

    def __init__(self, features, grid: Grid):
        self.features, self.grid = list(features), grid
        self.tree = shapely.STRtree([f.geometry for f in self.features])

    def read(self, x0: int, y0: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        # Rendered from up to a margin above and left of the window (label positions are truncated to
        # whole pixels, and only non-negative ones truncate as in a whole-grid render) to a few pixels
        # past it (OpenCV anti-aliases text differently at an image's edge).
        px, py = min(x0, LABEL_MARGIN_PX), min(y0, LABEL_MARGIN_PX)
        qx = min(self.grid.width - x0 - width, EDGE_PAD_PX)
        qy = min(self.grid.height - y0 - height, EDGE_PAD_PX)
        sub = sub_grid(self.grid, x0 - px, y0 - py, width + px + qx, height + py + qy)
        margin = LABEL_MARGIN_PX * self.grid.resolution
        b = sub.bounds
        near = self.tree.query(shapely.box(b[0] - margin, b[1] - margin, b[2] + margin, b[3] + margin))
        feats = [self.features[i] for i in sorted(near)]     # the map's own order: later paints on top
        return render_map(feats, sub)[py:py + height, px:px + width], np.ones((height, width), bool)

    def close(self) -> None:
        pass


def any_valid_both(a: GridRaster, b: GridRaster, rows_per_read: int = 512) -> bool:
    """Whether some grid pixel is valid in both rasters (read band by band: memory stays bounded)."""
    g = a.grid
    for y0 in range(0, g.height, rows_per_read):
        w = Window(0, y0, g.width, min(rows_per_read, g.height - y0))
        if (a._mask(w) & b._mask(w)).any():
            return True
    return False


def require_valid(raster: GridRaster, what: str) -> None:
    if not raster.any_valid():
        raise InputError(f"the {what} image has no valid pixels in the requested area")
