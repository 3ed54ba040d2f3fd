"""`python -m training.baselines`: one table of what each model scores on a city dataset's test split.

    python -m training.baselines --dataset data/mycity [--released qwen:/path/SocioReasoner-3B
        --segmenter sam2:/path/sam2] [--trained qwen:runs/grpo/final ...] --out baselines.json

Rows: the weight-free default (map reader + GrabCut, always), the released checkpoint (`--released`)
and your fine-tuned models (`--trained`, repeatable), all on the same samples; cIoU / gIoU / F1 per
query level (backend/evaluation/metrics.py), and how many queries an engine refused (scored as empty
masks: the map reader cannot read names off a raster map). The dataset is one `python -m training.dataset`
wrote: its dataset.json gives each tile's place on the ground, so the map reader measures its minimum
sizes in metres as at detection (a plain SocioSeg folder has no such file: pixels count as metres then).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np
from affine import Affine

from backend.errors import SocioSegError
from backend.evaluation.metrics import Scoreboard
from backend.logsetup import setup_logging

from .data import SocioSegData

log = logging.getLogger("training.baselines")
DEFAULT = ("default (map reader + GrabCut)", "mapreader", "grabcut")


class Georef:
    """Each sample's tile on the ground, from dataset.json (identity pixels where there is none)."""

    def __init__(self, root: str, split: str):
        from rasterio.crs import CRS
        self.root, self.split = root, split
        path = os.path.join(root, "dataset.json")
        self.meta = None
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                self.meta = json.load(f)
            self.crs = CRS.from_wkt(self.meta["crs"])
        else:
            self.crs = CRS.from_epsg(3857)

    def __call__(self, sample) -> Affine:
        if self.meta is None:
            return Affine.identity()
        with open(os.path.join(self.root, self.split, sample.id, "question.json"), encoding="utf-8") as f:
            tile = self.meta["tiles"][json.load(f)["tile"]]
        minx, _, maxx, maxy = tile["bounds"]
        res = (maxx - minx) / sample.sat_image.shape[1]
        return Affine(res, 0.0, minx, 0.0, -res, maxy)


def predict(sample, reasoner, segmenter, transform: Affine, crs) -> tuple[np.ndarray, str | None]:
    """(mask, None), or (an empty mask, why) where the engine refuses the query (the map reader cannot
    read names off a raster map, say)."""
    from backend.pipeline.stages import make_view, run_tile

    h, w = sample.sat_image.shape[:2]
    try:
        if hasattr(reasoner, "prepare"):
            reasoner.prepare(sample.query, sample.level, None)
        view = make_view(sample.map_image, sample.sat_image, sample.query, reasoner, task=sample.level,
                         transform=transform, crs=crs, tile_id=str(sample.id))
        r = run_tile(view, reasoner, segmenter)
    except SocioSegError as exc:        # a query the engine cannot answer scores as an empty mask
        return np.zeros((h, w), bool), str(exc)
    return r.mask_on_tile(), None


def score(data: SocioSegData, georef: Georef, reasoner, segmenter, progress=None) -> dict:
    board = Scoreboard()
    refused: dict[str, int] = {}
    for i in range(len(data)):
        s = data.get(i)
        if s is None:
            continue
        t = time.perf_counter()
        pred, why = predict(s, reasoner, segmenter, georef(s), georef.crs)
        if why:
            refused[s.level or "all"] = refused.get(s.level or "all", 0) + 1
        board.add(pred, s.mask, s.level, time.perf_counter() - t)
        if progress:
            progress()
    if board.all.summary()["samples"] == 0:
        raise SocioSegError(f"no readable sample in split {data.split!r} of {data.source!r}; check --dataset "
                            "and --split")
    out = board.summary()
    for level, n in refused.items():     # scored as empty masks, and said
        out.setdefault(level, {})["refused"] = n
    out["all"]["refused"] = sum(refused.values())
    return out


def table(rows: dict[str, dict]) -> str:
    levels = [lv for lv in ("name", "class", "function", "all") if any(lv in m for m in rows.values())]
    head = "| model | " + " | ".join(f"{lv} cIoU / gIoU / F1" for lv in levels) + " | samples | refused |"
    lines = [head, "|" + "---|" * (len(levels) + 3)]
    for name, m in rows.items():
        cells = [" / ".join(f"{100 * m[lv][k]:.1f}" for k in ("cIoU", "gIoU", "F1")) if lv in m else "-"
                 for lv in levels]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m['all']['samples']} | {m['all']['refused']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.baselines", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="a dataset folder from python -m training.dataset")
    ap.add_argument("--split", default="test")
    ap.add_argument("--released", metavar="REASONER", help="the released checkpoint, e.g. qwen:/path/SocioReasoner-3B")
    ap.add_argument("--trained", action="append", default=[], metavar="REASONER",
                    help="a fine-tuned model, e.g. qwen:runs/grpo/final (repeatable)")
    ap.add_argument("--segmenter", default="grabcut",
                    help="segmenter for the --released and --trained rows (released: sam2:PATH)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-new-tokens", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0, help="sampling seed of the vision-language rows")
    ap.add_argument("--limit", type=int, help="only the first N samples")
    ap.add_argument("--out", help="JSON file for the table")
    args = ap.parse_args(argv)
    setup_logging(logging.WARNING)
    if not os.path.isdir(args.dataset):
        print(f"error: --dataset {args.dataset}: no such folder", file=sys.stderr)
        return 2
    if args.out and os.path.isdir(args.out):
        print(f"error: --out {args.out} is a folder; give a .json file name", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print(f"error: --limit must be at least 1, not {args.limit}", file=sys.stderr)
        return 2
    models = [DEFAULT] + ([("released checkpoint", args.released, args.segmenter)] if args.released else []) + [
        (f"trained {spec.split(':', 1)[-1]}", spec, args.segmenter) for spec in args.trained]
    rows: dict[str, dict] = {}
    try:
        from backend.engines import build_reasoner, build_segmenter, parse_reasoner, parse_segmenter
        from backend.reasoners.qwen import GenerationSettings
        for _, r, s in models:          # spelling mistakes before an hour of scoring
            parse_reasoner(r)
            parse_segmenter(s)
        data = SocioSegData(args.dataset, args.split, args.limit)
        georef = Georef(args.dataset, args.split)
        for name, r, s in models:
            reasoner = build_reasoner(r, args.device, GenerationSettings(
                max_new_tokens=args.max_new_tokens, seed=args.seed))
            rows[name] = score(data, georef, reasoner, build_segmenter(s, args.device))
            del reasoner
    except (SocioSegError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(rows))
    if args.out:
        from .evaluate import _finite
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(_finite({"dataset": args.dataset, "split": args.split, "models": {
                name: {"reasoner": r, "segmenter": s, "metrics": rows[name]} for name, r, s in models}}),
                f, indent=2, allow_nan=False)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
