"""Tiles over a grid: plain Python, so that the QGIS plugin can plan a run without heavy imports."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError

DEFAULT_TILE = 768
DEFAULT_OVERLAP = 128
# A limit for scripts, not a memory guard: tiles are read and merged window by window, so memory does
# not grow with the area. Time does: see estimate_seconds.
DEFAULT_MAX_TILES = 20_000
# Seconds per 768 px tile on this project's 2-core CPU machine, measured idle (2026-12-03) with the map
# read at its own pixels: Porto's Carto raster, 9 tiles at 1 m in 7.1 s; the sample at 0.25 m, 70 tiles.
# Engines not measured here have no entry (the progress line's rate tells then).
SECONDS_PER_TILE = {"mapreader": 0.6}
# A vector map adds time by its features (rendered per tile, matched, street blocks polygonised): Porto's
# OpenStreetMap extract, 9 tiles and 19,691 features in 6.0 s, 2 tiles and 7,948 features in 1.8 s (the
# estimate is 1.5x both); 100,000 features took minutes in the issue-20 sweep on a loaded machine.
SECONDS_PER_MAP_FEATURE = {"mapreader": 0.0002}


@dataclass(frozen=True)
class Tile:
    row: int
    col: int
    x0: int
    y0: int
    width: int
    height: int

    @property
    def id(self) -> str:
        return f"tile_{self.row}_{self.col}"

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.height), slice(self.x0, self.x0 + self.width)


def tile_layout(width: int, height: int, size: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                max_tiles: int = DEFAULT_MAX_TILES) -> list[Tile]:
    """Overlapping tiles of at most `size` px covering the grid; edge tiles shift inward to stay full."""
    if size < 32:
        raise InputError(f"tile size {size} is too small: use at least 32 px")
    if not 0 <= overlap < size // 2 + 1:
        raise InputError(f"tile overlap {overlap} must be between 0 and half the tile size ({size // 2})")

    def offsets(n: int) -> list[int]:
        if n <= size:
            return [0]
        step = size - overlap
        count = math.ceil((n - overlap) / step)
        return sorted({min(i * step, n - size) for i in range(count)})

    xs, ys = offsets(width), offsets(height)
    if len(xs) * len(ys) > max_tiles:
        raise InputError(
            f"the area needs {len(xs) * len(ys)} tiles of {size} px ({width} x {height} px at this "
            f"resolution), more than the limit of {max_tiles}. Choose a smaller area, a coarser "
            "resolution, or raise the limit (--max-tiles).")
    tw, th = min(size, width), min(size, height)
    return [Tile(r, c, x, y, tw, th) for r, y in enumerate(ys) for c, x in enumerate(xs)]


def estimate_seconds(n_tiles: int, reasoner_kind: str = "mapreader", map_features: int = 0) -> float | None:
    """About how long `n_tiles` default-size tiles take with a reasoner kind ("mapreader", "qwen",
    "openai") and a vector map of `map_features` features (0 for a raster map), or None where this
    machine has no measurement (the progress line's rate tells then)."""
    per_tile = SECONDS_PER_TILE.get(reasoner_kind)
    if per_tile is None:
        return None
    return n_tiles * per_tile + map_features * SECONDS_PER_MAP_FEATURE.get(reasoner_kind, 0.0)
