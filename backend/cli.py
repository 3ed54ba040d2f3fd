"""`python -m backend detect | info | selftest | download | sample | synth-socioseg`."""
from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import re
import signal
import sys
import threading
import time

from .contract import OUTLINES
from .errors import Cancelled, SocioSegError

log = logging.getLogger("backend")

_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _setup_logging(verbose: bool) -> None:
    from .logsetup import setup_logging

    setup_logging(logging.INFO if verbose else logging.WARNING)


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    from .engines import DEFAULT_REASONER, DEFAULT_SEGMENTER

    g = p.add_argument_group("engines")
    g.add_argument("--reasoner", default=DEFAULT_REASONER,
                   help="mapreader (no weights, default) | qwen[:HF_ID_OR_DIR] (the paper's model)")
    g.add_argument("--segmenter", default=DEFAULT_SEGMENTER,
                   help="grabcut (no weights, default) | sam2[:HF_ID_OR_DIR] | sam:MODEL_TYPE:CHECKPOINT")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto)")
    g.add_argument("--max-new-tokens", type=int, default=2048, help="response budget per stage (default 2048)")
    d = p.add_argument_group("decoding (the vision-language model; defaults: the released evaluation's sampling)")
    d.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    d.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    d.add_argument("--top-p", type=float, default=0.8, help="default 0.8")
    d.add_argument("--top-k", type=int, default=100, help="default 100")
    d.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="default 1.0, sent explicitly so that a checkpoint's own default (Qwen: 1.05) does not apply")
    d.add_argument("--seed", type=int, default=None, help="a seed makes a sampled run repeatable")
    f = p.add_argument_group("fidelity (where the product departs from the released procedure)")
    f.add_argument("--strict-json", action="store_true",
                   help="read answers with json.loads only, as released (default: salvage answers it rejects)")
    f.add_argument("--keep-coarse", action="store_true",
                   help="keep the stage-1 mask when stage 2 answers nothing usable (released: an empty mask)")
    f.add_argument("--outline", choices=OUTLINES, default="map",
                   help="where the map reader read a place's outline off the map: take it as the place's "
                        "outline (map, default) or let the segmenter cut the place from the satellite image "
                        "(image, as the released procedure does with any reasoner)")
    s = p.add_argument_group("throughput")
    s.add_argument("--batch-size", type=_positive_int, default=1,
                   help="tiles per batched generate call of the in-process model (default 1)")
    s.add_argument("--concurrency", type=_positive_int, default=4,
                   help="requests in flight to a model server (--reasoner openai:URL; default 4)")
    s.add_argument("--served-model", default=None,
                   help="the served model's name (default: the one the server lists at /v1/models); the API "
                        "key is read from SOCIOSEG_API_KEY or OPENAI_API_KEY")
    s.add_argument("--request-timeout", type=_seconds, default=600.0,
                   help="seconds one server request may take in all (default 600)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text}")
    return value


def _generation(args):
    from .reasoners.qwen import GenerationSettings

    return GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=not args.greedy,
                              temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                              repetition_penalty=args.repetition_penalty, seed=args.seed)


def _server(args) -> dict:
    return {"model": args.served_model, "concurrency": args.concurrency, "timeout": args.request_timeout}


def _options(args):
    from .pipeline.stages import PipelineOptions

    return PipelineOptions(tolerant_parsing=not args.strict_json, keep_coarse_on_failure=args.keep_coarse,
                           outline=args.outline)


def build_parser() -> argparse.ArgumentParser:
    from .contract import TASK_LEVELS
    from .geo import grid as geo

    ap = argparse.ArgumentParser(prog="python -m backend",
                                 description="Find socially defined places (schools, parks, named places) "
                                             "in a satellite image with a digital map.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    ap.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("detect", help="detect entities and write polygons")
    # Python 3.11's argparse takes "-1e7" for an option (its pattern knows no exponent), so that
    # "--bbox -1e7 -1e7 1e7 1e7" failed as "expected 4 arguments"; 3.13's pattern, here for all.
    d._negative_number_matcher = re.compile(r"^-\.?\d")
    d.add_argument("--satellite", required=True, help="satellite raster (GeoTIFF or anything GDAL reads)")
    d.add_argument("--map", required=True, help="map raster, or vector map (GeoPackage, GeoJSON, Shapefile)")
    d.add_argument("--query", required=True, help="what to find: a class (schools), a function "
                                                  "(educational) or a name (Jinan Zoo)")
    d.add_argument("--task", choices=TASK_LEVELS, help="task level of the query")
    d.add_argument("--out", required=True, help="output file: .gpkg (default format), .shp, .geojson or .parquet (GeoParquet)")
    d.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    d.add_argument("--bbox", type=float, nargs=4, metavar=("MINX", "MINY", "MAXX", "MAXY"),
                   help="area to process (default: where both inputs overlap)")
    d.add_argument("--bbox-crs", help="CRS of --bbox (default: the processing CRS)")
    d.add_argument("--crs", help="processing and output CRS (default: the satellite's, or its UTM zone)")
    d.add_argument("--resolution", type=float, default=geo.DEFAULT_RESOLUTION,
                   help="ground resolution in CRS units per pixel (default: about 1 m, in the CRS's units: "
                        "1 for metres, about 9e-06 for degrees)")
    d.add_argument("--tile-size", type=int, default=geo.DEFAULT_TILE, help="tile side in pixels (768)")
    d.add_argument("--overlap", type=int, default=geo.DEFAULT_OVERLAP, help="tile overlap in pixels (128)")
    d.add_argument("--max-tiles", type=int, default=geo.DEFAULT_MAX_TILES,
                   help=f"refuse areas needing more tiles than this ({geo.DEFAULT_MAX_TILES:,}): a limit for "
                        "scripts; memory does not grow with the area")
    d.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: tiles finished in OUT.tiles/ are not computed again")
    x = d.add_argument_group("scale (many workers, many machines)")
    x.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: tiles in this process (default); ray: tiles as tasks of a Ray cluster, the engines "
                        "loaded once per worker (the inputs and OUT's folder must be readable and writable on "
                        "every node: a shared folder)")
    x.add_argument("--ray-address", default=None,
                   help="the Ray cluster: auto (the one this machine has joined), HOST:PORT or ray://HOST:PORT "
                        "(default: a Ray started on this machine for the run)")
    x.add_argument("--workers", type=_positive_int, default=None,
                   help="Ray workers (default: one per GPU where the engines use one, else one per CPU)")
    d.add_argument("--preview", help="write a PNG: satellite and map side by side with the outlines")
    d.add_argument("--dump", help="folder for every tile's model inputs, prompts, answers and masks")
    d.add_argument("--truth", help="ground-truth vector file (fields name/class); prints the IoU")
    _add_engine_args(d)

    sub.add_parser("info", help="versions, device and models: paste this into bug reports")

    s = sub.add_parser("selftest", help="tiny models of the real classes, end to end, no downloads")
    s.add_argument("--dump", help="folder for the per-tile dump of the self-test runs")
    s.add_argument("--models-dir", help="keep the tiny models here (vlm/, sam2/, sam/)")

    rs = sub.add_parser("run-scene", help="the QGIS plugin's worker: detect on a captured scene folder")
    rs.add_argument("folder")

    dl = sub.add_parser("download", help="fetch a model from the Hugging Face hub into a folder (resumable)")
    dl.add_argument("repo_id", help="Hugging Face model id, e.g. vvangfaye/SocioReasoner-3B")
    dl.add_argument("--dest", required=True, help="folder to download into")
    dl.add_argument("--revision", help="branch, tag or commit (default: main)")
    dl.add_argument("--size-only", action="store_true", help="print the download size and stop")

    sm = sub.add_parser("sample", help="regenerate the bundled sample town")
    sm.add_argument("--out", default=None, help="folder (default resources/sample)")

    ss = sub.add_parser("synth-socioseg", help="write synthetic samples in SocioSeg's folder layout")
    ss.add_argument("--out", required=True)
    ss.add_argument("--count", type=int, default=8)
    ss.add_argument("--split", default="train")
    ss.add_argument("--seed", type=int, default=0)
    return ap


def _preflight(args) -> dict:
    """Every check that costs milliseconds, before rasters are read or models loaded; returns the
    inputs (option -> path) that no output may touch."""
    from .output.preview import check_preview
    from .output.vectors import check_output, output_files
    from .preflight import (check_dump, check_engines, check_inputs, check_not_inputs, check_query,
                            check_truth)

    args.query = check_query(args.query)
    _generation(args).kwargs()      # validates --temperature, --top-p, --top-k, --max-new-tokens
    inputs = {"--satellite": args.satellite, "--map": args.map, "--truth": args.truth}
    check_inputs(inputs)
    check_truth(args.truth)
    inputs.update(check_engines(args.reasoner, args.segmenter))
    outputs = {"--out": output_files(args.out)}
    if args.preview:
        outputs["--preview"] = [os.path.abspath(args.preview)]
    check_not_inputs(outputs, inputs)
    check_output(args.out, args.overwrite)
    if args.preview:
        check_preview(args.preview, args.overwrite)
    if args.dump:
        check_dump(args.dump, args.overwrite, inputs, outputs)
    return inputs


def _units(crs) -> str:
    return "degrees" if crs.is_geographic else (crs.linear_units or "units")


def _features_in(scene) -> int:
    """The vector map's features within the grid (what the run reads and renders), 0 for a raster map."""
    if scene.map_features is None:
        return 0
    import shapely

    return len(scene.map_features.tree.query(shapely.box(*scene.grid.bounds)))


def _check_executor(args) -> None:
    from .errors import InputError

    urls = args.reasoner.partition(":")[2].split(",") if args.reasoner.startswith("openai:") else []
    if args.executor == "local":
        if args.ray_address or args.workers:
            raise InputError(f"{'--ray-address' if args.ray_address else '--workers'} is for a Ray run: add --executor ray")
        if len(urls) > 1:
            raise InputError("a pool of model servers (openai:URL1,URL2,...) is shared out by --executor ray: add "
                             "it, or give one URL")
        return
    import importlib.util
    if importlib.util.find_spec("ray") is None:
        raise InputError("--executor ray needs Ray: pip install 'ray[default]' (or leave --executor out)")
    if args.ray_address and not re.fullmatch(r"auto|(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+", args.ray_address):
        raise InputError(f"--ray-address {args.ray_address!r} is not auto, HOST:PORT or ray://HOST:PORT")
    if any(not u.strip() for u in urls):
        raise InputError(f"--reasoner {args.reasoner}: an empty URL in the list of model servers")


def _executor(args, reasoner, segmenter):
    """The local executor, or a Ray one that builds the engines on its workers from the options."""
    if args.executor == "ray":
        from .executors.ray import EngineSpecs, RayExecutor
        return RayExecutor(EngineSpecs(args.reasoner, args.segmenter, args.device, _generation(args), _server(args)),
                           address=args.ray_address, workers=args.workers)
    from .executors.local import LocalExecutor
    return LocalExecutor(reasoner, segmenter)


def cmd_detect(args) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .engines import build_reasoner, build_segmenter, parse_reasoner
    from .geo import base as geo_base
    from .geo.grid import parse_crs
    from .output.atomic import write_failure
    from .output.preview import write_preview
    from .output.vectors import write_detection
    from .contract import Throughput, format_duration
    from .geo.tiles import estimate_seconds
    from .pipeline.detect import RunSettings, load_scene
    from .pipeline.resume import remove_tiles, tiles_dir_for
    from .pipeline.stages import answered_summary, no_answers_message

    _preflight(args)
    _check_executor(args)
    crs = parse_crs(args.crs) if args.crs else None
    bbox_crs = parse_crs(args.bbox_crs) if args.bbox_crs else None
    t0 = time.perf_counter()
    # The map reader is cheap to build: build it now so that its query and legend checks come first.
    reasoner = build_reasoner(args.reasoner, args.device, _generation(args), _server(args)) \
        if parse_reasoner(args.reasoner).kind == "mapreader" else None
    if reasoner is not None and hasattr(reasoner, "spec"):
        reasoner.spec(args.query, args.task)
    scene = load_scene(args.satellite, args.map, crs=crs, resolution=args.resolution, bbox=args.bbox,
                       bbox_crs=bbox_crs, tile_size=args.tile_size, overlap=args.overlap,
                       max_tiles=args.max_tiles)
    if args.executor == "ray":         # the engines are loaded on the workers, not here
        segmenter = None
        names = (reasoner.name if reasoner else args.reasoner, args.segmenter)
    else:
        reasoner = reasoner or build_reasoner(args.reasoner, args.device, _generation(args), _server(args))
        segmenter = build_segmenter(args.segmenter, args.device)
        names = (reasoner.name, segmenter.name)
    g = scene.grid
    print(f"grid: {g.width} x {g.height} px at {g.resolution:.6g} {_units(g.crs)}/px in "
          f"{g.crs.to_string()}, {len(scene.tiles)} tile(s); reasoner {names[0]}, segmenter "
          f"{names[1]}", file=sys.stderr)
    total = len(scene.tiles)
    look_step = geo_base.sample_step(g)      # what --truth and --preview look at: bounded memory
    features = _features_in(scene)
    estimate = estimate_seconds(total, parse_reasoner(args.reasoner).kind, features)
    if estimate is not None and (total > 1 or estimate >= 10):
        print(f"estimated time: {format_duration(estimate)} for {total} tile(s)"
              + (f" and a map of {features:,} features" if features else "") + " on a 2-core CPU", file=sys.stderr)
    bar = None
    if total > 1:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="tile", file=sys.stderr, leave=False,
                   bar_format="{percentage:3.0f}%|{bar:20}| {desc}")
    clock = Throughput()

    def progress(frac, msg):
        if bar is not None:
            done = min(total, int(frac * total + 1e-9))
            bar.n = done
            bar.set_description_str(f"{clock.update(done, total, time.perf_counter())} · {msg}")

    # Log records and Python warnings go above the bar (tqdm.write), never into its line.
    logging.captureWarnings(True)
    try:
        with logging_redirect_tqdm():
            settings = RunSettings(args.query, args.task, _options(args), batch_size=args.batch_size,
                                   keep_mask=look_step if (args.truth or args.preview) else 0, dump_dir=args.dump,
                                   tiles_dir=tiles_dir_for(args.out), resume=args.resume)
            result = _executor(args, reasoner, segmenter).run(scene, settings, progress)
    except OSError as exc:   # a full or read-only disk under the dump or the tile folder beside --out
        if exc.errno not in _WRITE_ERRNOS:
            raise
        where = os.path.abspath(str(exc.filename or args.out))
        in_dump = args.dump and where.startswith(os.path.abspath(args.dump) + os.sep)
        raise write_failure(where, "--dump" if in_dump else "--out", exc) from None
    finally:
        logging.captureWarnings(False)
        if bar is not None:
            bar.close()
    if result.asked and not result.answered:     # an empty result would be a wrong success
        remove_tiles(tiles_dir_for(args.out))
        raise SocioSegError(no_answers_message(result.asked, result.unanswered_notes, args.max_new_tokens))
    partial = answered_summary(result.asked, result.answered)
    if partial:
        log.warning("only %s: the others got no usable answer from the model (their area is left empty)", partial)
    write_detection(args.out, result, overwrite=args.overwrite)
    remove_tiles(tiles_dir_for(args.out))     # only once the output is safely in place
    truth = None
    print(f"found {len(result.entities)} entit{'y' if len(result.entities) == 1 else 'ies'} for "
          f"{args.query!r} in {time.perf_counter() - t0:.1f} s" + (f" ({partial})" if partial else ""))
    print(f"wrote {args.out}")
    for e in result.entities:
        a = e.attrs
        label = a["name"] or "(unnamed)"
        sure = "" if a.get("certain", 1) else "  (uncertain: the map does not tell the class apart here)"
        print(f"  - {label}: {a['area_m2']:.0f} m2{sure}" + (f"  [{a['note']}]" if a["note"] else ""))
    sampled = (f"; on 1 pixel in {look_step} x {look_step}, as the area has more than "
               f"{geo_base.WHOLE_AREA_MAX_PIXELS:,} pixels" if look_step > 1 else "")
    if args.truth:
        from .evaluation.metrics import mask_iou
        from .evaluation.truth import truth_mask_for
        truth = truth_mask_for(args.truth, geo_base.sampled_grid(g, look_step), args.query, args.task)
        # Score only where the inputs have data: truth beyond the imagery or the map cannot be found.
        whole = scene.sampled(look_step)
        outside = int((truth & ~whole[2]).sum())
        truth &= whole[2]
        print(f"IoU against {args.truth}: {mask_iou(result.mask, truth):.3f} "
              f"(truth {int(truth.sum())} px, detected {int(result.mask.sum())} px"
              + (f"; {outside} px of truth where the inputs have no data left out" if outside else "")
              + sampled + ")")
    if args.preview:
        try:
            sat_rgb, map_rgb, _ = whole if args.truth else scene.sampled(look_step)
            write_preview(args.preview, sat_rgb, map_rgb, result.mask,
                          truth if truth is not None and truth.any() else None, overwrite=args.overwrite)
        except SocioSegError as exc:
            raise SocioSegError(f"{exc} ({args.out} was written)") from None
        print(f"wrote {args.preview}")
    if args.dump:
        print(f"wrote per-tile dump to {args.dump}")
    return 0


def cmd_info(args) -> int:
    from .info import diagnostics

    print(diagnostics())
    return 0


def cmd_selftest(args) -> int:
    from .selftest.run import run_selftest

    return 0 if run_selftest(models_dir=args.models_dir, dump_dir=args.dump) else 1


def cmd_sample(args) -> int:
    from .resources import SAMPLE_DIR
    from .synth.sample import write_sample

    out = args.out or SAMPLE_DIR
    print(write_sample(out), "->", out)
    return 0


def cmd_synth(args) -> int:
    from .synth.sample import write_socioseg

    ids = write_socioseg(args.out, args.count, args.split, args.seed)
    print(f"wrote {len(ids)} samples to {os.path.join(args.out, args.split)}")
    return 0


def cmd_run_scene(args) -> int:
    from .worker import main as worker_main

    return worker_main(args.folder)


def cmd_download(args) -> int:
    from .download import main as download_main

    return download_main(args)


COMMANDS = {"detect": cmd_detect, "download": cmd_download, "run-scene": cmd_run_scene, "info": cmd_info, "selftest": cmd_selftest, "sample": cmd_sample,
            "synth-socioseg": cmd_synth}


def _terminated(signum, frame):
    # SIGTERM (the plugin's Cancel, `kill`, a job scheduler) unwinds like Ctrl-C, so that a write in
    # progress puts the previous output back and its staging folder is removed.
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    try:
        return COMMANDS[args.command](args)
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return 130
    except SocioSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: no traceback in the user's face
        if args.debug:
            raise
        print(f"internal error: {type(exc).__name__}: {exc}\nRun again with --debug for the traceback "
              "and include the output of `python -m backend info` in a bug report.", file=sys.stderr)
        return 1
