"""Peak memory and speed of one run at two ground resolutions of the sample (4x the pixels at the finer).

    .venv/bin/python benchmarks/memory.py [--resolutions 0.25 0.125] [--query schools]

Each size runs in its own Python process (the default engine, map reader + GrabCut, on
resources/sample/ with its vector map, output written to a temporary GeoPackage); the process reports
its peak resident memory (ru_maxrss) and tiles per second. Memory that does not grow with the area
gives a ratio near 1.
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


def one(resolution: float, query: str) -> dict:
    sys.path.insert(0, ROOT)
    from backend.output.vectors import write_detection
    from backend.pipeline.detect import detect, load_scene
    from backend.reasoners.mapreader import MapReader
    from backend.resources import SAMPLE_DIR
    from backend.segmenters.grabcut import GrabCutSegmenter

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scene = load_scene(os.path.join(SAMPLE_DIR, "satellite.tif"), os.path.join(SAMPLE_DIR, "map.gpkg"),
                       resolution=resolution)
    t0 = time.perf_counter()
    det = detect(scene, query, MapReader(), GrabCutSegmenter())
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        write_detection(os.path.join(tmp, "out.gpkg"), det)
    g = scene.grid
    return {"resolution": resolution, "width": g.width, "height": g.height, "tiles": len(scene.tiles),
            "entities": len(det.entities), "seconds": round(seconds, 1),
            "tiles_per_s": round(len(scene.tiles) / seconds, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_after_imports_mb": round(before / 1024, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolutions", type=float, nargs="+", default=[0.25, 0.125])
    ap.add_argument("--query", default="schools")
    ap.add_argument("--one", type=float, help=argparse.SUPPRESS)     # the child process's own run
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.query)))
        return 0
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    rows = []
    for res in args.resolutions:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", str(res), "--query", args.query],
                             capture_output=True, text=True, env=env, cwd=ROOT)
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
            return out.returncode
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{platform.node()} · {os.cpu_count()} CPU(s) · Python {platform.python_version()}")
    print("| m/px | grid px | tiles | places | peak RSS | tiles/s | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['resolution']} | {r['width']} x {r['height']} | {r['tiles']} | {r['entities']} | "
              f"{r['peak_rss_mb']:.0f} MB | {r['tiles_per_s']} | {r['seconds']} |")
    if len(rows) > 1:
        print(f"peak RSS ratio, finest / coarsest: {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f}x "
              f"for {rows[-1]['width'] * rows[-1]['height'] / (rows[0]['width'] * rows[0]['height']):.1f}x the pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
