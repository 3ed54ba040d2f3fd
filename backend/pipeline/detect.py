"""A whole request as three plain steps that any executor drives (backend/executors):

1. `plan`: the tile list and the run record (the tile folder and its request key, the band merger,
   the tiles already finished there for --resume).
2. `run_tiles`: one tile or a batch, pure: a scene's windows and the engines in, one `TileRecord` per
   tile out (`TileStore.write` makes it a tile result file, which is what a distributed worker hands
   back).
3. `RunPlan.add` / `RunPlan.finish` (`merge`): tile results into entities across seams, in a band that
   moves down the grid (seams.py), whatever order the tiles arrive in.

A run's settings are one `RunSettings`; `detect()` is the local executor over them. --resume falls out
of step 1: a tile result on disk is a finished tile."""
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
from .resume import TileStore, engine_identity, file_identity, request_key, shared_tables_identity
from .seams import BandMerger, Entity, TileRecord, entity_attrs
from .stages import (CancelCheck, PipelineOptions, Progress, SegmenterSession, TileResult, check_cancel,
                     dump_tile, make_view, run_batch)

log = logging.getLogger(__name__)

__all__ = ["Scene", "SceneSource", "Entity", "Detection", "RunSettings", "EngineFacts", "RunPlan", "load_scene",
           "plan", "run_tiles", "detect", "vectorise", "drop_small"]


@dataclass(frozen=True)
class SceneSource:
    """Where a scene's pixels come from, as plain data (paths and the grid): what a worker on another
    process or machine needs to open the same scene (`open`). Paths must be readable there too."""
    satellite: str
    map: str
    grid: geo.Grid
    tiles: tuple = ()

    def open(self, vmap: VectorMap | None = None) -> "Scene":
        """`vmap`: the vector map already read in the grid's CRS (saves reading it again)."""
        sat = GridRaster(self.satellite, self.grid)
        vector = is_vector_path(self.map)
        try:
            require_valid(sat, "satellite")
            if vector and vmap is None:
                vmap = VectorMap.read(self.map, self.grid.crs)
            map_src = MapWindows(vmap.features, self.grid) if vector else \
                GridRaster(self.map, self.grid, Resampling.nearest)
            if not vector:
                require_valid(map_src, "map")
        except BaseException:
            sat.close()
            raise
        return Scene(self.grid, None, None, None, list(self.tiles), vmap, (sat, map_src, not vector),
                     {"satellite": file_identity(self.satellite), "map": file_identity(self.map)}, source=self)


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
    source: SceneSource | None = None       # how another process opens this scene (files only)
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

    def map_around(self, tile: geo.Tile, margin: int, native: float | None = None):
        """The map's pixels of `tile` grown by up to `margin` on every side (within the grid), and
        the tile's column and row in them. With `native` (metres per pixel the reader needs): the
        same area at the map file's own pixels instead (backend/geo/native.py), or None where there
        is no such file."""
        x0, y0 = max(0, tile.x0 - margin), max(0, tile.y0 - margin)
        x1 = min(self.grid.width, tile.x0 + tile.width + margin)
        y1 = min(self.grid.height, tile.y0 + tile.height + margin)
        if native is not None:
            from ..geo.native import read_native
            if self.sources is None:
                return None
            t = self.grid.transform
            (ax, ay), (bx, by) = t * (x0, y0), t * (x1, y1)
            return read_native(self.sources[1], self.grid.crs, (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)),
                               native, self._lock)
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

    def sampled(self, k: int, block: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`whole()` at every k-th pixel ([::k, ::k]), read in windows of `block` sampled pixels a side:
        what --preview and --truth look at on an area too large to hold at full resolution."""
        if k == 1:
            return self.whole()
        if self.sources is None:
            return self.satellite[::k, ::k], self.map_image[::k, ::k], self.valid[::k, ::k]
        g = geo.sampled_grid(self.grid, k)
        sat = np.zeros((g.height, g.width, 3), np.uint8)
        map_rgb = np.zeros((g.height, g.width, 3), np.uint8)
        valid = np.zeros((g.height, g.width), bool)
        step = block * k
        for y0 in range(0, self.grid.height, step):
            for x0 in range(0, self.grid.width, step):
                w, h = min(step, self.grid.width - x0), min(step, self.grid.height - y0)
                parts = self.read(geo.Tile(0, 0, x0, y0, w, h))
                i, j = y0 // k, x0 // k
                for whole, part in zip((sat, map_rgb, valid), parts):
                    sub = part[::k, ::k]
                    whole[i:i + sub.shape[0], j:j + sub.shape[1]] = sub
        return sat, map_rgb, valid

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
    if is_vector_path(map_path):
        target = crs or geo.default_crs(*footprints[0])
        vmap = VectorMap.read(map_path, target)
        vb = shapely.total_bounds([f.geometry for f in vmap.features])
        footprints.append((target, tuple(vb)))
    else:
        vmap = None
        footprints.append(geo.raster_footprint(map_path))
    grid = geo.plan_grid(footprints, crs=crs, resolution=resolution, bbox=bbox, bbox_crs=bbox_crs)
    tiles = geo.tile_layout(grid.width, grid.height, tile_size, overlap, max_tiles)
    # vmap is in `target`, the grid's CRS
    # Absolute paths: a worker of a distributed run does not share this process's working folder.
    return SceneSource(os.path.abspath(satellite), os.path.abspath(map_path), grid, tuple(tiles)).open(vmap)


@dataclass
class Detection:
    grid: geo.Grid
    mask: np.ndarray | None          # the whole-area mask ([::k, ::k] for keep_mask=k), only when keep_mask
    entities: list[Entity]
    tiles: list[TileResult] = field(default_factory=list)
    resumed: int = 0                 # tiles read back from the tile folder instead of computed
    asked: int = 0                   # tiles with data, put to the reasoner (resumed ones included)
    answered: int = 0                # of those, tiles whose stage-2 answer was usable
    unanswered_notes: dict = field(default_factory=dict)   # why the others were not: note -> tiles


@dataclass(frozen=True)
class RunSettings:
    """Everything about a run that is not the scene or the engines."""
    query: str
    task: str | None = None
    options: PipelineOptions = field(default_factory=PipelineOptions)
    batch_size: int = 1               # tiles per batched model call in process
    concurrency: int | None = None    # tiles in flight to a model server (default: the reasoner's own)
    keep_mask: int = 0                # build the whole-area mask (--truth, --preview): every k-th pixel
                                      # of it for keep_mask=k (True: all; see geo.base.sample_step)
    keep_tiles: bool = False          # keep every TileResult in memory (tests, benchmarks)
    dump_dir: str | None = None
    tiles_dir: str | None = None      # finished tiles kept here (OUT.tiles/)
    resume: bool = False              # reuse finished tiles found in tiles_dir


@dataclass(frozen=True)
class EngineFacts:
    """What the driver needs to know of the engines without holding them (a distributed run loads
    them on its workers only)."""
    reasoner: str
    segmenter: str                    # what drew the outlines (see `of`)
    min_area_m2: float
    input_size: tuple | None          # the reasoner's model size of the first tile
    identity: dict                    # what identifies the engines' behaviour, for --resume

    @classmethod
    def of(cls, reasoner, segmenter, scene: Scene, settings: RunSettings) -> "EngineFacts":
        """Asks the reasoner to `prepare` for the request (its refusals come before any tile folder)."""
        if hasattr(reasoner, "prepare"):
            reasoner.prepare(settings.query, settings.task, scene.map_features)
        # The output's `segmenter` says what drew the outlines: "map/grabcut" where the reader's own were
        # taken, and the segmenter cut only the places the map has as points.
        from_map = settings.options.outline == "map" and getattr(reasoner, "reads_outlines", False)
        first = scene.tiles[0] if scene.tiles else None
        return cls(reasoner.name, f"map/{segmenter.name}" if from_map else segmenter.name,
                   float(getattr(reasoner, "min_area_m2", 0.0) or 0.0),
                   tuple(reasoner.input_size(first.height, first.width)) if first else None,
                   {"reasoner": engine_identity(reasoner), "segmenter": engine_identity(segmenter),
                    "generation": getattr(reasoner, "generation_record", lambda: None)(),
                    "tables": shared_tables_identity()})


@dataclass
class RunPlan:
    """A planned run: the tiles still to compute (`todo`) and the merge that every finished tile goes
    to (`add`), whichever executor computed it."""
    scene: Scene
    settings: RunSettings
    facts: EngineFacts
    merger: BandMerger
    store: TileStore | None
    todo: list[geo.Tile]
    resumed: int = 0
    done: int = 0
    kept: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def total(self) -> int:
        return len(self.scene.tiles)

    def add(self, rec: TileRecord, computed: bool = True, result: TileResult | None = None,
            saved: bool = False) -> None:
        """A finished tile: kept on disk (unless `saved` already, by a worker) and merged."""
        with self._lock:
            if self.store is not None and computed and not saved:
                self.store.save(rec)
            self.merger.add(rec)
            self.done += 1
            if result is not None and self.settings.keep_tiles:
                self.kept.append((rec.tile, result))

    def finish(self) -> Detection:
        try:
            entities = self.merger.finish()
        finally:
            self.close()
        self.kept.sort(key=lambda item: (item[0].row, item[0].col))
        m = self.merger
        return Detection(self.scene.grid, m.mask, entities, [r for _, r in self.kept], self.resumed,
                         m.asked, m.answered, dict(m.unanswered_notes))

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def abandon(self) -> None:
        """The run failed or was stopped: finished tiles stay for --resume; with none, no tile folder."""
        if self.store is not None:
            self.store.discard_if_empty()


def plan(scene: Scene, settings: RunSettings, facts: EngineFacts,
         progress: Progress | None = None) -> RunPlan:
    """Step 1: the run record, the merge, and the tiles left to compute (finished tiles of an
    interrupted run are read back from the tile folder with --resume and merged now)."""
    grid = scene.grid
    store = None
    if settings.tiles_dir:
        store = TileStore(settings.tiles_dir, request_key(
            inputs=scene.inputs, crs=grid.crs.to_wkt(), transform=list(grid.transform)[:6],
            size=[grid.width, grid.height], tiles=[[t.x0, t.y0, t.width, t.height] for t in scene.tiles],
            query=settings.query, task=settings.task, reasoner=facts.reasoner, segmenter=facts.segmenter,
            engines=facts.identity, input_size=list(facts.input_size) if facts.input_size else None,
            options=vars(settings.options)), settings.resume)
    merger = BandMerger(grid, scene.tiles, settings.query, settings.task, facts.reasoner, facts.segmenter,
                        facts.min_area_m2, settings.keep_mask)
    run = RunPlan(scene, settings, facts, merger, store, [])
    try:
        for tile in scene.tiles:
            rec = store.load(tile) if store is not None and settings.resume else None
            if rec is not None:
                run.add(rec, computed=False)
                run.resumed += 1
            else:
                run.todo.append(tile)
    except BaseException:
        run.close()
        raise
    if run.resumed:
        log.info("resumed %d finished tile(s) from %s", run.resumed, settings.tiles_dir)
        if progress:
            progress(run.done / max(run.total, 1), f"resumed {run.resumed} finished tile(s) ({run.done}/{run.total})")
    return run


def run_tiles(scene: Scene, tiles: list[geo.Tile], settings: RunSettings, reasoner,
              session: SegmenterSession, cancel: CancelCheck | None = None,
              on_stage=None) -> list[tuple[TileRecord, TileResult | None]]:
    """Step 2: one tile or a batch through both stages. Reads the tiles' windows, returns each
    tile's record (and its full result; None for a tile without valid pixels). Writes nothing but
    the --dump folder."""
    check_cancel(cancel)
    grid = scene.grid
    out: dict[str, tuple[TileRecord, TileResult | None]] = {}
    views, windows = [], []
    for tile in tiles:
        sat, map_rgb, valid = scene.read(tile)
        if valid.any():
            views.append(make_view(map_rgb, sat, settings.query, reasoner, task=settings.task,
                                   transform=grid.window_transform(tile.x0, tile.y0), crs=grid.crs,
                                   tile_id=tile.id, map_features=scene.map_features,
                                   map_around=None if scene.map_features is not None
                                   else functools.partial(scene.map_around, tile)))
            windows.append((tile, valid))
        else:
            log.info("%s has no valid pixels; skipped", tile.id)
            out[tile.id] = (TileRecord.empty(tile), None)
        del sat, map_rgb
    results = run_batch(views, reasoner, session, settings.options, cancel, on_stage) if views else []
    for (tile, valid), result in zip(windows, results):
        if settings.dump_dir:
            dump_tile(result, settings.dump_dir, {"row": tile.row, "col": tile.col, "x0": tile.x0, "y0": tile.y0,
                                                  "tile_transform": list(grid.window_transform(tile.x0, tile.y0).to_gdal())})
        out[tile.id] = (TileRecord.from_result(tile, result, valid), result)
    return [out[t.id] for t in tiles]


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def run_local(run: RunPlan, reasoner, segmenter, progress: Progress | None = None,
              cancel: CancelCheck | None = None) -> None:
    """Step 2 for every tile left in `run`, in this process, each tile merged as it finishes.

    `batch_size` tiles go through each stage together (one batched `generate` in process). A reasoner
    that talks to a server (`concurrency` > 1, default: the reasoner's own) runs that many tiles at
    once in threads instead, each tile's stage 2 starting as soon as its coarse mask is rendered; the
    segmenter is shared under a lock."""
    session = SegmenterSession(segmenter)
    n = max(run.total, 1)

    def one(tiles):
        label = tiles[0].id if len(tiles) == 1 else f"{tiles[0].id}..{tiles[-1].id}"

        def on_stage(name, steps=iter(range(4))):
            if progress:
                progress((run.done + next(steps, 3) / 4 * len(tiles)) / n,
                         f"{label} ({run.done + len(tiles)}/{n}): {name}")

        for rec, result in run_tiles(run.scene, tiles, run.settings, reasoner, session, cancel, on_stage):
            run.add(rec, result=result)
        if progress:
            progress(run.done / n, f"{label} done ({run.done}/{n})")

    workers = run.settings.concurrency if run.settings.concurrency is not None else \
        getattr(reasoner, "concurrency", 1)
    if workers > 1 and len(run.todo) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(one, [t]) for t in run.todo]
            try:
                for f in as_completed(futures):
                    f.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    else:
        for tiles in _batches(run.todo, max(1, run.settings.batch_size)):
            one(tiles)


def detect(scene: Scene, query: str | RunSettings, reasoner, segmenter, task: str | None = None,
           progress: Progress | None = None, cancel: CancelCheck | None = None,
           dump_dir: str | None = None, keep_tiles: bool = False, options: PipelineOptions | None = None,
           batch_size: int = 1, concurrency: int | None = None, keep_mask: bool = False,
           tiles_dir: str | None = None, resume: bool = False) -> Detection:
    """All tiles through both stages in this process (the local executor: plan, `run_local`, merge),
    merged across seams into entities. `query` may be a whole `RunSettings`; the keyword arguments
    are its fields otherwise.

    Each tile's window is read when the tile runs and merged as soon as its tile row is complete, so
    memory does not grow with the area (`keep_mask` and `keep_tiles` keep whole-area results on
    request). `tiles_dir` keeps every finished tile on disk; with `resume`, tiles found there are read
    back instead of computed (the caller removes the folder once the output is written)."""
    settings = query if isinstance(query, RunSettings) else RunSettings(
        query, task, options or PipelineOptions(), batch_size, concurrency, keep_mask, keep_tiles, dump_dir,
        tiles_dir, resume)
    run = plan(scene, settings, EngineFacts.of(reasoner, segmenter, scene, settings), progress)
    try:
        run_local(run, reasoner, segmenter, progress, cancel)
    except BaseException:
        run.abandon()
        raise
    if progress:
        progress(1.0, "merging tiles")
    return run.finish()


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
