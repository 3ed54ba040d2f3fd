"""`python -m training.evaluate`: gIoU, cIoU and F1 per task level on a SocioSeg split.

Either runs a model (any backend reasoner + segmenter, the weight-free default included) and saves
per-sample masks and responses, or scores a folder of saved masks (`--predictions DIR` with <id>.png).
Metric definitions: backend/metrics.py and the README.
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
from PIL import Image

from backend.errors import SocioSegError
from backend.evaluation.metrics import Scoreboard, format_table
from backend.logsetup import setup_logging

from .data import SocioSegData

log = logging.getLogger("training.evaluate")


def predict(sample, reasoner, segmenter):
    """(mask at the sample's size, stage-1 response, stage-2 response, note) for one sample."""
    from rasterio.crs import CRS

    from backend.pipeline.stages import make_view, run_tile

    h, w = sample.sat_image.shape[:2]
    try:
        if hasattr(reasoner, "prepare"):
            reasoner.prepare(sample.query, sample.level, None)
        # SocioSeg tiles carry no georeference; the map reader's minimum sizes are metric, so a pixel
        # is read as a metre of a projected CRS. The vision-language path ignores both.
        view = make_view(sample.map_image, sample.sat_image, sample.query, reasoner, task=sample.level,
                         transform=Affine.identity(), crs=CRS.from_epsg(3857), tile_id=str(sample.id))
        r = run_tile(view, reasoner, segmenter)
    except SocioSegError as exc:
        return np.zeros((h, w), bool), None, None, str(exc)
    return r.mask_on_tile(), r.responses[0], r.responses[1], "; ".join(r.notes)


def evaluate(data: SocioSegData, reasoner=None, segmenter=None, predictions: str | None = None,
             save: str | None = None, progress=None) -> dict:
    board = Scoreboard()
    missing, notes, wrong_size, found = [], {}, [], 0
    for i in range(len(data)):
        s = data.get(i)
        if s is None:
            continue
        t = time.perf_counter()
        if predictions:
            path = os.path.join(predictions, f"{s.id}.png")
            if os.path.exists(path):
                try:
                    pred = np.asarray(Image.open(path).convert("L")) > 127
                except OSError as exc:
                    raise SocioSegError(f"--predictions: {path} is not a readable image ({exc})") from None
                found += 1
                if pred.shape != s.mask.shape:      # stretched, it would be scored against the wrong pixels
                    wrong_size.append(f"{s.id}.png is {pred.shape[1]} x {pred.shape[0]} px, its sample "
                                      f"{s.mask.shape[1]} x {s.mask.shape[0]}")
                    continue
            else:
                missing.append(s.id)
                pred = np.zeros_like(s.mask)
        else:
            pred, r1, r2, note = predict(s, reasoner, segmenter)
            if note:
                notes[s.id] = note
            if save:
                os.makedirs(save, exist_ok=True)
                Image.fromarray(pred.astype(np.uint8) * 255).save(os.path.join(save, f"{s.id}.png"))
                with open(os.path.join(save, f"{s.id}.json"), "w", encoding="utf-8") as f:
                    json.dump({"query": s.query, "level": s.level, "stage1": r1, "stage2": r2, "note": note}, f)
        board.add(pred, s.mask, s.level, time.perf_counter() - t)
        if progress:
            progress(i + 1, len(data))
    if predictions and (missing or wrong_size) and board.all.summary()["samples"] == len(missing):
        parts = ([f"{len(missing)} missing, e.g. {missing[0]}.png"] if missing else []) + \
                ([f"{len(wrong_size)} not the size of their sample: {_some(wrong_size, 3)}"] if wrong_size else [])
        raise SocioSegError(f"nothing scored: --predictions {predictions} holds no usable <id>.png mask for the "
                            f"{len(data)} samples of split {data.split!r} ({'; '.join(parts)}); no score is written")
    if board.all.summary()["samples"] == 0:
        raise SocioSegError(f"nothing to score: none of the {len(data)} samples of split {data.split!r} in "
                            f"{data.source!r} could be read ({len(data.skipped)} corrupt or incomplete); "
                            "check --data and --split")
    if missing:
        log.warning("%d of %d samples have no prediction file in %s and count as empty masks: %s", len(missing),
                    len(data), predictions, _some([f"{m}.png" for m in missing]))
    if wrong_size:
        log.warning("%d prediction(s) are not the size of their sample and were not scored (resize them to the "
                    "sample's size): %s", len(wrong_size), _some(wrong_size))
    return {"metrics": board.summary(), "skipped": data.skipped, "missing_predictions": missing,
            "wrong_size_predictions": wrong_size, "notes": notes}


def _some(items: list[str], shown: int = 5) -> str:
    return ", ".join(map(str, items[:shown])) + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _finite(value):
    """NaN and infinities (a level with no timing, say) become null, so the file stays valid JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__)
    ap.add_argument("--data", required=True, help="SocioSeg folder (raw layout), parquet file or hub id")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", required=True, help="JSON file for the metrics")
    ap.add_argument("--predictions", help="score saved masks <id>.png instead of running a model")
    ap.add_argument("--save", help="folder for per-sample masks and responses when running a model")
    ap.add_argument("--reasoner", default="mapreader")
    ap.add_argument("--segmenter", default="grabcut")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-new-tokens", type=int, default=2048)
    ap.add_argument("--greedy", action="store_true",
                    help="greedy decoding (default: the released evaluation's sampling, temperature 1.0, "
                         "top_p 0.8, top_k 100, repetition_penalty 1.0)")
    ap.add_argument("--seed", type=int, default=None, help="makes a sampled evaluation repeatable")
    ap.add_argument("--limit", type=int, help="only the first N samples")
    args = ap.parse_args(argv)
    setup_logging(logging.WARNING)
    # cheap checks first: nothing is loaded, run or written when an option is wrong
    if args.predictions and not os.path.isdir(args.predictions):
        print(f"error: --predictions {args.predictions}: no such folder (it should hold <id>.png masks)",
              file=sys.stderr)
        return 2
    if os.path.isdir(args.out):
        print(f"error: --out {args.out} is a folder; give a .json file name", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print(f"error: --limit must be at least 1, not {args.limit}", file=sys.stderr)
        return 2
    try:
        data = SocioSegData(args.data, args.split, args.limit)
        reasoner = segmenter = None
        if not args.predictions:
            from backend.engines import build_reasoner, build_segmenter
            from backend.reasoners.qwen import GenerationSettings
            reasoner = build_reasoner(args.reasoner, args.device, GenerationSettings(
                max_new_tokens=args.max_new_tokens, do_sample=not args.greedy, seed=args.seed))
            segmenter = build_segmenter(args.segmenter, args.device)
        from tqdm import tqdm
        bar = tqdm(total=len(data), unit="sample", file=sys.stderr, leave=False)
        result = evaluate(data, reasoner, segmenter, args.predictions, args.save,
                          lambda k, n: bar.update(1))
        bar.close()
    except (SocioSegError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result.update({"data": args.data, "split": args.split,
                   "engine": "predictions" if args.predictions else f"{reasoner.name} + {segmenter.name}"})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    text = json.dumps(_finite(result), indent=2, allow_nan=False)     # strict JSON: no NaN
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(format_table(result["metrics"]))
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} corrupt or incomplete samples (listed in {args.out})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
