"""The contract between the QGIS plugin and its worker process (`python -m backend run-scene DIR`).

Both halves import this module: the plugin inside QGIS's own Python, the worker with the backend's
packages. It therefore uses the standard library only (plus the plain-Python tile planner): never
rasterio, shapely, pyproj or torch, whose GDAL / GEOS / PROJ would clash with QGIS's own copies.

The scene folder the plugin writes and the worker reads:

    request.json    a `SceneRequest`: grid, tile plan, query, task, engines, generation settings,
                    model-server options (never its API key: that is in the worker's environment,
                    API_KEY_ENV), and the names of the files below (relative to the folder)
    satellite.tif   RGBA GeoTIFF on the grid (alpha 0 = no data), rendered by QGIS tile by tile
    map.tif         RGBA GeoTIFF on the grid: the map layers as QGIS draws them (a group with an XYZ
                    layer: at the tiles' own pixels in EPSG:3857, read onto the grid by the worker)
    features.gpkg   optional: the vector map layers' features over the area, in the grid's CRS
    result.json     a `SceneResult`, written by the worker (atomically) when it succeeds

The worker speaks one line per message on stdout (see `progress_line` and `parse_line`):

    PROGRESS <fraction 0..1> <tiles done>/<tiles total> <text>
    WARNING <text>
    ERROR <text>           then exit code 2: a problem the user can fix, `text` says how
    DONE <entities>

Texts are one line; newlines inside them travel as the two characters backslash-n.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

from .errors import InputError
from .geo.tiles import DEFAULT_MAX_TILES, DEFAULT_OVERLAP, DEFAULT_TILE, Tile, tile_layout

PROTOCOL = 1
REQUEST_FILE = "request.json"
RESULT_FILE = "result.json"
SATELLITE_FILE = "satellite.tif"
MAP_FILE = "map.tif"
FEATURES_FILE = "features.gpkg"
TASK_LEVELS = ("name", "class", "function")
# Where a place's outline comes from when the reasoner read one off the map (the map reader): "map"
# takes it, "image" lets the segmenter cut the place from the satellite image (as released).
OUTLINES = ("map", "image")
TILES_START = 0.1     # the worker's progress fraction when the engines are loaded and tile work begins
# The model server's API key reaches the worker only through this environment variable (never through
# the scene folder, which is a plain temporary folder); reasoners/openai_server.py reads it.
API_KEY_ENV = "SOCIOSEG_API_KEY"
# ServerSettings fields (reasoners/openai_server.py) besides the URL, with the check each value needs.
SERVER_KEYS = {"model": "a served model name or null", "concurrency": "a whole number of at least 1",
               "timeout": "a number of seconds above 0", "max_retries": "a whole number of at least 0",
               "api_key_env": "the name of an environment variable"}


class RequestError(InputError):
    """The scene folder or its request is malformed, truncated or incomplete."""


# --- the request -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridSpec:
    """The processing grid: `transform` maps pixel corners (col, row) to map coordinates in the CRS."""
    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]   # (a, b, c, d, e, f), north-up: b = d = 0
    width: int
    height: int

    @property
    def resolution(self) -> float:
        return abs(self.transform[0])


@dataclass(frozen=True)
class TilePlan:
    """How the grid is cut into model tiles; planned once, by whoever builds the request."""
    size: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    max_tiles: int = DEFAULT_MAX_TILES

    def layout(self, width: int, height: int) -> list[Tile]:
        return tile_layout(width, height, self.size, self.overlap, self.max_tiles)


@dataclass
class SceneRequest:
    grid: GridSpec
    query: str
    task: str | None                       # "name" / "class" / "function", or None to infer it
    tile_plan: TilePlan
    tiles: list[Tile]
    reasoner: str = "mapreader"
    segmenter: str = "grabcut"
    device: str = "auto"
    generation: dict = field(default_factory=dict)   # fields of reasoners.qwen.GenerationSettings
    satellite: str = SATELLITE_FILE
    map_image: str = MAP_FILE
    map_features: str | None = None        # a vector file (every layer is read), or None for a raster map
    map_masks_coverage: bool = True        # raster maps: the map's alpha limits where detection runs
    protocol: int = PROTOCOL
    server: dict = field(default_factory=dict)       # SERVER_KEYS for an openai: reasoner; never the key
    outline: str = "map"                   # OUTLINES: the map reader's outlines, or the segmenter's cut

    @classmethod
    def planned(cls, grid: GridSpec, query: str, task: str | None, plan: TilePlan, **kw) -> "SceneRequest":
        """A request whose tiles are laid out now (refusing areas over `plan.max_tiles` first)."""
        return cls(grid, query, task, plan, plan.layout(grid.width, grid.height), **kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid"]["transform"] = list(self.grid.transform)
        d["tiles"] = [[t.row, t.col, t.x0, t.y0, t.width, t.height] for t in self.tiles]
        return d

    @classmethod
    def from_dict(cls, d) -> "SceneRequest":
        """Validate everything a worker relies on; every problem is named in one RequestError."""
        if not isinstance(d, dict) or not d:
            raise RequestError("the scene request is empty or not a JSON object: run again")
        v = _Validator(d)
        g = v.obj("grid")
        if g is not None:
            crs_wkt = v.string("grid.crs_wkt", g.get("crs_wkt"))
            transform = v.transform("grid.transform", g.get("transform"))
            width, height = (v.integer(f"grid.{k}", g.get(k), 1) for k in ("width", "height"))
        grid_ok = g is not None and not v.problems
        tp = v.obj("tile_plan")
        plan = TilePlan()
        if tp is not None:
            plan = TilePlan(v.integer("tile_plan.size", tp.get("size"), 32),
                            v.integer("tile_plan.overlap", tp.get("overlap"), 0),
                            v.integer("tile_plan.max_tiles", tp.get("max_tiles"), 1))
        query = v.string("query", v.get("query"))
        task = v.get("task")
        if task is not None and task not in TASK_LEVELS:
            v.problems.append(f"'task' must be one of {', '.join(TASK_LEVELS)} or null, not {task!r}")
        protocol = v.get("protocol")
        if protocol != PROTOCOL and "protocol" not in v.missing:
            v.problems.append(f"protocol {protocol!r} is not {PROTOCOL}: the plugin and the backend are "
                              "different versions; reinstall the plugin")
        engines = {k: v.string(k, v.get(k)) for k in ("reasoner", "segmenter", "device")}
        generation = v.get("generation")
        if not isinstance(generation, dict) and "generation" not in v.missing:
            v.problems.append("'generation' must be an object of generation settings")
        files = {k: v.filename(k, v.get(k)) for k in ("satellite", "map_image")}
        features = d.get("map_features")          # optional: absent or null for a raster map
        if features is not None:
            features = v.filename("map_features", features)
        coverage = v.get("map_masks_coverage")
        if not isinstance(coverage, bool) and "map_masks_coverage" not in v.missing:
            v.problems.append("'map_masks_coverage' must be true or false")
        server = v.server("server", d.get("server", {}))     # optional: absent for in-process engines
        outline = d.get("outline", "map")                     # optional: absent in older requests
        if outline not in OUTLINES:
            v.problems.append(f"'outline' must be one of {', '.join(OUTLINES)}, not {outline!r}")
        tiles = v.get("tiles")
        if grid_ok:   # tiles can only be checked against a sound grid
            tiles = v.tiles("tiles", tiles, width, height)
        v.raise_if_any()
        return cls(GridSpec(crs_wkt, transform, width, height), query.strip(), task, plan, tiles,
                   engines["reasoner"], engines["segmenter"], engines["device"], dict(generation),
                   files["satellite"], files["map_image"], features, coverage, protocol, server, outline)

    def write(self, folder: str) -> str:
        os.makedirs(folder, exist_ok=True)
        return _write_json_atomic(os.path.join(folder, REQUEST_FILE), self.to_dict())

    @classmethod
    def read(cls, folder: str) -> "SceneRequest":
        """The folder's request, validated, with every file it names present."""
        path = os.path.join(folder, REQUEST_FILE)
        req = cls.from_dict(_read_json(path, "scene request"))
        for key in ("satellite", "map_image", "map_features"):
            name = getattr(req, key)
            if name is not None and not os.path.isfile(os.path.join(folder, name)):
                raise RequestError(f"the scene folder {folder} lacks {name} (the request's '{key}'): "
                                   "the capture was interrupted; run again")
        return req

    def path(self, folder: str, key: str) -> str | None:
        name = getattr(self, key)
        return None if name is None else os.path.join(folder, name)


# --- the result ------------------------------------------------------------------------------------
@dataclass
class EntityRecord:
    wkt: str                 # polygon in the grid's CRS
    attrs: dict              # the output table's fields (backend/output/schema.py)


@dataclass
class SceneResult:
    entities: list[EntityRecord]
    tiles: int                             # tiles in the plan
    task: str | None = None                # the task level used (inferred when the request had none)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    protocol: int = PROTOCOL

    def write(self, folder: str) -> str:
        return _write_json_atomic(os.path.join(folder, RESULT_FILE), asdict(self))

    @classmethod
    def read(cls, folder: str) -> "SceneResult":
        d = _read_json(os.path.join(folder, RESULT_FILE), "worker result")
        try:
            return cls([EntityRecord(str(e["wkt"]), dict(e["attrs"])) for e in d["entities"]], int(d["tiles"]),
                       d.get("task"), [str(w) for w in d.get("warnings", [])], float(d.get("seconds", 0.0)),
                       int(d.get("protocol", PROTOCOL)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RequestError(f"the worker result in {folder} is malformed ({exc!r}); run again") from None


# --- the message lines -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Message:
    kind: str                 # "PROGRESS", "WARNING", "ERROR" or "DONE"
    text: str = ""
    fraction: float = 0.0
    done: int = 0             # tiles finished (PROGRESS), entities found (DONE)
    total: int = 0


def _one_line(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("\r", "").replace("\n", "\\n")


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "\\n":
            out.append("\n" if text[i + 1] == "n" else "\\")
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def progress_line(fraction: float, done: int, total: int, text: str = "") -> str:
    return f"PROGRESS {min(1.0, max(0.0, fraction)):.4f} {int(done)}/{int(total)} {_one_line(text)}".rstrip()


def warning_line(text: str) -> str:
    return f"WARNING {_one_line(text)}"


def error_line(text: str) -> str:
    return f"ERROR {_one_line(text)}"


def done_line(entities: int) -> str:
    return f"DONE {int(entities)}"


def parse_line(line: str) -> Message | None:
    """The message of one worker output line, or None for anything else (library chatter)."""
    kind, _, rest = line.rstrip("\r\n").partition(" ")
    if kind == "PROGRESS":
        frac, _, rest = rest.partition(" ")
        counts, _, text = rest.partition(" ")
        done, _, total = counts.partition("/")
        try:
            return Message(kind, _unescape(text), float(frac), int(done), int(total))
        except ValueError:
            return None
    if kind in ("WARNING", "ERROR"):
        return Message(kind, _unescape(rest))
    if kind == "DONE":
        try:
            return Message(kind, done=int(rest))
        except ValueError:
            return None
    return None


class Throughput:
    """Tiles per second and time left, from the tiles done so far (the first report starts the clock)."""

    def __init__(self):
        self.start: float | None = None
        self.start_done = 0

    def update(self, done: int, total: int, now: float) -> str:
        if self.start is None:
            self.start, self.start_done = now, done
        text = f"{done}/{total} tiles"
        elapsed, finished = now - self.start, done - self.start_done
        if finished > 0 and elapsed > 0:
            rate = finished / elapsed
            text += f" · {rate:.2f} tiles/s · {format_duration((total - done) / rate)} left"
        return text


def format_duration(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


# --- helpers -------------------------------------------------------------------------------------
def _write_json_atomic(path: str, data) -> str:
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _read_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise RequestError(f"the {what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"the {what} {path} is not valid JSON (truncated?): {exc}") from None
    except RecursionError:
        raise RequestError(f"the {what} {path} is nested too deeply to be a {what}: run again") from None
    except OSError as exc:
        raise RequestError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


class _Validator:
    """Collects what is wrong with a request dict, so one message names all of it."""

    def __init__(self, d: dict):
        self.d = d
        self.problems: list[str] = []
        self.missing: set[str] = set()

    def get(self, key: str):
        if key not in self.d:
            self._missing(key)
            return None
        return self.d[key]

    def obj(self, key: str) -> dict | None:
        value = self.get(key)
        if value is not None and not isinstance(value, dict):
            self.problems.append(f"'{key}' must be an object")
            return None
        return value

    def string(self, name: str, value) -> str:
        if value is None:
            self._missing(name)
            return ""
        if not isinstance(value, str) or not value.strip():
            self.problems.append(f"'{name}' must be a non-empty text")
            return ""
        return value

    def integer(self, name: str, value, minimum: int) -> int:
        if value is None:
            self._missing(name)
            return minimum
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.problems.append(f"'{name}' must be a whole number of at least {minimum}, not {value!r}")
            return minimum
        return value

    def transform(self, name: str, value) -> tuple:
        if value is None:
            self._missing(name)
            return (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
        ok = (isinstance(value, list) and len(value) == 6
              and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value))
        if not ok or not (value[0] > 0 and value[4] < 0 and value[1] == 0 and value[3] == 0):
            self.problems.append(f"'{name}' must be 6 finite numbers of a north-up grid "
                                 f"(a > 0, b = d = 0, e < 0), not {value!r}")
            return (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
        return tuple(float(x) for x in value)

    def filename(self, name: str, value) -> str:
        if value is None:
            return ""
        if not isinstance(value, str) or not value or os.path.isabs(value) or os.path.basename(value) != value:
            self.problems.append(f"'{name}' must be a file name inside the scene folder, not {value!r}")
            return ""
        return value

    def tiles(self, name: str, value, width: int, height: int) -> list[Tile]:
        if value is None:
            return []
        if not isinstance(value, list) or not value:
            self.problems.append(f"'{name}' must be a non-empty list of [row, col, x0, y0, width, height]")
            return []
        out, seen = [], set()
        for i, t in enumerate(value):
            if not (isinstance(t, list) and len(t) == 6 and all(isinstance(x, int) and not isinstance(x, bool)
                                                              for x in t)):
                self.problems.append(f"'{name}[{i}]' must be 6 whole numbers, not {t!r}")
                return []
            tile = Tile(*t)
            if tile.id in seen:
                self.problems.append(f"'{name}[{i}]' {t} repeats tile {tile.id} (row {tile.row}, column "
                                     f"{tile.col}): each tile must be listed once")
                return []
            seen.add(tile.id)
            if tile.x0 < 0 or tile.y0 < 0 or tile.width < 1 or tile.height < 1 \
                    or tile.x0 + tile.width > width or tile.y0 + tile.height > height:
                self.problems.append(f"'{name}[{i}]' {t} lies outside the {width} x {height} grid")
                return []
            out.append(tile)
        return out

    def server(self, name: str, value) -> dict:
        """Model-server options: every unknown key and bad value named (an 'api_key' above all: the key
        travels in the worker's environment only)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problems.append(f"'{name}' must be an object of model-server options")
            return {}
        unknown = sorted(set(value) - set(SERVER_KEYS))
        if unknown:
            secret = [k for k in unknown if "key" in k.lower() and k != "api_key_env"]
            self.problems.append(f"unknown model-server option(s) {', '.join(unknown)} in '{name}' (known: "
                                 f"{', '.join(SERVER_KEYS)})" + (f"; an API key must never be written into the "
                                                                 f"scene folder, it goes in {API_KEY_ENV}" if secret else ""))
        for key, want in SERVER_KEYS.items():
            x = value.get(key)
            if key not in value or (key == "model" and x is None):
                continue
            number = isinstance(x, (int, float)) and not isinstance(x, bool)
            ok = {"model": isinstance(x, str) and bool(x.strip()),
                  "concurrency": number and isinstance(x, int) and x >= 1,
                  "timeout": number and math.isfinite(x) and x > 0,
                  "max_retries": number and isinstance(x, int) and x >= 0,
                  "api_key_env": isinstance(x, str) and x.strip() != ""}[key]
            if not ok:
                self.problems.append(f"'{name}.{key}' must be {want}, not {x!r}")
        return {k: v for k, v in value.items() if k in SERVER_KEYS}

    def _missing(self, name: str) -> None:
        if name not in self.missing:
            self.missing.add(name)
            self.problems.append(f"'{name}' is missing")

    def raise_if_any(self) -> None:
        if self.problems:
            raise RequestError("the scene request is malformed: " + "; ".join(self.problems)
                               + ". It is written by the QGIS plugin: run again, and if this repeats, "
                               "reinstall the plugin so that its backend matches")
