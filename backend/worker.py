"""`python -m backend run-scene DIR`: the QGIS plugin's worker process.

QGIS captures the layers and writes a scene folder; this process, with its own Python packages, runs
the detection and writes the result. Keeping the backend out of QGIS's process avoids two copies of
GDAL / GEOS / PROJ (QGIS's and the wheels') in one process, and keeps torch out of QGIS.

Folder: scene.npz (satellite, map_image, valid), request.json (grid, query, engines, features).
Output: result.json (entities as WKT + attributes). Progress lines on stdout: "PROGRESS <0..1> <text>";
an error the user can act on: "ERROR <text>" and exit code 2.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

REQUEST, ARRAYS, RESULT = "request.json", "scene.npz", "result.json"


def write_scene(folder: str, satellite, map_image, valid, request: dict) -> None:
    """Used by the plugin (numpy only): the arrays and the request as the worker reads them."""
    os.makedirs(folder, exist_ok=True)
    np.savez(os.path.join(folder, ARRAYS), satellite=satellite, map_image=map_image, valid=valid)
    with open(os.path.join(folder, REQUEST), "w", encoding="utf-8") as f:
        json.dump(request, f)


def load_scene_folder(folder: str):
    from affine import Affine
    from rasterio.crs import CRS
    import shapely

    from .pipeline.detect import Scene
    from .geo.grid import Grid
    from .geo.tiles import tile_layout
    from .geo.vectormap import Feature, VectorMap

    with open(os.path.join(folder, REQUEST), encoding="utf-8") as f:
        req = json.load(f)
    arrays = np.load(os.path.join(folder, ARRAYS))
    sat, mp, valid = arrays["satellite"], arrays["map_image"], arrays["valid"].astype(bool)
    grid = Grid(CRS.from_wkt(req["crs_wkt"]), Affine(*req["transform"]), sat.shape[1], sat.shape[0])
    tiles = tile_layout(grid.width, grid.height, req["tile_size"], req["overlap"], req["max_tiles"])
    vmap = None
    if req.get("features"):
        feats = [Feature(shapely.from_wkb(bytes.fromhex(f["wkb"])), f["props"], f["layer"])
                 for f in req["features"]]
        feats = [Feature(f.geometry if f.geometry.is_valid else shapely.make_valid(f.geometry), f.props, f.layer)
                 for f in feats if not f.geometry.is_empty]
        vmap = VectorMap(feats, grid.crs) if feats else None
    return Scene(grid, sat, mp, valid, tiles, vmap), req


def run_scene(folder: str) -> dict:
    from .pipeline.detect import detect
    from .engines import build_reasoner, build_segmenter
    from .reasoners.qwen import GenerationSettings

    scene, req = load_scene_folder(folder)

    def progress(frac, msg):
        print(f"PROGRESS {0.1 + 0.9 * frac:.4f} {msg}", flush=True)

    print("PROGRESS 0.02 loading engines", flush=True)
    reasoner = build_reasoner(req["reasoner"], req["device"], GenerationSettings(req["max_new_tokens"]))
    segmenter = build_segmenter(req["segmenter"], req["device"])
    det = detect(scene, req["query"], reasoner, segmenter, task=req.get("task"), progress=progress)
    result = {"entities": [{"wkt": e.geometry.wkt, "attrs": e.attrs} for e in det.entities],
              "tiles": len(scene.tiles)}
    tmp = os.path.join(folder, RESULT + ".part")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f)
    os.replace(tmp, os.path.join(folder, RESULT))
    return result


def main(folder: str) -> int:
    from .errors import SocioSegError

    try:
        result = run_scene(folder)
    except SocioSegError as exc:
        print(f"ERROR {exc}", flush=True)
        return 2
    print(f"DONE {len(result['entities'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
