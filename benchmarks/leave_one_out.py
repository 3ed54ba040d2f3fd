"""Leave-one-city-out for the Carto reader's constants (used by `real_maps.py --leave-one-out`).

Every setting of a small grid of the reader's constants is run once on every city's Carto raster;
then, for each city, the setting is chosen on the OTHER cities (best mean IoU of the objective
classes, mean over the cities that have the class) and that setting's score on the held-out city is
its leave-one-city-out score. The in-sample table is the committed constants on every city.

The constants are module attributes of backend/reasoners/legend.py and mapreader.py, read when a map
is read, so a setting is applied by setting those attributes for the run (and restoring them); the
reader's files are not edited. A constant given as a keyword default (e.g. text_pixels' word sizes)
would not follow such an override: only names in OVERRIDABLE are accepted.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import time

import numpy as np

from backend.reasoners import legend as _legend
from backend.reasoners import mapreader as _mapreader

# name -> (module, why it may matter). Lengths in metres of ground.
OVERRIDABLE = {
    "REACH_M": (_legend, "how far a place reaches beyond its label (educational sites shown by a name only)"),
    "REACH_FILL_M": (_legend, "how far beyond its visible fill (parks, schools' pale fill between buildings)"),
    "FAVOUR": (_legend, "nearer the evidence for than FAVOUR x the evidence against"),
    "BRIDGE_M": (_legend, "gaps closed through a place"),
    "GROUP_M": (_legend, "fragments this close are one place"),
    "ROAD_M": (_legend, "roads this wide inside a place are part of it"),
    "MARK_REACH_M": (_legend, "a label this near a shared-fill region speaks for it"),
    "UNIT_SHARE": (_legend, "share of a building near the evidence for it to join"),
    "UNIT_RING": (_legend, "share of a building's outline on the fill, where only a fill speaks for it (0: off)"),
    "WORK_M": (_mapreader, "metres per pixel the raster is read at"),
}
# The default grid: small (2 CPU cores shared by 8 people), on the two constants that decide how far a
# place grows from what the map shows of it, which is where parks and campuses were under- or
# over-grown on the scenes measured so far.
DEFAULT_GRID = ["REACH_M=40,80", "REACH_FILL_M=12,30"]      # one at a time: 5 settings
QUERIES = ("parks", "educational", "schools", "hospitals")
OBJECTIVE = ("parks", "educational")


class GridError(ValueError):
    """A grid or override the harness cannot apply; the message names the option to fix."""


def parse_grid(specs: list[str], each: bool = False) -> list[dict[str, float]]:
    """['REACH_M=40,60', 'ROAD_M=8'] -> every combination, as {name: value} dicts; with `each`, one
    constant at a time moves through its values while the others keep their committed values."""
    axes = []
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip()
        if not sep or name not in OVERRIDABLE:
            raise GridError(f"--grid {spec!r}: give NAME=v1,v2,... with NAME one of {', '.join(OVERRIDABLE)}")
        try:
            vals = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise GridError(f"--grid {spec!r}: the values must be numbers") from None
        if not vals or any(v <= 0 for v in vals):
            raise GridError(f"--grid {spec!r}: give at least one value, all > 0")
        axes.append([(name, v) for v in dict.fromkeys(vals)])
    if len({a[0][0] for a in axes}) != len(axes):
        raise GridError("--grid: each constant once")
    if each:
        base = defaults([a[0][0] for a in axes])
        return [base] + [{**base, n: v} for axis in axes for n, v in axis if v != base[n]]
    return [dict(c) for c in itertools.product(*axes)] if axes else [{}]


def defaults(names) -> dict[str, float]:
    return {n: float(getattr(OVERRIDABLE[n][0], n)) for n in names}


def key(setting: dict[str, float]) -> str:
    return ",".join(f"{n}={v:g}" for n, v in sorted(setting.items())) or "committed"


@contextlib.contextmanager
def constants(setting: dict[str, float]):
    """The reader with these constants for the duration (module attributes, restored afterwards)."""
    old = {}
    try:
        for name, value in setting.items():
            mod = OVERRIDABLE[name][0]
            old[name] = getattr(mod, name)
            setattr(mod, name, type(old[name])(value))
        yield
    finally:
        for name, value in old.items():
            setattr(OVERRIDABLE[name][0], name, value)


def choose(table: dict, held_out: str, settings: list[str], objective=OBJECTIVE) -> str:
    """The setting with the best mean IoU over the cities other than `held_out` (per class: mean over
    the cities whose truth has the class; then mean over the objective classes). Ties keep the
    earlier setting in `settings` (the committed values come first). table[city][setting][query] is a
    score row with 'iou' and 'truth_px'."""
    others = [c for c in table if c != held_out]
    if not others:
        raise GridError("--leave-one-out needs at least two cities")
    best, best_v = None, -1.0
    for s in settings:
        per_class = []
        for q in objective:
            vals = [table[c][s][q]["iou"] for c in others if table[c][s][q]["truth_px"] > 0]
            if vals:
                per_class.append(float(np.mean(vals)))
        v = float(np.mean(per_class)) if per_class else 0.0
        if v > best_v + 1e-12:
            best, best_v = s, v
    return best


def summary(rows: dict, query: str) -> tuple[float, float, str] | None:
    """Mean and worst IoU (and the worst city) over the cities whose truth has the class."""
    vals = [(r[query]["iou"], c) for c, r in rows.items() if r[query]["truth_px"] > 0]
    if not vals:
        return None
    worst = min(vals)
    return float(np.mean([v for v, _ in vals])), worst[0], worst[1]


def code_id() -> str:
    """A short hash of the reader's source, so a --cache never serves runs of other code."""
    import hashlib
    h = hashlib.sha256()
    for mod in (_legend, _mapreader):
        with open(mod.__file__, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:10]


def city_name(folder: str) -> str:
    """The scene's name: its folder, or the folder above a build's `out/`."""
    parts = os.path.normpath(os.path.abspath(folder)).split(os.sep)
    return parts[-2] if parts[-1] == "out" and len(parts) > 1 else parts[-1]


def measure_city(folder: str, settings: list[dict], resolution: float, queries=QUERIES,
                 cache: dict | None = None, log=sys.stderr) -> dict:
    """{setting key: {query: score row}} for the city's Carto raster (one scene load, one reader per
    setting: the reader caches what it read of the map, which depends on the constants)."""
    # imported here: real_maps imports this module
    from benchmarks.real_maps import CASES, MAPS, score, truth_geoms
    from backend.geo.raster import rasterize
    from backend.pipeline.detect import detect, load_scene
    from backend.pipeline.stages import PipelineOptions
    from backend.reasoners.mapreader import MapReader
    from backend.segmenters.grabcut import GrabCutSegmenter

    name = city_name(folder)
    cache = {} if cache is None else cache
    out = {}
    ck = lambda s: f"{code_id()}|{name}|{resolution:g}|{key(s)}"  # noqa: E731
    todo = [s for s in settings if ck(s) not in cache]
    if todo:
        scene = load_scene(os.path.join(folder, "satellite.tif"), os.path.join(folder, MAPS["carto raster"]),
                           resolution=resolution)
        g = scene.grid
        truths = truth_geoms(os.path.join(folder, "truth.geojson"), g.crs)
        valid = scene.whole()[2]
        cases = {q: (task, cls) for q, task, cls in CASES}
        masks = {q: rasterize([x for c in cases[q][1] for x in truths.get(c, [])], (g.height, g.width), g.transform) & valid
                 for q in queries}
        for s in todo:
            rows = {}
            with constants(s):
                reader = MapReader()
                for q in queries:
                    t = time.perf_counter()
                    det = detect(scene, q, reader, GrabCutSegmenter(), task=cases[q][0], keep_mask=True,
                                 options=PipelineOptions(outline="map"))
                    rows[q] = {**score(det.mask, masks[q]), "places": len(det.entities),
                               "truth_px": int(masks[q].sum()), "pred_px": int(det.mask.sum()),
                               "seconds": time.perf_counter() - t}
            cache[ck(s)] = rows
            print(f"  {name:12s} {key(s):32s} " + " ".join(f"{q} {rows[q]['iou']:.2f}" for q in queries), file=log)
    for s in settings:
        out[key(s)] = cache[ck(s)]
    return out


def leave_one_out(folders: list[str], grid: list[str], resolution: float = 1.0, cache_path: str | None = None,
                  queries=QUERIES, each: bool = True, log=sys.stderr) -> dict:
    """In-sample (committed constants) and leave-one-city-out rows per city, with the chosen settings."""
    settings = parse_grid(grid, each)
    names = sorted({n for s in settings for n in s})
    committed = defaults(names)
    if committed not in settings:
        settings.insert(0, committed)
    else:
        settings.insert(0, settings.pop(settings.index(committed)))
    cache = {}
    if cache_path and os.path.exists(cache_path):
        with open(cache_path, encoding="utf-8") as fh:
            cache = json.load(fh)
    table = {}
    # settings outside, cities inside: the committed constants on every city come first (the
    # in-sample table), and an interrupted run keeps whole settings in the cache
    for setting in settings:
        for folder in folders:
            table.setdefault(city_name(folder), {}).update(
                measure_city(folder, [setting], resolution, queries, cache, log))
            if cache_path:
                with open(cache_path, "w", encoding="utf-8") as fh:
                    json.dump(cache, fh)
    keys = [key(s) for s in settings]
    chosen = {c: choose(table, c, keys) for c in table}
    return {"settings": keys, "committed": key(committed), "chosen": chosen,
            "in_sample": {c: table[c][key(committed)] for c in table},
            "held_out": {c: table[c][chosen[c]] for c in table},
            "table": table, "resolution": resolution}


def report(res: dict, queries=QUERIES, out=sys.stdout) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"\nLeave-one-city-out on the Carto raster at {res['resolution']:g} m/px: grid {len(res['settings'])} settings "
      f"({'; '.join(res['settings'])}); committed {res['committed']}")
    p("\n| city | constants chosen without it |\n|---|---|")
    for c, s in res["chosen"].items():
        p(f"| {c} | {s} |")
    p("\n| city | query | in-sample IoU | P | R | held-out IoU | P | R | places (held-out) |")
    p("|---|---|---|---|---|---|---|---|---|")
    for c in res["in_sample"]:
        for q in queries:
            a, b = res["in_sample"][c][q], res["held_out"][c][q]
            if b["truth_px"] == 0:
                p(f"| {c} | {q} (none in truth) | – | – | – | – | – | – | {b['places']} false |")
                continue
            p(f"| {c} | {q} | {a['iou']:.2f} | {a['precision']:.2f} | {a['recall']:.2f} | {b['iou']:.2f} | "
              f"{b['precision']:.2f} | {b['recall']:.2f} | {b['places']} |")
    p("\n| query | in-sample mean | worst (city) | held-out mean | worst (city) | target mean / worst |")
    p("|---|---|---|---|---|---|")
    targets = {"parks": "0.75 / 0.65", "educational": "0.60 / 0.45"}
    for q in queries:
        a, b = summary(res["in_sample"], q), summary(res["held_out"], q)
        if a is None:
            continue
        p(f"| {q} | {a[0]:.2f} | {a[1]:.2f} ({a[2]}) | {b[0]:.2f} | {b[1]:.2f} ({b[2]}) | {targets.get(q, '–')} |")
