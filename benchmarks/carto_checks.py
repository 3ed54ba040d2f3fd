"""Two checks of the map reader on a real Carto render (issue 22, items 1 and 3):

    .venv/bin/python benchmarks/carto_checks.py [--data ../shared/realdata/porto] [--consistency] [--certain]

--consistency: the same place read on grids of 1, 0.5 and 0.25 m/px and on 1 m grids moved by a
quarter, a half and three quarters of a pixel. Each run's places (the output polygons, as a planner gets
them) are compared with the 1 m run's by area IoU inside the area all runs cover (less 10 m at its edge,
where a moved grid sees a different strip of map).
--certain: per query, the features the output marks `certain` = 1 scored against the truth polygons:
area precision (the share of their area inside the truth of the asked classes), and how many certain
features hold no truth of the asked classes at all (a confident wrong place). The truth has areas only;
a place that OSM maps as a point (a school as a node, labelled on the map) has no area there, so a
certain feature holding such a node of the asked classes (from the scene's own map.gpkg) is counted
apart: found, but not scorable by area; so is a certain fragment within MARK_M of a truth area of the
asked classes (a piece of a true place cut off by a path or a label).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import shapely  # noqa: E402
import shapely.affinity  # noqa: E402
from rasterio.crs import CRS  # noqa: E402

from benchmarks.real_maps import CASES, DEFAULT_DATA, truth_geoms  # noqa: E402
from backend.pipeline.detect import detect, load_scene  # noqa: E402
from backend.reasoners.mapreader import MapReader  # noqa: E402
from backend.segmenters.grabcut import GrabCutSegmenter  # noqa: E402

EDGE_M = 10.0
MARK_M = 10.0    # a node this near a place is its node (a label is written beside or over its node); a
                 # fragment this near a truth area is a piece of that place
# the OSM tags of the truth classes (benchmarks/realdata/make/truth.py), to find places mapped as points
POINT_TAGS = {"school": ("amenity", "school"), "university": ("amenity", "university"),
              "college": ("amenity", "college"), "kindergarten": ("amenity", "kindergarten"),
              "hospital": ("amenity", "hospital"), "clinic": ("amenity", "clinic"), "park": ("leisure", "park")}


def truth_points(data: str, classes, crs) -> list:
    """The scene's OSM nodes of `classes` (map.gpkg's points layer, GDAL's OSM driver: the tags other
    than name are in other_tags), in `crs`."""
    import pyogrio
    from pyproj import Transformer
    df = pyogrio.read_dataframe(os.path.join(data, "map.gpkg"), layer="points", columns=["other_tags"])
    want = {f'"{k}"=>"{v}"' for c in classes if c in POINT_TAGS for k, v in [POINT_TAGS[c]]}
    hit = df[df["other_tags"].fillna("").map(lambda t: any(w in t for w in want))]
    tr = Transformer.from_crs(4326, crs, always_xy=True)
    return [shapely.Point(*tr.transform(p.x, p.y)) for p in hit.geometry]


def run(data: str, query: str, task: str, resolution: float, shift: float = 0.0, map_name="map_carto.tif"):
    probe = load_scene(os.path.join(data, "satellite.tif"), os.path.join(data, map_name), resolution=1.0)
    b, crs = probe.grid.bounds, probe.grid.crs
    probe.close()
    # Every run covers the same area. A grid's origin is snapped to whole pixels, so a sub-pixel phase
    # is a CRS whose false easting and northing are moved by `shift` metres: the same whole-pixel grid
    # there lies `shift` metres off on the ground.
    if shift:
        p = crs.to_dict()
        if p.get("proj") != "utm" or p.get("south"):
            raise SystemExit("sub-pixel phases are made for scenes on a northern UTM grid")
        crs = CRS.from_proj4(f"+proj=tmerc +lat_0=0 +lon_0={6 * p['zone'] - 183} +k=0.9996 "
                             f"+x_0={500000 + shift} +y_0={shift} +datum=WGS84 +units=m")
    bbox = (b[0] + 2 + shift, b[1] + 2 + shift, b[2] - 2 + shift, b[3] - 2 + shift)
    scene = load_scene(os.path.join(data, "satellite.tif"), os.path.join(data, map_name), resolution=resolution,
                       bbox=bbox, crs=crs, max_tiles=100000)
    t = time.perf_counter()
    det = detect(scene, query, MapReader(), GrabCutSegmenter(), task=task)
    secs = time.perf_counter() - t
    out = [(shapely.affinity.translate(e.geometry, -shift, -shift), e.attrs) for e in det.entities]
    g = scene.grid
    grid = SimpleNamespace(crs=g.crs, bounds=(g.bounds[0] - shift, g.bounds[1] - shift, g.bounds[2] - shift,
                                              g.bounds[3] - shift))
    scene.close()
    return out, grid, secs, len(scene.tiles)


def consistency(data: str, queries) -> None:
    runs = [("1 m", 1.0, 0.0), ("0.5 m", 0.5, 0.0), ("0.25 m", 0.25, 0.0),
            ("1 m +0.25", 1.0, 0.25), ("1 m +0.5", 1.0, 0.5), ("1 m +0.75", 1.0, 0.75)]
    print("| query | run | places | IoU with 1 m | s |\n|---|---|---|---|---|")
    for query, task in queries:
        base = None
        for name, res, shift in runs:
            feats, grid, secs, _ = run(data, query, task, res, shift)
            union = shapely.union_all([g for g, _ in feats]) if feats else shapely.Polygon()
            b = grid.bounds
            box = shapely.box(b[0] + EDGE_M + 1, b[1] + EDGE_M + 1, b[2] - EDGE_M - 1, b[3] - EDGE_M - 1)
            if base is None:
                base, base_box = union, box
                iou = 1.0
            else:
                common = base_box.intersection(box)
                a, c = base.intersection(common), union.intersection(common)
                u = a.union(c).area
                iou = a.intersection(c).area / u if u else 1.0
            print(f"| {query} | {name} | {len(feats)} | {iou:.3f} | {secs:.1f} |", flush=True)


def certain(data: str, resolution: float, map_name: str) -> None:
    print(f"\nmap {map_name}, {resolution:g} m/px")
    print("| query | features | certain | certain area precision | certain beside a truth area | certain on a truth "
          "point only | certain with no truth | all area precision |\n|---|---|---|---|---|---|---|---|")
    for query, task, classes in CASES:
        feats, grid, _, _ = run(data, query, task, resolution, 0.0, map_name)
        truths = truth_geoms(os.path.join(data, "truth.geojson"), grid.crs)
        truth = shapely.union_all([g for c in classes for g in truths.get(c, [])] or [shapely.Polygon()])
        sure = [g for g, a in feats if a.get("certain") == 1]
        points = truth_points(data, classes, grid.crs)
        unscored = [g for g in sure if g.intersection(truth).area < 0.05 * g.area]
        beside = [g for g in unscored if g.distance(truth) <= MARK_M]
        on_point = [g for g in unscored if g.distance(truth) > MARK_M and any(g.buffer(MARK_M).contains(p) for p in points)]
        wrong = len(unscored) - len(beside) - len(on_point)
        area = sum(g.area for g in sure)
        prec = sum(g.intersection(truth).area for g in sure) / area if area else float("nan")
        all_area = sum(g.area for g, _ in feats)
        all_prec = sum(g.intersection(truth).area for g, _ in feats) / all_area if all_area else float("nan")
        print(f"| {query} | {len(feats)} | {len(sure)} | {prec:.2f} | {len(beside)} | {len(on_point)} | {wrong} | "
              f"{all_prec:.2f} |", flush=True)
        for g, a in feats:
            hit = g.intersection(truth).area / g.area if g.area else 0
            print(f"    {a.get('certain')} {hit:.2f} {round(g.area):7d} m2  {a.get('name')!r}  {a.get('evidence', '')!r}",
                  file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--consistency", action="store_true")
    ap.add_argument("--certain", action="store_true")
    ap.add_argument("--resolution", type=float, default=1.0)
    ap.add_argument("--maps", nargs="+", default=["map_carto.tif", "map.gpkg"])
    ap.add_argument("--queries", nargs="+", default=["parks", "educational"])
    args = ap.parse_args()
    if not os.path.isdir(args.data):
        print(f"no real scene at {args.data}: give --data", file=sys.stderr)
        return 2
    if args.consistency:
        tasks = {q: t for q, t, _ in CASES}
        consistency(args.data, [(q, tasks.get(q, "class")) for q in args.queries])
    if args.certain:
        for m in args.maps:
            certain(args.data, args.resolution, m)
    return 0


if __name__ == "__main__":
    sys.exit(main())
