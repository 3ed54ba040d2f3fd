"""`python -m training.dataset`: a SocioSeg-format training set for your own city, from your imagery
and OpenStreetMap data, split train / val / test by area.

    python -m training.dataset --satellite ortho.tif [ortho2.tif ...] --osm city.osm.pbf \\
        [--map carto.tif] [--resolution 0.5] --out data/mycity

Then `python -m training.sft --data data/mycity`, `python -m training.grpo --data data/mycity`,
`python -m training.evaluate --data data/mycity --split test` and `python -m training.baselines
--dataset data/mycity`. What is written: training/citydata/build.py.
"""
from __future__ import annotations

import argparse
import logging
import sys

from backend.contract import TASK_LEVELS
from backend.errors import SocioSegError
from backend.logsetup import setup_logging

from .citydata.build import DEFAULT_MIN_AREA_M2, DEFAULT_TILE, PREVIEW_PER_LEVEL, Options, build


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.dataset", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--satellite", nargs="+", required=True, metavar="IMG",
                    help="georeferenced image(s) (GeoTIFF); several make one mosaic, the first wins where they overlap")
    ap.add_argument("--osm", required=True, help="OpenStreetMap data: .osm.pbf, .osm, or a GeoPackage/GeoJSON "
                                                 "converted from it by GDAL (tags in other_tags are read)")
    ap.add_argument("--map", help="your map raster (e.g. a Carto render, or what QGIS shows); default: the map "
                                  "rendered from --osm")
    ap.add_argument("--out", required=True, help="dataset folder (written whole at the end)")
    ap.add_argument("--resolution", type=float, metavar="M_PER_PX",
                    help="metres per pixel (default: the first satellite image's own)")
    ap.add_argument("--tile-size", type=int, default=DEFAULT_TILE, help="tile side in pixels (released: 768)")
    ap.add_argument("--crs", help="processing CRS (default: the image's if projected, else its UTM zone)")
    ap.add_argument("--bbox", type=float, nargs=4, metavar=("MINX", "MINY", "MAXX", "MAXY"),
                    help="only this area (in --bbox-crs, default the processing CRS)")
    ap.add_argument("--bbox-crs")
    ap.add_argument("--classes", help="comma-separated classes of resources/socio_classes.json (default: all)")
    ap.add_argument("--levels", nargs="+", default=list(TASK_LEVELS), choices=TASK_LEVELS,
                    help="query levels to make samples for")
    ap.add_argument("--per-level", type=int,
                    help="at most N samples per level in each split (default: as many as the smallest level "
                         "has, so the levels are balanced; 0: keep all)")
    ap.add_argument("--split", type=float, nargs=3, default=[0.6, 0.1, 0.3], metavar=("TRAIN", "VAL", "TEST"),
                    help="share of the area per split (SocioSeg: 0.6 0.1 0.3)")
    ap.add_argument("--block-tiles", type=int,
                    help="side of the square blocks of tiles the split assigns (default: the best for the area)")
    ap.add_argument("--min-area", type=float, default=DEFAULT_MIN_AREA_M2, metavar="M2",
                    help="a target covering less than this on a tile gives no sample")
    ap.add_argument("--max-nodata", type=float, default=0.0,
                    help="skip tiles with more than this fraction of pixels without imagery or map")
    ap.add_argument("--preview", type=int, default=PREVIEW_PER_LEVEL, metavar="N",
                    help="samples per level on preview.png")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def options_from(args) -> Options:
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    return Options(satellite=args.satellite, osm=args.osm, out=args.out, map=args.map,
                   resolution=args.resolution, tile_size=args.tile_size, crs=args.crs,
                   bbox=tuple(args.bbox) if args.bbox else None, bbox_crs=args.bbox_crs, classes=classes,
                   levels=tuple(dict.fromkeys(args.levels)), per_level=args.per_level, ratios=tuple(args.split),
                   block_tiles=args.block_tiles, min_area_m2=args.min_area, max_nodata=args.max_nodata,
                   seed=args.seed, overwrite=args.overwrite, preview_per_level=args.preview)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    setup_logging(logging.INFO if args.verbose else logging.WARNING)
    tty = sys.stderr.isatty()
    try:
        summary = build(options_from(args), progress=lambda k, n: print(
            f"\rtiles {k}/{n}", end="", file=sys.stderr, flush=True) if tty else None)
    except SocioSegError as exc:
        print(f"\nerror: {exc}" if tty else f"error: {exc}", file=sys.stderr)
        return 2
    if tty:
        print(file=sys.stderr)
    c = summary["counts"]
    for split, levels in c["samples"].items():
        print(f"{split:5s} " + "  ".join(f"{lv} {n}" for lv, n in levels.items()))
    tiles = summary["tiles"].values()
    print(f"{c['total']} samples from {sum(1 for t in tiles if t['state'] == 'used')} tiles of "
          f"{summary['tile_size']} px at {summary['resolution_m']:g} m/px ({summary['crs_name']}); "
          f"{sum(1 for t in tiles if t['split'] is None)} gap tiles between the splits")
    for reason, n in c["skipped"].items():
        print(f"skipped: {n} {reason}")
    if c["classes_without_samples"]:
        print(f"classes without a sample: {', '.join(c['classes_without_samples'])}")
    print(f"wrote {args.out} (dataset.json, preview.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
