"""What a Carto raster shows of each truth place, whatever reads it (issue 22):

    .venv/bin/python benchmarks/carto_ceiling.py [--data DIR ...] [--queries parks educational]

For every truth polygon of the asked classes, inside the scene: does the map draw any sign of the class
on it: its class fill (at least legend.FILL_SURE_M2 of it showing inside the polygon) or a word in the
class's label colour on it or within legend.MARK_REACH_M? A place with neither is drawn like anything
else (Munich's schools are plain buildings; two of its parks are drawn as grass). A reader can cover
such a place only by growing a neighbouring shown place into it (Copenhagen's campus buildings), and
not at all where the place lies farther than the reader's reach (legend.REACH_M) from every sign of
the class. Printed per scene and query: the share of truth area the map shows, and the share that is
unshown and out of reach: 1 minus it is the most recall (and, with perfect precision, IoU) this reader
can reach on that map, and any reader that does not take other classes' fills for this one. Colours
and label sizes are the reader's (resources/legends/osm_carto.json, backend/reasoners/legend.py); the
map is read at its own pixels.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import rasterio.features  # noqa: E402
import shapely  # noqa: E402
from scipy import ndimage  # noqa: E402

from benchmarks.real_maps import CASES, DEFAULT_DATA, EXTRA, SCENES, truth_geoms  # noqa: E402
from backend.geo.native import ground_pixel_m  # noqa: E402
from backend.reasoners import legend as lg  # noqa: E402
from backend.resources import resource  # noqa: E402


def ceiling(data: str, query: str, classes) -> dict:
    with rasterio.open(os.path.join(data, "map_carto.tif")) as ds:
        img = ds.read([1, 2, 3]).transpose(1, 2, 0)
        transform, crs = ds.transform, ds.crs
        area = shapely.box(*ds.bounds)
    # metres of ground per map pixel, as the reader measures them (Web Mercator: 1.19 m is ~0.9 m)
    pixel_m = ground_pixel_m(transform, crs, img.shape[1] / 2, img.shape[0] / 2)
    metre = abs(transform.a) / pixel_m          # map units per metre of ground
    legend = lg.Legend(resource("legends", "osm_carto.json"))
    colours = lg.Colours(img)
    fills, _ = legend.colours_for(classes)
    # the reader's own fill evidence (legend.place_mask's seed)
    fill = ndimage.binary_opening(legend.categories(colours, fills) == lg.SEED, np.ones((2, 2), bool))
    own, _ = legend.label_colours(classes)
    words = lg.text_pixels(colours, own) if own else np.zeros(img.shape[:2], bool)
    near_words = ndimage.binary_dilation(words, lg._disk(round(lg.MARK_REACH_M / pixel_m))) if words.any() else words
    truths = truth_geoms(os.path.join(data, "truth.geojson"), crs)
    places = [g.intersection(area) for c in classes for g in truths.get(c, [])]
    masks = [(g, rasterio.features.rasterize([g], img.shape[:2], transform=transform) > 0)
             for g in places if g.area > 0]
    masks = [(g, m) for g, m in masks if m.any()]
    # how far each pixel lies from any sign of the class: a reader that grows a place from what the
    # map shows can cover an unshown place only by growing into it from a shown one nearby
    sign = fill | near_words
    away = ndimage.distance_transform_edt(~sign) * pixel_m if sign.any() else np.full(img.shape[:2], np.inf)
    n_shown, shown, far, total = 0, 0.0, 0.0, 0.0
    for g, m in masks:
        a = g.area / metre ** 2
        ok = (fill & m).sum() * pixel_m ** 2 >= lg.FILL_SURE_M2 or bool((near_words & m).any())
        total += a
        n_shown += ok
        shown += a if ok else 0.0
        far += a if not ok and away[m].min() > lg.REACH_M else 0.0
    return {"places": len(masks), "shown": n_shown, "area": total,
            "shown_share": shown / total if total else float("nan"),
            "far_share": far / total if total else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", help="scene folders (default: Porto and every built extra scene)")
    ap.add_argument("--queries", nargs="+", default=["parks", "educational"])
    args = ap.parse_args()
    scenes = args.data or [DEFAULT_DATA] + [os.path.join(EXTRA, s, "out") for s in SCENES]
    scenes = [s for s in scenes if os.path.isfile(os.path.join(s, "map_carto.tif"))]
    if not scenes:
        print("no scene with map_carto.tif: give --data", file=sys.stderr)
        return 2
    cases = {q: c for q, _, c in CASES}
    bad = [q for q in args.queries if q not in cases]
    if bad:
        print(f"--queries: {', '.join(bad)} unknown; one of {', '.join(cases)}", file=sys.stderr)
        return 2
    print("| scene | query | truth places | shown by the map | truth area m2 | area shown | area unshown and out of "
          "reach | most recall |\n|---|---|---|---|---|---|---|---|")
    for s in scenes:
        name = os.path.basename(s.rstrip("/")) if os.path.basename(s.rstrip("/")) != "out" else \
            os.path.basename(os.path.dirname(s.rstrip("/")))
        for q in args.queries:
            r = ceiling(s, q, cases[q])
            print(f"| {name} | {q} | {r['places']} | {r['shown']} | {r['area']:.0f} | {r['shown_share']:.2f} | "
                  f"{r['far_share']:.2f} | {1 - r['far_share']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
