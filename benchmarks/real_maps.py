"""Score the weight-free default (map reader + GrabCut) on a real city, per class and map kind.

    .venv/bin/python benchmarks/real_maps.py [--data ../shared/realdata/porto] [--resolution 1]

The scene folder holds real OpenStreetMap data (`map.gpkg` from GDAL's OSM driver, `extract.osm.pbf`),
a genuine OSM Carto render (`map_carto.tif`), truth polygons (`truth.geojson`, field `class`) and a
satellite image (in Porto a painted stand-in: it is registered exactly and its colours are not
realistic, so GrabCut's part of the score is optimistic). Every query runs on the whole scene through
the CLI's path (`load_scene` + `detect`); the detected mask is scored against the truth classes on the
processing grid: IoU, precision, recall (pixels), places found, seconds.

`--leave-one-out` judges the Carto reader's constants city by city: a small grid of them (`--grid`)
runs on every city's Carto raster, each city is scored with the setting chosen on the others, and
the table (per city and class: IoU, precision, recall) is printed beside the in-sample one (the
committed constants). The cities are `--cities` folders, by default Porto and the scenes that
benchmarks/realdata/make/build.sh built under $REALDATA_EXTRA (/work/realdata_extra/<scene>/out).

`--speed` also times the bundled sample at 0.25 m/px (tiles per second of wall time and per CPU second,
vector and raster map; on a shared machine the second is the one that says how fast the code is).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import shapely  # noqa: E402

from backend.geo.raster import rasterize  # noqa: E402
from backend.geo.vectormap import _reproject  # noqa: E402
from backend.pipeline.detect import detect, load_scene  # noqa: E402
from backend.contract import OUTLINES  # noqa: E402
from backend.pipeline.stages import PipelineOptions  # noqa: E402
from backend.reasoners.mapreader import MapReader  # noqa: E402
from backend.segmenters.grabcut import GrabCutSegmenter  # noqa: E402
from rasterio.crs import CRS  # noqa: E402

from benchmarks import leave_one_out  # noqa: E402

DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "realdata", "porto")
# (query, task, truth classes). "educational" is the function: school, university, college,
# kindergarten (college counts as university in resources/socio_classes.json).
CASES = [
    ("parks", "class", {"park"}),
    ("schools", "class", {"school"}),
    ("educational", "function", {"school", "university", "college", "kindergarten"}),
    ("hospitals", "class", {"hospital"}),
    ("medical", "function", {"hospital", "clinic"}),
]
EXTRA = os.environ.get("REALDATA_EXTRA", "/work/realdata_extra")
SCENES = ("london", "moscow", "kbh", "baltimore", "campogrande", "munich")   # benchmarks/realdata/<scene>/
MAPS = {"vector (gpkg)": "map.gpkg", "vector (osm.pbf)": "extract.osm.pbf", "carto raster": "map_carto.tif"}


def truth_geoms(path: str, crs) -> dict[str, list]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    out: dict[str, list] = {}
    for f in data["features"]:
        g = shapely.make_valid(shapely.geometry.shape(f["geometry"]))
        out.setdefault(f["properties"]["class"], []).append(g)
    tgt = {k: _reproject(np.array(v, object), CRS.from_epsg(4326), crs) for k, v in out.items()}
    return tgt


def score(pred: np.ndarray, truth: np.ndarray) -> dict:
    inter = int((pred & truth).sum())
    union = int((pred | truth).sum())
    return {"iou": inter / union if union else 1.0,
            "precision": inter / int(pred.sum()) if pred.any() else 0.0,
            "recall": inter / int(truth.sum()) if truth.any() else 1.0}


def run_scene(data: str, resolution: float, maps: list[str], cases, outline: str = "map") -> list[dict]:
    rows = []
    for kind in maps:
        path = os.path.join(data, MAPS[kind])
        t = time.perf_counter()
        scene = load_scene(os.path.join(data, "satellite.tif"), path, resolution=resolution)
        load_s = time.perf_counter() - t
        g = scene.grid
        truths = truth_geoms(os.path.join(data, "truth.geojson"), g.crs)
        reader = MapReader()   # one reader per map: it caches what it read of the whole map
        for query, task, classes in cases:
            truth = rasterize([x for c in classes for x in truths.get(c, [])], (g.height, g.width), g.transform)
            truth &= scene.whole()[2]
            t = time.perf_counter()
            det = detect(scene, query, reader, GrabCutSegmenter(), task=task, keep_mask=True,
                         options=PipelineOptions(outline=outline))
            secs = time.perf_counter() - t
            rows.append({"map": kind, "query": query, "places": len(det.entities), "tiles": len(scene.tiles),
                         "seconds": secs, "load_seconds": load_s, **score(det.mask, truth)})
            print(f"  {kind:17s} {query:12s} IoU {rows[-1]['iou']:.3f}  ({secs:.1f} s)", file=sys.stderr)
    return rows


def speed(resolution: float = 0.25) -> list[dict]:
    sample = os.path.join(ROOT, "resources", "sample")
    out = []
    for kind, name in (("vector", "map.gpkg"), ("raster", "map.tif")):
        scene = load_scene(os.path.join(sample, "satellite.tif"), os.path.join(sample, name),
                           resolution=resolution, max_tiles=1000)
        t, cpu = time.perf_counter(), time.process_time()
        det = detect(scene, "schools", MapReader(), GrabCutSegmenter(), task="class")
        secs, cpu = time.perf_counter() - t, time.process_time() - cpu
        # CPU seconds say what the machine's load hides: on a shared machine wall time is not speed.
        out.append({"map": kind, "tiles": len(scene.tiles), "seconds": secs, "cpu_seconds": cpu,
                    "tiles_per_s": len(scene.tiles) / secs, "tiles_per_cpu_s": len(scene.tiles) / cpu,
                    "places": sorted((e.attrs["name"] or "?", round(e.attrs["area_m2"])) for e in det.entities)})
    return out


def run_leave_one_out(args) -> int:
    if args.grid:     # a mistyped option is said first, whatever scenes this machine has
        try:
            leave_one_out.parse_grid(args.grid, each=not args.grid_product)
        except leave_one_out.GridError as exc:
            print(str(exc), file=sys.stderr)
            return 2
    cities = args.cities or [args.data] + [os.path.join(EXTRA, s, "out") for s in SCENES]
    missing = [c for c in cities if not os.path.isfile(os.path.join(c, MAPS["carto raster"]))]
    if args.cities and missing:
        print(f"no scene (map_carto.tif) at {', '.join(missing)}: fix --cities", file=sys.stderr)
        return 2
    if missing:    # the default list: say which scenes are not built here and go on with the rest
        print(f"not built here, left out: {', '.join(missing)} (benchmarks/realdata/make/build.sh)", file=sys.stderr)
    cities = [c for c in cities if c not in missing]
    if len(cities) < 2:
        print("--leave-one-out needs at least two scenes: give --cities", file=sys.stderr)
        return 2
    queries = [q for q in leave_one_out.QUERIES if q in args.queries] if args.queries != [c[0] for c in CASES] \
        else list(leave_one_out.QUERIES)
    try:
        res = leave_one_out.leave_one_out(cities, leave_one_out.DEFAULT_GRID if args.grid is None else args.grid,
                                          args.resolution, args.cache, queries, each=not args.grid_product)
    except leave_one_out.GridError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    leave_one_out.report(res, queries)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=1)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--resolution", type=float, default=1.0)
    ap.add_argument("--maps", nargs="+", default=list(MAPS), choices=list(MAPS))
    ap.add_argument("--queries", nargs="+", default=[c[0] for c in CASES])
    ap.add_argument("--outline", choices=OUTLINES, default="map",
                    help="map: the reader's outlines (the default); image: GrabCut cuts every place")
    ap.add_argument("--speed", action="store_true", help="also time the sample at 0.25 m/px")
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--leave-one-out", action="store_true",
                    help="choose the Carto reader's constants without each city and score them on it")
    ap.add_argument("--cities", nargs="+", help="scene folders for --leave-one-out (default: Porto and "
                    f"{EXTRA}/<scene>/out for {', '.join(SCENES)})")
    ap.add_argument("--grid", nargs="*", default=None, metavar="NAME=v1,v2",
                    help=f"constants to choose for --leave-one-out (default: {' '.join(leave_one_out.DEFAULT_GRID)})")
    ap.add_argument("--grid-product", action="store_true",
                    help="--leave-one-out: every combination of the --grid values (default: one constant at a time)")
    ap.add_argument("--cache", help="--leave-one-out: keep each city's runs in this JSON file and reuse them")
    args = ap.parse_args()
    if args.leave_one_out:
        return run_leave_one_out(args)
    if not os.path.isdir(args.data):
        print(f"no real scene at {args.data}: give --data", file=sys.stderr)
        return 2
    rows = run_scene(args.data, args.resolution, args.maps, [c for c in CASES if c[0] in args.queries], args.outline)
    print(f"\nScene {os.path.basename(os.path.abspath(args.data))}, {args.resolution:g} m/px, outline {args.outline}\n")
    print("| map | query | IoU | precision | recall | places | s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['map']} | {r['query']} | {r['iou']:.2f} | {r['precision']:.2f} | {r['recall']:.2f} "
              f"| {r['places']} | {r['seconds']:.1f} |")
    result = {"rows": rows}
    if args.speed:
        result["speed"] = speed()
        print("\n| sample at 0.25 m/px | tiles | s | CPU s | tiles/s | tiles per CPU s | places (name, m²) |")
        print("|---|---|---|---|---|---|---|")
        for s in result["speed"]:
            print(f"| {s['map']} map | {s['tiles']} | {s['seconds']:.1f} | {s['cpu_seconds']:.1f} | "
                  f"{s['tiles_per_s']:.1f} | {s['tiles_per_cpu_s']:.1f} | {s['places']} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
