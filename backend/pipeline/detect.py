"""A whole request: layers onto one grid, tiles through the pipeline, masks merged into entities."""
from __future__ import annotations

import logging
import os
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
from .stages import CancelCheck, Progress, TileResult, _check, dump_tile, run_tile
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


def detect(scene: Scene, query: str, reasoner, segmenter, task: str | None = None,
           progress: Progress | None = None, cancel: CancelCheck | None = None,
           dump_dir: str | None = None, keep_tiles: bool = False) -> Detection:
    grid = scene.grid
    if hasattr(reasoner, "prepare"):
        reasoner.prepare(query, task, scene.map_features)
    mosaic = np.zeros((grid.height, grid.width), bool)
    per_tile: list[tuple[geo.Tile, TileResult, np.ndarray]] = []
    n = len(scene.tiles)
    for k, tile in enumerate(scene.tiles):
        _check(cancel)
        rows, cols = tile.slices
        if not scene.valid[rows, cols].any():
            log.info("%s has no valid pixels; skipped", tile.id)
            continue
        stages = iter(range(4))

        def on_stage(name, k=k, tile=tile):
            if progress:
                progress((k + next(stages, 3) / 4) / n, f"{tile.id} ({k + 1}/{n}): {name}")

        result = run_tile(tile, scene.satellite[rows, cols], scene.map_image[rows, cols],
                          grid.window_transform(tile.x0, tile.y0), grid.crs, query, task, reasoner,
                          segmenter, scene.map_features, cancel, on_stage)
        if dump_dir:
            dump_tile(result, grid, dump_dir)
        m = result.mask_on_tile() & scene.valid[rows, cols]
        mosaic[rows, cols] |= m
        per_tile.append((tile, result, m))
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
            "n_boxes2": sum(len(r.stage2.items) if r.stage2 else 0 for _, r in parts),
            "refined": all(r.refined for _, r in parts),
            "reasoner": reasoner_name, "segmenter": segmenter_name,
            "score": float(np.mean(scores)) if scores else None,
            "note": "; ".join(notes),
            "area_m2": round(geodesic_area_m2(poly, grid.crs), 1),
            "created": created,
        }))
    return out
