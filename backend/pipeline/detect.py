"""A whole request: layers onto one grid, tiles through the pipeline, masks merged into entities."""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import shapely
from scipy import ndimage

from ..geo import grid as geo
from ..errors import InputError
from ..geo.maprender import render_map
from ..output.vectors import geodesic_area_m2
from ..geo.raster import polygons
from .stages import (CancelCheck, PipelineOptions, Progress, SegmenterSession, TileResult, check_cancel,
                     dump_tile, make_view, run_batch)
from ..geo.vectormap import VectorMap, is_vector_path

log = logging.getLogger(__name__)


@dataclass
class Scene:
    grid: geo.Grid
    satellite: np.ndarray
    map_image: np.ndarray
    valid: np.ndarray
    tiles: list[geo.Tile]
    map_features: VectorMap | None = None


def load_scene(satellite: str, map_path: str, *, crs=None, resolution: float = geo.DEFAULT_RESOLUTION,
               bbox=None, bbox_crs=None, tile_size: int = geo.DEFAULT_TILE,
               overlap: int = geo.DEFAULT_OVERLAP, max_tiles: int = geo.DEFAULT_MAX_TILES) -> Scene:
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
        footprints.append(geo.raster_footprint(map_path))
    grid = geo.plan_grid(footprints, crs=crs, resolution=resolution, bbox=bbox, bbox_crs=bbox_crs)
    tiles = geo.tile_layout(grid.width, grid.height, tile_size, overlap, max_tiles)
    sat, valid = geo.read_on_grid(satellite, grid)
    if not valid.any():
        raise InputError("the satellite image has no valid pixels in the requested area")
    if vector:
        map_rgb = render_map(vmap.features, grid)    # vmap is already in the grid's CRS (target)
    else:
        vmap = None
        map_rgb, map_valid = geo.read_on_grid(map_path, grid)
        if not map_valid.any():
            raise InputError("the map image has no valid pixels in the requested area")
        valid &= map_valid
    return Scene(grid, sat, map_rgb, valid, tiles, vmap)


@dataclass
class Entity:
    geometry: shapely.Geometry
    attrs: dict


@dataclass
class Detection:
    grid: geo.Grid
    mask: np.ndarray
    entities: list[Entity]
    tiles: list[TileResult] = field(default_factory=list)


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def detect(scene: Scene, query: str, reasoner, segmenter, task: str | None = None,
           progress: Progress | None = None, cancel: CancelCheck | None = None,
           dump_dir: str | None = None, keep_tiles: bool = False, options: PipelineOptions | None = None,
           batch_size: int = 1, concurrency: int | None = None) -> Detection:
    """All tiles through both stages, merged on the grid into one mask and then into entities.

    `batch_size` tiles go through each stage together (one batched `generate` in process). A reasoner
    that talks to a server (`concurrency` > 1, default: the reasoner's own) runs that many tiles at
    once in threads instead, each tile's stage 2 starting as soon as its coarse mask is rendered;
    the segmenter is shared under a lock."""
    grid = scene.grid
    if hasattr(reasoner, "prepare"):
        reasoner.prepare(query, task, scene.map_features)
    mosaic = np.zeros((grid.height, grid.width), bool)
    per_tile: list[tuple[geo.Tile, TileResult, np.ndarray]] = []
    todo = []
    for tile in scene.tiles:
        if scene.valid[tile.slices].any():
            todo.append(tile)
        else:
            log.info("%s has no valid pixels; skipped", tile.id)
    n = max(len(scene.tiles), 1)
    session = SegmenterSession(segmenter)
    done = [0]
    lock = threading.Lock()

    def view_of(tile: geo.Tile):
        rows, cols = tile.slices
        return make_view(scene.map_image[rows, cols], scene.satellite[rows, cols], query, reasoner, task=task,
                         transform=grid.window_transform(tile.x0, tile.y0), crs=grid.crs, tile_id=tile.id,
                         map_features=scene.map_features)

    def run(tiles: list[geo.Tile]) -> None:
        check_cancel(cancel)
        label = tiles[0].id if len(tiles) == 1 else f"{tiles[0].id}..{tiles[-1].id}"

        def on_stage(name, steps=iter(range(4))):
            if progress:
                progress((done[0] + next(steps, 3) / 4 * len(tiles)) / n, f"{label} ({done[0] + len(tiles)}/{n}): {name}")

        results = run_batch([view_of(t) for t in tiles], reasoner, session, options, cancel, on_stage)
        with lock:
            for tile, result in zip(tiles, results):
                if dump_dir:
                    dump_tile(result, dump_dir, {"row": tile.row, "col": tile.col, "x0": tile.x0, "y0": tile.y0,
                                                 "tile_transform": list(grid.window_transform(tile.x0, tile.y0).to_gdal())})
                rows, cols = tile.slices
                m = result.mask_on_tile() & scene.valid[rows, cols]
                mosaic[rows, cols] |= m
                per_tile.append((tile, result, m))
            done[0] += len(tiles)

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
        per_tile.sort(key=lambda item: (item[0].row, item[0].col))
    else:
        for tiles in _batches(todo, max(1, batch_size)):
            run(tiles)
    if progress:
        progress(1.0, "merging tiles")
    entities = vectorise(mosaic, grid, per_tile, query, task, reasoner.name, segmenter.name)
    tiles = [r for _, r, _ in per_tile] if keep_tiles else []
    return Detection(grid, mosaic, entities, tiles)


def vectorise(mosaic: np.ndarray, grid: geo.Grid, per_tile, query: str, task: str | None,
              reasoner_name: str, segmenter_name: str) -> list[Entity]:
    """One polygon per 4-connected region of the merged mask (holes kept), simplified by <= 0.5 px."""
    labels, count = ndimage.label(mosaic)   # default structure: 4-connectivity
    if count == 0:
        return []
    contrib: dict[int, list[tuple[geo.Tile, TileResult]]] = {}
    names: dict[int, set[str]] = {}
    for tile, result, m in per_tile:
        rows, cols = tile.slices
        window = labels[rows, cols]
        for lab in np.unique(window[m]):
            if lab:
                contrib.setdefault(int(lab), []).append((tile, result))
        for obj_mask, name in result.objects:
            if name:
                for lab in np.unique(window[result.mask_on_tile(obj_mask) & m]):
                    if lab:
                        names.setdefault(int(lab), set()).add(name)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tol = 0.5 * grid.resolution
    out = []
    for geom, value in polygons(labels, grid.transform):
        poly = geom.simplify(tol, preserve_topology=True)
        if poly.is_empty:
            continue
        parts = contrib.get(int(value), [])
        scores = [s for _, r in parts for s in r.scores]
        notes = sorted({nt for _, r in parts for nt in r.notes})
        out.append(Entity(poly, {
            "query": query, "task": task or "", "name": "; ".join(sorted(names.get(int(value), ()))),
            "tiles": ",".join(t.id for t, _ in parts),
            "n_boxes1": sum(len(r.stage1.items) for _, r in parts),
            "n_boxes2": sum(len(r.stage2.items) for _, r in parts),
            "refined": all(r.refined for _, r in parts),
            "reasoner": reasoner_name, "segmenter": segmenter_name,
            "score": float(np.mean(scores)) if scores else None,
            "note": "; ".join(notes),
            "area_m2": round(geodesic_area_m2(poly, grid.crs), 1),
            "created": created,
        }))
    return out
