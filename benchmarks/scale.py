"""Scale numbers of `--executor ray` on the real Porto scene (map reader + GrabCut on the OSM Carto render):

    .venv/bin/python benchmarks/scale.py [--side 375] [--tile 192] [--skip-speed] [--look PIXELS]

1. Tiles per second with 1 and 2 Ray workers on the same area (their ratio).
2. The driver's peak resident memory (ru_maxrss of the process that plans, merges and writes; the
   workers' memory is theirs) at 1x, 4x and 16x the area, each in a fresh process; the ratio to 1x.
   With `--look PIXELS` the driver also does what --truth and --preview do (the whole-area mask, the
   truth, the images and the preview PNG) with the CLI's cap on the pixels it looks at set to PIXELS
   (default of the CLI: geo.base.WHOLE_AREA_MAX_PIXELS).
3. The merge time per 1,000 tiles: tile result files (768 px, random places) read back and merged in
   the band, as the driver of a distributed run does (no model involved).

A local Ray is started for each measurement (loopback, as many CPUs as workers).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORTO = os.path.join(ROOT, "..", "shared", "realdata", "porto")
CENTRE = (-8.6104, 41.1482)       # the middle of the Porto window (WGS 84)


def porto_bbox(side_m: float) -> tuple:
    """A square of `side_m` metres around the scene's centre, in WGS 84."""
    from pyproj import Transformer

    to = Transformer.from_crs("EPSG:4326", "EPSG:3763", always_xy=True)
    back = Transformer.from_crs("EPSG:3763", "EPSG:4326", always_xy=True)
    x, y = to.transform(*CENTRE)
    h = side_m / 2
    (w, s), (e, n) = back.transform(x - h, y - h), back.transform(x + h, y + h)
    return (w, s, e, n)


def run_once(side_m: float, tile: int, workers: int, look: int = 0) -> dict:
    """One Ray run in this process (the driver); prints its numbers as JSON."""
    sys.path.insert(0, ROOT)
    import ray

    from backend.geo.base import sample_step, sampled_grid

    from backend.executors.ray import EngineSpecs, RayExecutor
    from backend.output.vectors import write_detection
    from backend.pipeline.detect import RunSettings, load_scene

    with tempfile.TemporaryDirectory(prefix="scale") as tmp:
        ray.init(num_cpus=workers, _node_ip_address="127.0.0.1", include_dashboard=False,
                 object_store_memory=80 * 2 ** 20, logging_level="WARNING",
                 runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
        scene = load_scene(os.path.join(PORTO, "satellite.tif"), os.path.join(PORTO, "map_carto.tif"),
                           bbox=porto_bbox(side_m), bbox_crs="EPSG:4326", tile_size=tile, overlap=32,
                           max_tiles=100_000)
        ex = RayExecutor(EngineSpecs("mapreader", "grabcut"), workers=workers)
        first = []
        t0 = time.perf_counter()
        k = sample_step(scene.grid, look) if look else 0
        det = ex.run(scene, RunSettings("parks", tiles_dir=os.path.join(tmp, "out.tiles"), keep_mask=k),
                     progress=lambda f, m: first or "done" in m and first.append(time.perf_counter()))
        t1 = time.perf_counter()
        write_detection(os.path.join(tmp, "out.parquet"), det)
        if look:      # what the CLI's --truth and --preview do after the run
            from backend.evaluation.metrics import mask_iou
            from backend.evaluation.truth import truth_mask_for
            from backend.output.preview import write_preview

            truth = truth_mask_for(os.path.join(PORTO, "truth.geojson"), sampled_grid(scene.grid, k), "parks", "class")
            sat, map_rgb, valid = scene.sampled(k)
            truth &= valid
            iou = round(mask_iou(det.mask, truth), 3)
            write_preview(os.path.join(tmp, "preview.png"), sat, map_rgb, det.mask, truth, overwrite=True)
        ray.shutdown()
    n = len(scene.tiles)
    return {"side_m": side_m, "grid": [scene.grid.width, scene.grid.height], "tiles": n, "workers": workers,
            "seconds": round(t1 - t0, 2), "entities": len(det.entities),
            # from the first finished tile on: workers are started and the engines loaded by then
            "tiles_per_s": round((n - 1) / (t1 - first[0]), 3) if first and n > 1 else None,
            "driver_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            **({"look_step": k, "iou": iou} if look else {})}


def child(side_m: float, tile: int, workers: int, look: int = 0) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", str(side_m), str(tile), str(workers), str(look)],
                         capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def merge_per_1000(n_side: int = 32, tile: int = 768, overlap: int = 128) -> dict:
    """Tile result files read back and merged in the band: what the driver does per tile."""
    sys.path.insert(0, ROOT)
    import numpy as np
    from affine import Affine
    from rasterio.crs import CRS

    from backend.geo.grid import Grid
    from backend.geo.tiles import tile_layout
    from backend.pipeline.resume import read_tile, write_tile
    from backend.pipeline.seams import BandMerger, TileRecord

    step = tile - overlap
    size = step * n_side + overlap
    grid = Grid(CRS.from_epsg(32629), Affine(1.0, 0, 530_000, 0, -1.0, 4_560_000), size, size)
    tiles = tile_layout(size, size, tile, overlap, 10 ** 6)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="merge") as tmp:
        paths = []
        for t in tiles:
            m = np.zeros((t.height, t.width), bool)
            for _ in range(3):      # a few places per tile, some across its edges
                y, x = rng.integers(0, t.height), rng.integers(0, t.width)
                m[max(0, y - 60):y + 60, max(0, x - 90):x + 90] = True
            paths.append(write_tile(tmp, TileRecord(t, m, [(m, f"place {t.id}")], [0.5], [], 1, 1, True)))
        merger = BandMerger(grid, tiles, "parks", "class", "mapreader", "grabcut", 100.0)
        t0 = time.perf_counter()
        for t, p in zip(tiles, paths):
            merger.add(read_tile(p, t))
        entities = merger.finish()
        seconds = time.perf_counter() - t0
    return {"tiles": len(tiles), "tile_px": tile, "entities": len(entities), "seconds": round(seconds, 2),
            "seconds_per_1000_tiles": round(seconds / len(tiles) * 1000, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=float, default=375.0, help="side of the 1x area in metres (default 375)")
    ap.add_argument("--tile", type=int, default=192, help="tile side in pixels at 1 m (default 192)")
    ap.add_argument("--skip-speed", action="store_true", help="only memory and merge")
    ap.add_argument("--speed-only", action="store_true", help="only the 1 vs 2 workers speed")
    ap.add_argument("--look", type=int, default=0, metavar="PIXELS",
                    help="also do --truth and --preview's work, looking at no more than PIXELS pixels")
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_once(float(args.one[0]), int(args.one[1]), int(args.one[2]), int(args.one[3]))))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; Porto, map reader + GrabCut, tiles of {args.tile} px at 1 m")
    if not args.skip_speed:
        area = 2 * args.side
        one, two = child(area, args.tile, 1), child(area, args.tile, 2)
        print(f"speed on {one['tiles']} tiles ({area:.0f} m square): 1 worker {one['tiles_per_s']} tiles/s, "
              f"2 workers {two['tiles_per_s']} tiles/s (ratio {two['tiles_per_s'] / one['tiles_per_s']:.2f}); "
              f"wall {one['seconds']} s vs {two['seconds']} s")
    if args.speed_only:
        return
    sizes = {k: child(args.side * k ** 0.5, args.tile, 2, args.look) for k in (1, 4, 16)}
    base = sizes[1]["driver_peak_mb"]
    for k, r in sizes.items():
        looked = (f"; --truth/--preview on 1 pixel in {r['look_step']} x {r['look_step']}, IoU {r['iou']}"
                  if args.look else "")
        print(f"driver peak memory at {k:>2}x area ({r['grid'][0]} x {r['grid'][1]} px, {r['tiles']} tiles, "
              f"{r['entities']} places{looked}): {r['driver_peak_mb']} MB (ratio to 1x {r['driver_peak_mb'] / base:.2f})")
    if args.look:
        return
    m = merge_per_1000()
    print(f"merge: {m['tiles']} tile files of {m['tile_px']} px read and merged into {m['entities']} places in "
          f"{m['seconds']} s = {m['seconds_per_1000_tiles']} s per 1,000 tiles")


if __name__ == "__main__":
    main()
