"""A whole request: a grid over the inputs, tiles read and run one window at a time, masks merged
across seams into entities in a band (seams.py), finished tiles kept for --resume (resume.py)."""
from __future__ import annotations

import functools
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np
import shapely
from rasterio.enums import Resampling
from scipy import ndimage

from ..errors import InputError
from ..geo import grid as geo
from ..geo.raster import polygons
from ..geo.vectormap import VectorMap, is_vector_path, units_per_metre
from ..geo.window import GridRaster, MapWindows, require_valid
from .resume import TileStore, file_identity, request_key
from .seams import BandMerger, Entity, TileRecord, entity_attrs
from .stages import (CancelCheck, PipelineOptions, Progress, SegmenterSession, TileResult, check_cancel,
                     dump_tile, make_view, run_batch)

log = logging.getLogger(__name__)

__all__ = ["Scene", "Entity", "Detection", "load_scene", "detect", "vectorise", "drop_small"]


@dataclass
class Scene:
    """The grid, its tiles and where each tile's pixels come from.

    A scene from `load_scene` reads every tile's window from the files when it is processed
    (`sources`); one built from whole-area arrays (`satellite`, `map_image`, `valid`) slices them."""
    grid: geo.Grid
    satellite: np.ndarray | None
    map_image: np.ndarray | None
    valid: np.ndarray | None
    tiles: list[geo.Tile]
    map_features: VectorMap | None = None
    sources: tuple | None = None            # (satellite GridRaster, map GridRaster | MapWindows, map masks)
    inputs: dict = field(default_factory=dict)   # what identifies the inputs, for --resume
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def read(self, tile: geo.Tile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(satellite RGB, map RGB, valid) of one tile."""
        if self.sources is None:
            rows, cols = tile.slices
            return self.satellite[rows, cols], self.map_image[rows, cols], self.valid[rows, cols]
        sat_src, map_src, map_masks = self.sources
        with self._lock:          # GDAL dataset handles are not shared between threads
            sat, valid = sat_src.read(tile.x0, tile.y0, tile.width, tile.height)
            map_rgb, map_valid = map_src.read(tile.x0, tile.y0, tile.width, tile.height)
        return sat, map_rgb, (valid & map_valid) if map_masks else valid

    def map_around(self, tile: geo.Tile, margin: int) -> tuple[np.ndarray, int, int]:
        """The map's pixels of `tile` grown by up to `margin` on every side (within the grid), and
        the tile's column and row in them."""
        x0, y0 = max(0, tile.x0 - margin), max(0, tile.y0 - margin)
        x1 = min(self.grid.width, tile.x0 + tile.width + margin)
        y1 = min(self.grid.height, tile.y0 + tile.height + margin)
        if self.sources is None:
            return self.map_image[y0:y1, x0:x1], tile.x0 - x0, tile.y0 - y0
        with self._lock:
            rgb, _ = self.sources[1].read(x0, y0, x1 - x0, y1 - y0)
        return rgb, tile.x0 - x0, tile.y0 - y0

    def whole(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The whole area at once: for a preview image only (memory grows with the area)."""
        if self.sources is None:
            return self.satellite, self.map_image, self.valid
        whole = geo.Tile(0, 0, 0, 0, self.grid.width, self.grid.height)
        return self.read(whole)

    def close(self) -> None:
        for src in self.sources or ():
            if hasattr(src, "close"):
                src.close()


def load_scene(satellite: str, map_path: str, *, crs=None, resolution: float = geo.DEFAULT_RESOLUTION,
               bbox=None, bbox_crs=None, tile_size: int = geo.DEFAULT_TILE,
               overlap: int = geo.DEFAULT_OVERLAP, max_tiles: int = geo.DEFAULT_MAX_TILES) -> Scene:
    """The grid over both inputs and its tiles; pixels are read per tile later (see Scene.read)."""
    for p, what in ((satellite, "satellite"), (map_path, "map")):
        if not p or not os.path.exists(p):
            raise InputError(f"{what} file {p!r} does not exist")
    footprints = [geo.raster_footprint(satellite)]
    vector = is_vector_path(map_path)
    if vector:
        target = crs or geo.default_crs(*footprints[0])
        vmap = VectorMap.read(map_path, target)
        vb = shapely.total_bounds([f.geometry for f in vmap.features])
        footprints.append((target, tuple(vb)))
    else:
        vmap = None
        footprints.append(geo.raster_footprint(map_path))
    grid = geo.plan_grid(footprints, crs=crs, resolution=resolution, bbox=bbox, bbox_crs=bbox_crs)
    tiles = geo.tile_layout(grid.width, grid.height, tile_size, overlap, max_tiles)
    sat = GridRaster(satellite, grid)
    try:
        require_valid(sat, "satellite")
        # vmap is already in the grid's CRS (target)
        map_src = MapWindows(vmap.features, grid) if vector else GridRaster(map_path, grid, Resampling.nearest)
        if not vector:
            require_valid(map_src, "map")
    except BaseException:
        sat.close()
        raise
    inputs = {"satellite": file_identity(satellite), "map": file_identity(map_path)}
    return Scene(grid, None, None, None, tiles, vmap, (sat, map_src, not vector), inputs)


@dataclass
class Detection:
    grid: geo.Grid
    mask: np.ndarray | None          # the whole-area mask, only when detect(keep_mask=True)
    entities: list[Entity]
    tiles: list[TileResult] = field(default_factory=list)
    resumed: int = 0                 # tiles read back from the tile folder instead of computed


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def detect(scene: Scene, query: str, reasoner, segmenter, task: str | None = None,
           progress: Progress | None = None, cancel: CancelCheck | None = None,
           dump_dir: str | None = None, keep_tiles: bool = False, options: PipelineOptions | None = None,
           batch_size: int = 1, concurrency: int | None = None, keep_mask: bool = False,
           tiles_dir: str | None = None, resume: bool = False) -> Detection:
    """All tiles through both stages, merged across seams into entities.

    Each tile's window is read when the tile runs and merged as soon as its tile row is complete, so
    memory does not grow with the area (`keep_mask` and `keep_tiles` keep whole-area results on
    request). `tiles_dir` keeps every finished tile on disk; with `resume`, tiles found there are read
    back instead of computed (the caller removes the folder once the output is written).

    `batch_size` tiles go through each stage together (one batched `generate` in process). A reasoner
    that talks to a server (`concurrency` > 1, default: the reasoner's own) runs that many tiles at
    once in threads instead, each tile's stage 2 starting as soon as its coarse mask is rendered;
    the segmenter is shared under a lock."""
    grid = scene.grid
    if hasattr(reasoner, "prepare"):   # its refusals come before the tile folder is created
        reasoner.prepare(query, task, scene.map_features)
    store = None
    if tiles_dir:
        store = TileStore(tiles_dir, request_key(
            inputs=scene.inputs, crs=grid.crs.to_wkt(), transform=list(grid.transform)[:6],
            size=[grid.width, grid.height], tiles=[[t.x0, t.y0, t.width, t.height] for t in scene.tiles],
            query=query, task=task, reasoner=reasoner.name, segmenter=segmenter.name,
            generation=getattr(reasoner, "generation_record", lambda: None)(),
            input_size=list(reasoner.input_size(scene.tiles[0].height, scene.tiles[0].width)) if scene.tiles else None,
            options=vars(options) if options else None), resume)
    # The output's `segmenter` says what drew the outlines: "map/grabcut" where the reader's own were
    # taken, and the segmenter cut only the places the map has as points.
    from_map = (options or PipelineOptions()).outline == "map" and getattr(reasoner, "reads_outlines", False)
    drawn_by = f"map/{segmenter.name}" if from_map else segmenter.name
    merger = BandMerger(grid, scene.tiles, query, task, reasoner.name, drawn_by,
                        getattr(reasoner, "min_area_m2", 0.0), keep_mask)
    n = max(len(scene.tiles), 1)
    done = [0]
    lock = threading.Lock()
    kept: list[tuple[geo.Tile, TileResult]] = []

    def finished(rec: TileRecord, computed: bool) -> None:
        with lock:
            if store is not None and computed:
                store.save(rec)
            merger.add(rec)
            done[0] += 1

    todo = []
    resumed = 0
    for tile in scene.tiles:
        rec = store.load(tile) if store is not None and resume else None
        if rec is not None:
            finished(rec, computed=False)
            resumed += 1
        else:
            todo.append(tile)
    if resumed:
        log.info("resumed %d finished tile(s) from %s", resumed, tiles_dir)
        if progress:
            progress(done[0] / n, f"resumed {resumed} finished tile(s) ({done[0]}/{n})")
    session = SegmenterSession(segmenter)

    def run(tiles: list[geo.Tile]) -> None:
        check_cancel(cancel)
        label = tiles[0].id if len(tiles) == 1 else f"{tiles[0].id}..{tiles[-1].id}"

        def on_stage(name, steps=iter(range(4))):
            if progress:
                progress((done[0] + next(steps, 3) / 4 * len(tiles)) / n, f"{label} ({done[0] + len(tiles)}/{n}): {name}")

        views, windows = [], []
        for tile in tiles:
            sat, map_rgb, valid = scene.read(tile)
            if valid.any():
                views.append(make_view(map_rgb, sat, query, reasoner, task=task,
                                       transform=grid.window_transform(tile.x0, tile.y0), crs=grid.crs,
                                       tile_id=tile.id, map_features=scene.map_features,
                                       map_around=None if scene.map_features is not None
                                       else functools.partial(scene.map_around, tile)))
                windows.append((tile, valid))
            else:
                log.info("%s has no valid pixels; skipped", tile.id)
                finished(TileRecord.empty(tile), computed=True)
            del sat, map_rgb
        results = run_batch(views, reasoner, session, options, cancel, on_stage) if views else []
        for (tile, valid), result in zip(windows, results):
            if dump_dir:
                dump_tile(result, dump_dir, {"row": tile.row, "col": tile.col, "x0": tile.x0, "y0": tile.y0,
                                             "tile_transform": list(grid.window_transform(tile.x0, tile.y0).to_gdal())})
            if keep_tiles:
                kept.append((tile, result))
            finished(TileRecord.from_result(tile, result, valid), computed=True)
        if progress:
            progress(done[0] / n, f"{label} done ({done[0]}/{n})")

    workers = concurrency if concurrency is not None else getattr(reasoner, "concurrency", 1)
    if workers > 1 and len(todo) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(run, [t]) for t in todo]
            try:
                for f in as_completed(futures):
                    f.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    else:
        for tiles in _batches(todo, max(1, batch_size)):
            run(tiles)
    if progress:
        progress(1.0, "merging tiles")
    entities = merger.finish()
    kept.sort(key=lambda item: (item[0].row, item[0].col))
    return Detection(grid, merger.mask, entities, [r for _, r in kept], resumed)


def drop_small(mosaic: np.ndarray, grid: geo.Grid, min_area_m2: float) -> np.ndarray:
    """The merged mask without regions under the reasoner's minimum place area (its `min_area_m2`):
    slivers where a tile's edge cut a place, never whole places of that size."""
    if not min_area_m2 or not mosaic.any():
        return mosaic
    labels, n = ndimage.label(mosaic)
    min_px = min_area_m2 * units_per_metre(grid.crs) ** 2 / grid.resolution ** 2
    small = np.bincount(labels.ravel(), minlength=n + 1) < min_px
    small[0] = False
    if small.any():
        log.info("dropped %d region(s) under %g m2", int(small.sum()), min_area_m2)
    return mosaic & ~small[labels]


def vectorise(mosaic: np.ndarray, grid: geo.Grid, per_tile, query: str, task: str | None,
              reasoner_name: str, segmenter_name: str) -> list[Entity]:
    """One polygon per 4-connected region of a whole-area mask (holes kept), simplified by <= 0.5 px;
    `per_tile`: TileRecords of the tiles that made it. (Runs merge in bands instead: seams.py.)"""
    from datetime import datetime, timezone

    labels, count = ndimage.label(mosaic)   # default structure: 4-connectivity
    if count == 0:
        return []
    contrib: dict[int, list[TileRecord]] = {}
    names: dict[int, set[str]] = {}
    for rec in per_tile:
        window = labels[rec.tile.slices]
        for lab in np.unique(window[rec.mask]):
            if lab:
                contrib.setdefault(int(lab), []).append(rec)
        for nm, name in rec.names:
            for lab in np.unique(window[nm]):
                if lab:
                    names.setdefault(int(lab), set()).add(name)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = []
    for geom, value in polygons(labels, grid.transform):
        poly = geom.simplify(0.5 * grid.resolution, preserve_topology=True)
        if not poly.is_empty:
            out.append(Entity(poly, entity_attrs(poly, contrib.get(int(value), []), names.get(int(value), ()),
                                                 grid, query, task, reasoner_name, segmenter_name, created)))
    return out
