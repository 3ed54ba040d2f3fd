"""Score the weight-free default (map reader + GrabCut) on synthetic towns, per task level.

    .venv/bin/python benchmarks/default_engine.py --per-level 200

Each sample is a 768 x 768 m synthetic town tile (1 m/px) with a name, class or function query. The
default runs once with the town's vector map and once with its Carto-like raster map. Name queries on a
raster map are unanswerable by design (the reader refuses them) and score as empty predictions.
Prints a Markdown table of cIoU / gIoU / F1 (percent) and seconds per sample.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from backend.pipeline.detect import Scene, detect  # noqa: E402
from backend.errors import InputError  # noqa: E402
from backend.geo.grid import tile_layout  # noqa: E402
from backend.geo.maprender import render_map  # noqa: E402
from backend.evaluation.metrics import Scoreboard, format_table  # noqa: E402
from backend.reasoners.mapreader import MapReader  # noqa: E402
from backend.synth.sample import synthetic_case  # noqa: E402
from backend.segmenters.grabcut import GrabCutSegmenter  # noqa: E402
from backend.synth.town import render_satellite, truth_mask  # noqa: E402
from backend.geo.vectormap import VectorMap  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-level", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    boards = {"vector map": Scoreboard(), "raster map": Scoreboard()}
    refused = {"vector map": 0, "raster map": 0}
    t0 = time.perf_counter()
    for level in ("name", "class", "function"):
        for k in range(args.per_level):
            offset = {"name": 0, "class": 1, "function": 2}[level]
            town, query, _, targets = synthetic_case(args.seed * 1_000_003 + k * 3 + offset, level=level)
            grid = town.grid
            sat = render_satellite(town, k)
            truth = truth_mask(targets, grid)
            valid = np.ones((grid.height, grid.width), bool)
            tiles = tile_layout(grid.width, grid.height)
            for kind, board in boards.items():
                vmap = VectorMap(town.features, grid.crs) if kind == "vector map" else None
                scene = Scene(grid, sat, render_map(town.features, grid), valid, tiles, vmap)
                t = time.perf_counter()
                try:
                    pred = detect(scene, query, MapReader(), GrabCutSegmenter(), task=level, keep_mask=True).mask
                except InputError:
                    refused[kind] += 1
                    pred = np.zeros_like(truth)
                board.add(pred, truth, level, time.perf_counter() - t)
        print(f"{level}: {args.per_level} samples done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    for kind, board in boards.items():
        print(f"\n### Map reader + GrabCut, {kind} ({refused[kind]} queries refused)\n")
        print(format_table(board.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
