"""A SocioSeg-format training set from a city's own imagery and OpenStreetMap data.

Layout (what training/data.py reads, raw layout):

    DIR/dataset.json                    CRS, grid, tiles (bounds, split), sources and hashes, counts
    DIR/preview.png                     a few samples per level, the mask drawn on both images
    DIR/<split>/<id>/map.png sat.png mask.png question.json

Tiles are `tile_size` px squares of one north-up grid at the stated resolution, laid edge to edge (no
overlap, so no pixel is in two tiles). The satellite image and the map are read onto the grid by the
same code as detection (backend/geo/window.py), so they line up exactly. The map is the user's map
raster when given, else a rendering of the OSM data (backend/geo/maprender.py, as detection draws a
vector map). Masks are the OSM outlines of the places (targets.py) rasterised on the tile.

One sample per (tile, target) whose mask covers at least `min_area_m2`: a named place (Socio-name),
a class of resources/socio_classes.json (Socio-class), a function (Socio-function). `problem` holds the
query text as SocioSeg's question.json does; `task` the level.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import shapely

from backend.contract import TASK_LEVELS
from backend.errors import InputError
from backend.geo import grid as geo
from backend.geo.raster import rasterize
from backend.geo.tiles import Tile
from backend.geo.vectormap import VectorMap, is_vector_path, units_per_metre
from backend.pipeline.query import _table, normalise

from . import split as splitting
from .targets import Place, Targets, class_table_version, find_places

log = logging.getLogger(__name__)

DEFAULT_TILE = 768                 # the released model's tile
DEFAULT_MIN_AREA_M2 = 100.0        # the map reader's smallest place: smaller in-tile slivers are no target
PREVIEW_PER_LEVEL = 4
PREVIEW_CELL = 256
FORMAT = "socioseg-raw/1"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


@dataclass
class Options:
    satellite: list[str]
    osm: str
    out: str
    map: str | None = None
    resolution: float | None = None        # metres per pixel; None: the first satellite image's own
    tile_size: int = DEFAULT_TILE
    crs: str | None = None
    bbox: tuple | None = None
    bbox_crs: str | None = None
    classes: list[str] | None = None
    levels: tuple[str, ...] = TASK_LEVELS
    per_level: int | None = None           # None: balanced (the smallest level's count); 0: keep all
    ratios: tuple[float, float, float] = splitting.DEFAULT_RATIOS
    block_tiles: int | None = None
    min_area_m2: float = DEFAULT_MIN_AREA_M2
    max_nodata: float = 0.0
    seed: int = 0
    overwrite: bool = False
    preview_per_level: int = PREVIEW_PER_LEVEL


@dataclass
class Candidate:
    tile: Tile
    level: str
    problem: str
    places: list[str]
    mask: np.ndarray
    split: str
    place_area: dict[str, float] = field(default_factory=dict)   # place id -> its pixels on this tile

    @property
    def id(self) -> str:
        return f"{tile_name(self.tile)}-{self.level}-{slug(self.problem)}"


def tile_name(t: Tile) -> str:
    return f"r{t.row:03d}c{t.col:03d}"


def slug(text: str) -> str:
    ascii_ = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    s = re.sub(r"[^A-Za-z0-9]+", "_", ascii_).strip("_").lower()[:40] or "x"
    return f"{s}_{hashlib.sha1(text.encode('utf-8')).hexdigest()[:6]}"


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- checks and the grid ---------------------------------------------------------------------------
def check_options(o: Options) -> None:
    """Cheap checks, before anything is read or written."""
    if not o.satellite:
        raise InputError("give at least one satellite image: --satellite IMG.tif")
    for p, opt in [(p, "--satellite") for p in o.satellite] + [(o.osm, "--osm")] + (
            [(o.map, "--map")] if o.map else []):
        if not p or not os.path.isfile(p):
            raise InputError(f"{opt} {p!r}: no such file")
    if not is_vector_path(o.osm):
        raise InputError(f"--osm {o.osm}: give OpenStreetMap data as .osm.pbf, .osm or a vector file "
                         "(GeoPackage, GeoJSON, Shapefile) converted from it")
    if o.map and is_vector_path(o.map):
        raise InputError(f"--map {o.map} is a vector file: --map takes a map raster (a GeoTIFF of what the "
                         "map looks like); leave it out to render the map from --osm")
    if o.resolution is not None and not (o.resolution > 0 and math.isfinite(o.resolution)):
        raise InputError(f"--resolution must be a positive number of metres per pixel, not {o.resolution}")
    if o.tile_size < 64:
        raise InputError(f"--tile-size {o.tile_size} is too small: use at least 64 (released: 768)")
    if not 0 <= o.max_nodata < 1:
        raise InputError(f"--max-nodata must be a fraction in [0, 1), not {o.max_nodata}")
    if o.min_area_m2 < 0:
        raise InputError(f"--min-area must be 0 or more square metres, not {o.min_area_m2}")
    if o.per_level is not None and o.per_level < 0:
        raise InputError(f"--per-level must be 0 (keep all) or more, not {o.per_level}")
    if o.block_tiles is not None and o.block_tiles < 1:
        raise InputError(f"--block-tiles must be at least 1, not {o.block_tiles}")
    if len(o.ratios) != 3 or min(o.ratios) <= 0:
        raise InputError(f"--split takes three positive numbers (train val test), not {tuple(o.ratios)}")
    bad = [lv for lv in o.levels if lv not in TASK_LEVELS]
    if bad or not o.levels:
        raise InputError(f"--levels {' '.join(bad)}: choose among {', '.join(TASK_LEVELS)}")
    if o.classes:
        import difflib
        table = _table()["classes"]
        for c in o.classes:
            if c not in table:
                close = difflib.get_close_matches(c, list(table), n=3)
                raise InputError(f"--classes: {c!r} is not a class of resources/socio_classes.json"
                                 + (f" (did you mean {', '.join(close)}?)" if close else "")
                                 + f"; the classes are: {', '.join(table)}")
    if os.path.exists(o.out) and not o.overwrite:
        raise InputError(f"--out {o.out} already exists: choose another folder or add --overwrite")
    if os.path.exists(o.out) and not os.path.isdir(o.out):
        raise InputError(f"--out {o.out} is a file, not a folder")
    src = {os.path.realpath(p) for p in o.satellite + [o.osm] + ([o.map] if o.map else [])}
    out = os.path.realpath(o.out)
    if any(s == out or s.startswith(out + os.sep) for s in src):
        raise InputError(f"--out {o.out} holds the input files; --overwrite would delete them: choose "
                         "another folder")


def native_metres(path: str) -> float:
    import rasterio
    from rasterio.crs import CRS
    with rasterio.open(path) as src:
        return abs(src.transform.a) / units_per_metre(CRS.from_user_input(src.crs))


def _read_osm(path: str, crs) -> tuple[VectorMap, dict]:
    """The OSM data in `crs`, and how many broken geometries the reader repaired or skipped."""
    counts = {"repaired": 0, "skipped": 0}

    class Count(logging.Handler):
        def emit(self, record):
            if "invalid geometries repaired" in record.msg and len(record.args) == 3:
                counts["repaired"] += record.args[1]
                counts["skipped"] += record.args[2]

    logger = logging.getLogger("backend.geo.vectormap")
    handler, level, shown = Count(), logger.level, logger.isEnabledFor(logging.INFO)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = shown            # counted here; printed only where INFO was on anyway
    try:
        vmap = VectorMap.read(path, crs)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = True
    return vmap, counts


def plan_grid(o: Options):
    """(grid, vector map, geometry counts): one grid over where the imagery (any image), the OSM data
    and the map raster all are."""
    feet = [geo.raster_footprint(p) for p in o.satellite]       # no CRS / no geotransform: InputError
    crs = geo.parse_crs(o.crs) if o.crs else geo.default_crs(*feet[0])
    boxes = []
    from rasterio.warp import transform_bounds
    for (c, b), p in zip(feet, o.satellite):
        boxes.append(transform_bounds(c, crs, *b, densify_pts=21))
    sat_union = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                 max(b[3] for b in boxes))
    vmap, geom_counts = _read_osm(o.osm, crs)
    osm_box = tuple(shapely.total_bounds([f.geometry for f in vmap.features]))
    inter = (max(sat_union[0], osm_box[0]), max(sat_union[1], osm_box[1]),
             min(sat_union[2], osm_box[2]), min(sat_union[3], osm_box[3]))
    if inter[0] >= inter[2] or inter[1] >= inter[3]:
        fmt = lambda b: ", ".join(f"{v:.1f}" for v in b)  # noqa: E731
        raise InputError(f"the imagery ({fmt(sat_union)}) and the OSM data ({fmt(osm_box)}, both in "
                         f"{crs.to_string()}) do not overlap: check that they cover the same place and that "
                         "the images' CRS is right")
    footprints = [(crs, sat_union), (crs, osm_box)]
    if o.map:
        footprints.append(geo.raster_footprint(o.map))
    res_m = o.resolution if o.resolution is not None else native_metres(o.satellite[0])
    g = geo.plan_grid(footprints, crs=crs, resolution=res_m * units_per_metre(crs), bbox=o.bbox,
                      bbox_crs=geo.parse_crs(o.bbox_crs) if o.bbox_crs else None)
    return g, vmap, geom_counts, res_m


def tile_grid(g: geo.Grid, size: int) -> list[Tile]:
    """Whole tiles edge to edge, centred on the grid (the remainder is split between the margins)."""
    cols, rows = g.width // size, g.height // size
    if not cols or not rows:
        raise InputError(f"the area is {g.width} x {g.height} px at this resolution, less than one "
                         f"{size} px tile: give a larger area, a finer --resolution or a smaller --tile-size")
    x0, y0 = (g.width - cols * size) // 2, (g.height - rows * size) // 2
    return [Tile(r, c, x0 + c * size, y0 + r * size, size, size) for r in range(rows) for c in range(cols)]


def tile_bounds(g: geo.Grid, t: Tile) -> tuple[float, float, float, float]:
    return geo.Grid(g.crs, g.window_transform(t.x0, t.y0), t.width, t.height).bounds


# --- samples ---------------------------------------------------------------------------------------
def candidates(g: geo.Grid, tiles: list[Tile], split: dict, targets: Targets, o: Options,
               res_m: float, counts: Counter) -> list[Candidate]:
    """Every (tile, target) of the kept tiles whose mask is large enough."""
    min_px = o.min_area_m2 / (res_m * res_m)
    out = []
    for t in tiles:
        s = split[(t.row, t.col)]
        if s is None:
            continue
        transform = g.window_transform(t.x0, t.y0)
        box = shapely.box(*tile_bounds(g, t))
        near = targets.near(box)
        if not near:
            continue
        pixels: dict[str, np.ndarray] = {}

        def mask_of(places: list[Place]) -> np.ndarray:
            m = np.zeros((t.height, t.width), bool)
            for p in places:
                if p.id not in pixels:
                    pixels[p.id] = rasterize([p.geometry], (t.height, t.width), transform)
                m |= pixels[p.id]
            return m

        groups: list[tuple[str, str, list[Place]]] = []
        if "class" in o.levels:
            by_class = defaultdict(list)
            for p in near:
                for c in p.classes:
                    by_class[c].append(p)
            groups += [("class", c, ps) for c, ps in sorted(by_class.items())]
        if "function" in o.levels:
            for fn, cls in sorted(targets.functions.items()):
                ps = [p for p in near if set(p.classes) & set(cls)]
                if ps:
                    groups.append(("function", fn, ps))
        if "name" in o.levels:
            by_name = defaultdict(list)
            for p in near:
                if p.name:
                    by_name[normalise(p.name)].append(p)
            for _, ps in sorted(by_name.items()):
                spelled = Counter(p.name for p in ps).most_common(1)[0][0]
                groups.append(("name", spelled, ps))
        for level, text, ps in groups:
            m = mask_of(ps)
            if m.sum() < max(1.0, min_px):
                counts[f"{level} targets under --min-area on a tile"] += 1
                continue
            inside = [p for p in ps if pixels[p.id].any()]
            out.append(Candidate(t, level, text, [p.id for p in inside], m, s,
                                 {p.id: float(pixels[p.id].sum()) for p in inside}))
    return out


def resolve_leaks(cands: list[Candidate], counts: Counter) -> list[Candidate]:
    """No place in two splits: a place larger than the gap keeps the split where most of it lies, and
    the samples that show it as a target in another split are dropped."""
    area: dict[str, Counter] = defaultdict(Counter)
    for c in cands:
        for pid, px in c.place_area.items():
            area[pid][c.split] += px
    home = {pid: a.most_common(1)[0][0] for pid, a in area.items()}
    keep = []
    for c in cands:
        if all(home[p] == c.split for p in c.places):
            keep.append(c)
        else:
            counts["samples dropped: their place reaches another split"] += 1
    return keep


def balance(cands: list[Candidate], o: Options, counts: Counter) -> list[Candidate]:
    rng = random.Random(o.seed)
    out = []
    for s in splitting.SPLITS:
        by_level = {lv: [c for c in cands if c.split == s and c.level == lv] for lv in o.levels}
        sizes = [len(v) for v in by_level.values() if v]
        if o.per_level == 0 or not sizes:
            cap = None
        else:
            cap = o.per_level if o.per_level is not None else min(sizes)
        for lv, items in by_level.items():
            items = sorted(items, key=lambda c: c.id)
            if cap is not None and len(items) > cap:
                rng.shuffle(items)
                counts[f"{s} {lv} samples left out to balance the levels"] += len(items) - cap
                items = sorted(items[:cap], key=lambda c: c.id)
            out += items
    return out


# --- pixels ----------------------------------------------------------------------------------------
class Imagery:
    """The satellite images as one mosaic on the grid (the first image that has a pixel gives it) and
    the map (the user's raster, or the OSM data rendered)."""

    def __init__(self, o: Options, g: geo.Grid, vmap: VectorMap):
        from rasterio.enums import Resampling

        from backend.geo.window import GridRaster, MapWindows
        self.sats = []
        try:
            for p in o.satellite:
                self.sats.append(GridRaster(p, g))
            self.map = GridRaster(o.map, g, Resampling.nearest) if o.map else MapWindows(vmap.features, g)
        except BaseException:
            self.close()
            raise

    def read(self, t: Tile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(satellite, map, valid) of a tile; valid where the imagery and the map both have data."""
        rgb = valid = None
        for s in self.sats:
            px, ok = s.read(t.x0, t.y0, t.width, t.height)
            if rgb is None:
                rgb, valid = px, ok.copy()
            else:
                fill = ok & ~valid
                rgb[fill] = px[fill]
                valid |= ok
            if valid.all():
                break
        m, m_ok = self.map.read(t.x0, t.y0, t.width, t.height)
        return rgb, m, valid & m_ok

    def valid(self, t: Tile) -> np.ndarray:
        """Where the tile has imagery (any image) and map, from the masks alone."""
        from rasterio.windows import Window
        w = Window(t.x0, t.y0, t.width, t.height)
        ok = np.zeros((t.height, t.width), bool)
        for s in self.sats:
            ok |= s._mask(w)
            if ok.all():
                break
        if hasattr(self.map, "_mask") and self.map.use_mask:
            ok &= self.map._mask(w)
        return ok

    def close(self) -> None:
        for s in self.sats + ([self.map] if hasattr(self, "map") else []):
            s.close()


def _state(tile_state: dict, t: Tile, split: dict, used: set) -> str:
    key = (t.row, t.col)
    if key in used:
        return "used"
    if tile_state.get(key, "used") != "used":
        return tile_state[key]
    return "no sample" if split[key] else "gap"


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:           # a file system without hard links
        shutil.copyfile(src, dst)


def _write_png(path: str, arr: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray(arr).save(path, optimize=False, compress_level=3)


def preview_choice(cands: list[Candidate], per_level: int) -> set[int]:
    """Which samples the preview shows: per level the largest masks, one per tile, test split first."""
    chosen: set[int] = set()
    order = {"test": 0, "val": 1, "train": 2}
    for lv in TASK_LEVELS:
        tiles: set = set()
        for c in sorted((c for c in cands if c.level == lv), key=lambda c: (order[c.split], -int(c.mask.sum()))):
            if len(tiles) < per_level and (c.tile.row, c.tile.col) not in tiles:
                tiles.add((c.tile.row, c.tile.col))
                chosen.add(id(c))
    return chosen


def preview(samples: list[tuple[Candidate, np.ndarray, np.ndarray]], path: str, per_level: int) -> None:
    """A sheet: for each level a row of up to `per_level` samples, map and satellite side by side with
    the mask filled and outlined on both, the query written below."""
    import cv2
    from PIL import Image, ImageDraw, ImageFont

    cell, pad, text_h = PREVIEW_CELL, 6, 34
    levels = [lv for lv in TASK_LEVELS if any(c.level == lv for c, _, _ in samples)]
    if not levels:
        return
    pick = {lv: [x for x in samples if x[0].level == lv][:per_level] for lv in levels}
    cols = max(len(v) for v in pick.values())
    w = cols * (2 * cell + 3 * pad)
    sheet = Image.new("RGB", (w, len(levels) * (cell + text_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    try:    # a font with accents (place names); Pillow's own has few
        font = ImageFont.truetype(FONT, 13)
    except OSError:
        font = ImageFont.load_default(13)
    for r, lv in enumerate(levels):
        y = pad + r * (cell + text_h + pad)
        for k, (c, sat, mp) in enumerate(pick[lv]):
            x = pad + k * (2 * cell + 3 * pad)
            m = cv2.resize(c.mask.astype(np.uint8), (cell, cell), interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            for j, img in enumerate((mp, sat)):
                small = cv2.resize(img, (cell, cell), interpolation=cv2.INTER_AREA).copy()
                tint = small.copy()
                tint[m > 0] = (255, 0, 0)
                small = cv2.addWeighted(small, 0.6, tint, 0.4, 0)
                cv2.drawContours(small, contours, -1, (255, 0, 0), 2)
                sheet.paste(Image.fromarray(small), (x + j * (cell + pad), y))
            label = f"{c.level}: {c.problem}"
            label = label if len(label) <= 60 else label[:57] + "..."
            draw.text((x, y + cell + 3), label, fill=(0, 0, 0), font=font)
            draw.text((x, y + cell + 18), f"{c.split} {tile_name(c.tile)}", fill=(90, 90, 90), font=font)
    sheet.save(path)


# --- the whole build -------------------------------------------------------------------------------
def build(o: Options, progress=None) -> dict:
    """Build the dataset into `o.out` (written to a temporary folder first, renamed at the end); the
    summary (what dataset.json holds) is returned."""
    check_options(o)
    t0 = time.perf_counter()
    counts: Counter = Counter()
    g, vmap, geom_counts, res_m = plan_grid(o)
    tiles = tile_grid(g, o.tile_size)
    rows, cols = max(t.row for t in tiles) + 1, max(t.col for t in tiles) + 1
    try:
        split, block = splitting.plan(rows, cols, o.ratios, o.block_tiles)
    except splitting.SplitError as exc:
        raise InputError(f"{exc} (the area is {g.width * res_m / 1000:.2f} x {g.height * res_m / 1000:.2f} km "
                         f"at {res_m:g} m/px: {o.tile_size} px tiles are {o.tile_size * res_m:.0f} m)") from None
    targets = find_places(vmap, o.classes)
    if not targets.places:
        raise InputError(f"the OSM data {o.osm} has no place of the class table (resources/socio_classes.json)"
                         + (f" among --classes {', '.join(o.classes)}" if o.classes else "")
                         + ": is it an OpenStreetMap extract of the area?")
    cands = candidates(g, tiles, split, targets, o, res_m, counts)
    cands = resolve_leaks(cands, counts)
    imagery = Imagery(o, g, vmap)
    try:
        tile_state, cands = drop_nodata(imagery, cands, o.max_nodata, counts, progress)
        cands = balance(cands, o, counts)
        empty = [s for s in splitting.SPLITS if not any(c.split == s for c in cands)]
        if empty:       # said before anything is written
            n = {s: sum(1 for c in cands if c.split == s) for s in splitting.SPLITS}
            raise InputError(
                f"no sample in the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} (samples per split: "
                f"{n}): the area has too few mapped places with imagery for a spatial split; give a larger "
                "area, a finer --resolution, a smaller --tile-size or --block-tiles, or allow nodata "
                "(--max-nodata)")
        return _write(o, g, tiles, split, block, res_m, targets, geom_counts, imagery, cands, tile_state,
                      counts, t0, progress)
    finally:
        imagery.close()


def drop_nodata(imagery, cands: list[Candidate], max_nodata: float, counts: Counter, progress=None):
    """(state of each tile, the candidates on tiles with enough data): before balancing, so that the
    levels stay balanced among the samples that are written."""
    state, keep = {}, []
    keys = sorted({(c.tile.row, c.tile.col): c.tile for c in cands}.items())
    for i, (key, t) in enumerate(keys):
        missing = 1.0 - float(imagery.valid(t).mean())
        state[key] = f"skipped: {missing:.1%} nodata" if missing > max_nodata else "used"
        if progress:
            progress(i + 1, 2 * len(keys))
    for c in cands:
        if state[(c.tile.row, c.tile.col)] == "used":
            keep.append(c)
        else:
            counts["samples on tiles with nodata"] += 1
    bad = sum(1 for v in state.values() if v != "used")
    if bad:
        counts["tiles with nodata"] = bad
    return state, keep


def _write(o, g, tiles, split, block, res_m, targets, geom_counts, imagery, cands, tile_state, counts, t0,
           progress) -> dict:
    parent = os.path.dirname(os.path.abspath(o.out)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(o.out))}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        by_tile = defaultdict(list)
        for c in cands:
            by_tile[(c.tile.row, c.tile.col)].append(c)
        written: list[Candidate] = []
        shown: list[tuple[Candidate, np.ndarray, np.ndarray]] = []
        to_show = preview_choice(cands, o.preview_per_level)
        for i, (key, cs) in enumerate(sorted(by_tile.items())):
            t = cs[0].tile
            sat, mp, _ = imagery.read(t)
            first = None
            for c in cs:
                d = os.path.join(tmp, c.split, c.id)
                os.makedirs(d)
                for name, arr in (("map.png", mp), ("sat.png", sat)):
                    if first is None:
                        _write_png(os.path.join(d, name), arr)
                    else:   # the tile's images once on disk, whatever the number of its samples
                        _link(os.path.join(first, name), os.path.join(d, name))
                first = first or d
                _write_png(os.path.join(d, "mask.png"), c.mask.astype(np.uint8) * 255)
                with open(os.path.join(d, "question.json"), "w", encoding="utf-8") as f:
                    json.dump({"problem": c.problem, "task": c.level, "tile": tile_name(t),
                               "places": c.places}, f, ensure_ascii=False)
                written.append(c)
                if id(c) in to_show:
                    shown.append((c, sat, mp))
            if progress:
                progress(len(by_tile) + i + 1, 2 * len(by_tile))
        per = {s: {lv: sum(1 for c in written if c.split == s and c.level == lv) for lv in o.levels}
               for s in splitting.SPLITS}
        for s in splitting.SPLITS:
            for lv in o.levels:
                if not per[s][lv]:
                    log.warning("no %s-level sample in the %s split", lv, s)
        used_classes = {c.problem for c in written if c.level == "class"}
        requested = o.classes or sorted({cl for p in targets.places for cl in p.classes})
        preview(shown, os.path.join(tmp, "preview.png"), o.preview_per_level)
        used = {(c.tile.row, c.tile.col) for c in written}
        summary = {
            "format": FORMAT,
            "crs": g.crs.to_wkt(), "crs_name": g.crs.to_string(),
            "resolution_m": res_m,
            "grid": {"transform": list(g.transform)[:6], "width": g.width, "height": g.height},
            "tile_size": o.tile_size, "block_tiles": block, "split_ratios": list(o.ratios),
            "tiles": {tile_name(t): {"row": t.row, "col": t.col, "x0": t.x0, "y0": t.y0,
                                     "bounds": list(tile_bounds(g, t)), "split": split[(t.row, t.col)],
                                     "state": _state(tile_state, t, split, used)}
                      for t in tiles},
            "sources": [{"role": role, "path": os.path.abspath(p), "bytes": os.path.getsize(p), "sha256": sha256(p)}
                        for role, p in [("satellite", p) for p in o.satellite] + [("osm", o.osm)]
                        + ([("map", o.map)] if o.map else [])],
            "map": "raster" if o.map else "rendered from the OSM data",
            "class_table": {"file": "resources/socio_classes.json", "version": class_table_version()},
            "options": {"classes": o.classes, "levels": list(o.levels), "per_level": o.per_level,
                        "min_area_m2": o.min_area_m2, "max_nodata": o.max_nodata, "seed": o.seed},
            "counts": {"samples": per, "total": len(written), "places": len(targets.places),
                       "places_by_class": dict(Counter(cl for p in targets.places for cl in p.classes)),
                       "classes_without_samples": sorted(set(requested) - used_classes),
                       "osm_geometries_repaired": geom_counts["repaired"],
                       "osm_geometries_skipped": geom_counts["skipped"],
                       "skipped": dict(sorted((targets.skipped + counts).items()))},
            "seconds": round(time.perf_counter() - t0, 1),
        }
        with open(os.path.join(tmp, "dataset.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1, ensure_ascii=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(o.out):
        old = f"{tmp}.old"
        os.rename(o.out, old)
        os.rename(tmp, o.out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, o.out)
    return summary
