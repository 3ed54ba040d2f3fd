"""Writing the bundled sample town and SocioSeg-format samples from the synthetic generator."""
from __future__ import annotations

import json
import os

import numpy as np
import pyogrio
import rasterio
import shapely
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from ..geo.grid import Grid
from ..geo.maprender import render_map
from .town import SAMPLE_CRS, Town, make_town, render_satellite, truth_mask
from ..geo.vectormap import Feature, _reproject
from ..contract import TASK_LEVELS

SAMPLE_SEED = 7
SAMPLE_SIZE_M = (1600.0, 1100.0)
SAMPLE_USES = ["school", "school", "school", "park", "park", "hospital", "mall", "pitch", "cemetery",
               "kindergarten"]
MAP_CRS = CRS.from_epsg(3857)          # the raster map comes in Web Mercator, as tile services serve it
VECTOR_CRS = CRS.from_epsg(4326)       # the vector map in WGS 84, as OSM extracts come
SAT_RESOLUTION = 0.8


def sample_town() -> Town:
    return make_town(SAMPLE_SEED, *SAMPLE_SIZE_M, required=list(SAMPLE_USES))


def write_geotiff(path: str, rgb: np.ndarray, grid: Grid, jpeg: bool) -> None:
    opts = dict(driver="GTiff", width=grid.width, height=grid.height, count=3, dtype="uint8",
                crs=grid.crs, transform=grid.transform, tiled=True, blockxsize=256, blockysize=256)
    opts.update(dict(compress="JPEG", photometric="YCBCR", jpeg_quality=88) if jpeg else
                dict(compress="DEFLATE", predictor=2))
    with rasterio.open(path, "w", **opts) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))


def _grid_over(bounds, crs: CRS, src_crs: CRS, resolution: float) -> Grid:
    b = transform_bounds(src_crs, crs, *bounds, densify_pts=21)
    w = int(np.ceil((b[2] - b[0]) / resolution))
    h = int(np.ceil((b[3] - b[1]) / resolution))
    return Grid(crs, Affine(resolution, 0, b[0], 0, -resolution, b[3]), w, h)


def write_vector(path: str, layers: dict[str, list], crs: CRS) -> None:
    if os.path.exists(path):
        os.remove(path)
    for name, feats in layers.items():
        if not feats:
            continue
        keys = sorted({k for f in feats for k in f[1]})
        fields = [np.array([str(f[1].get(k, "")) if f[1].get(k) is not None else "" for f in feats], dtype=object)
                  for k in keys]
        geoms = np.array([shapely.to_wkb(f[0]) for f in feats], dtype=object)
        gtype = {"Polygon": "Polygon", "LineString": "LineString", "Point": "Point"}[feats[0][0].geom_type]
        pyogrio.raw.write(path, geoms, fields, keys, layer=name, driver="GPKG", crs=crs.to_wkt(),
                          geometry_type=gtype, append=os.path.exists(path),
                          **({} if os.path.exists(path) else {"dataset_options": {"VERSION": "1.2"}}))


def write_sample(out: str) -> dict:
    """The sample town: satellite.tif (UTM 50N, 0.8 m, JPEG), map.tif (EPSG:3857), map.gpkg (WGS 84),
    truth.gpkg (the AOIs, UTM 50N)."""
    os.makedirs(out, exist_ok=True)
    town = sample_town()
    b = town.grid.bounds
    sat_grid = Grid(SAMPLE_CRS, Affine(SAT_RESOLUTION, 0, b[0], 0, -SAT_RESOLUTION, b[3]),
                    int(round((b[2] - b[0]) / SAT_RESOLUTION)), int(round((b[3] - b[1]) / SAT_RESOLUTION)))
    write_geotiff(os.path.join(out, "satellite.tif"), render_satellite(town, SAMPLE_SEED, sat_grid), sat_grid, True)
    map_grid = _grid_over(b, MAP_CRS, SAMPLE_CRS, 1.25)
    map_3857 = [Feature(_reproject(np.array([f.geometry]), SAMPLE_CRS, MAP_CRS)[0], f.props, f.layer)
                for f in town.features]
    write_geotiff(os.path.join(out, "map.tif"), render_map(map_3857, map_grid), map_grid, False)
    layers: dict[str, list] = {"areas": [], "roads": [], "pois": []}
    for f in town.features:
        g = _reproject(np.array([f.geometry]), SAMPLE_CRS, VECTOR_CRS)[0]
        layers[f.layer].append((g, f.props))
    write_vector(os.path.join(out, "map.gpkg"), layers, VECTOR_CRS)
    truth = [(e.geometry, {"name": e.name, "class": e.cls, "function": e.function or "",
                           "mapped_as": "point" if e.point_only else "area"}) for e in town.entities]
    write_vector(os.path.join(out, "truth.gpkg"), {"truth": truth}, SAMPLE_CRS)
    return {"entities": len(town.entities), "features": len(town.features)}


def pick_query(town: Town, rng, level: str | None = None) -> tuple[str, str, list]:
    """A query about the town at a task level (random if None) and the entities that answer it."""
    level = level or str(rng.choice(TASK_LEVELS))
    ents = [e for e in town.entities if not (level == "function" and e.function is None)]
    target = ents[int(rng.integers(len(ents)))]
    if level == "name":
        return target.name, level, [target]
    if level == "class":
        return target.cls, level, [e for e in town.entities if e.cls == target.cls]
    return target.function, level, [e for e in town.entities if e.function == target.function]


def synthetic_case(s: int, size: int = 768, level: str | None = None):
    """(town, query, level, target entities) of synthetic sample number `s`."""
    rng = np.random.default_rng(s)
    uses = list(rng.choice(["school", "park", "hospital", "mall", "pitch", "cemetery", "kindergarten"],
                           size=2, replace=False))
    town = make_town(s, float(size), float(size), required=uses, block=float(rng.uniform(300, 400)))
    return (town, *pick_query(town, rng, level))


def write_socioseg(out: str, count: int, split: str = "train", seed: int = 0, size: int = 768) -> list[str]:
    """`count` samples in SocioSeg's raw layout: <split>/<id>/map.png sat.png mask.png question.json."""
    ids = []
    for k in range(count):
        s = seed * 100_003 + k
        town, query, level, targets = synthetic_case(s, size)
        sid = f"{split}_{seed}_{k:05d}"
        d = os.path.join(out, split, sid)
        os.makedirs(d, exist_ok=True)
        Image.fromarray(render_map(town.features, town.grid)).save(os.path.join(d, "map.png"))
        Image.fromarray(render_satellite(town, s)).save(os.path.join(d, "sat.png"))
        Image.fromarray(truth_mask(targets, town.grid).astype(np.uint8) * 255).save(os.path.join(d, "mask.png"))
        with open(os.path.join(d, "question.json"), "w", encoding="utf-8") as f:
            json.dump({"problem": query, "task": level}, f)
        ids.append(sid)
    return ids
