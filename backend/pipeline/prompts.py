"""The released model's two stage texts, the image resize it expects, and tolerant answer parsing.

The texts are byte-for-byte what SocioReasoner-3B was trained on, quirks included ("bboxs", missing
spaces, the unbalanced bracket in the stage-2 example): changing them changes what the model answers.
"""
from __future__ import annotations

import ast
import json
import logging
import math
import re
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

STAGE1_TEMPLATE = (
    "You will be given two images. The first is a map and the second is a corresponding satellite image."
    "Please find '{query}' with bboxs."
    "Compare the difference between object(s) and find the most closely matched object(s)."
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags. "
    "Please use English."
    "Output the bbox(es) in JSON format."
    'i.e., <think>thinking process here </think>'
    '<answer>[{{"bbox_2d": [bx1,by1,bx2,by2]}}, {{"bbox_2d": [bx3,by3,bx4,by4]}}]</answer>'
)

STAGE2_TEMPLATE = (
    "You will be given two images. The first is a map and the second is a corresponding satellite image."
    'Now some bbox(s) and the results after SAM segmentation for "{query}" have been rendered on these two images.'
    "The found bbox(s) are: {boxes}."
    "Please add some points appropriately to each bbox to better represent the area of interest."
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
    "i.e., <think> thinking process here </think>"
    '<answer>[{{"bbox_2d": [bx1,by1,bx2,by2], "points": [[px1,py1],[px2,py2],[px3,py3]]}}, '
    '{{"bbox_2d": [bx3,by3,bx4,by4], "points": [[px4,py4],[px5,py5],[px6,py6]}}]</answer>'
)

# The pixel budget the released inference code really applies (model input, after resize): its YAML
# names 1344 * 1344, but that key is dropped when the config is read, so the code's defaults hold.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 768 * 768
PATCH_FACTOR = 28


def stage1_prompt(query: str) -> str:
    return STAGE1_TEMPLATE.format(query=query)


def stage2_prompt(query: str, stage1_answer: str) -> str:
    return STAGE2_TEMPLATE.format(query=query, boxes=stage1_answer)


def smart_resize(height: int, width: int, factor: int = PATCH_FACTOR,
                 min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Qwen2.5-VL's input size: sides multiples of `factor`, area within [min_pixels, max_pixels]."""
    if height < 1 or width < 1:
        raise ValueError(f"image of size {width}x{height} cannot be resized")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {width}x{height} is over 200, which Qwen2.5-VL refuses")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# The most objects an answer may hand to the segmenter and the render. A 2,048-token answer (the
# released budget) holds at most ~157 boxes: Qwen2's pre-tokenizer makes every digit a token, so even
# `{"bbox_2d":[0,0,0,0]},` is 13 tokens. The cap never binds there; it stops a hostile or runaway
# answer (millions of boxes) from stalling a tile.
MAX_OBJECTS = 200
# How far past the image a box may reach before the parser warns (fraction of the image side).
FAR_OUTSIDE = 0.1


@dataclass
class Item:
    """One object of an answer, in model-input pixels: box (x1, y1, x2, y2) and optional points."""
    box: tuple[float, float, float, float]
    points: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class ParsedAnswer:
    raw: str | None                 # text between <answer> and </answer>, exactly; None if absent
    items: list[Item]
    warnings: list[str]
    released: bool = False          # True when json.loads read it: items are exactly the released ones
    shown: str | None = None        # the answer as decoded with special tokens kept (render, stage-2 text)
    boxes: list = field(default_factory=list)   # what the render draws (see `render_boxes`)
    capped_text: str | None = None  # the stage-2 text when the answer was cut to MAX_OBJECTS

    @property
    def ok(self) -> bool:
        return self.raw is not None and bool(self.items)

    @property
    def stage2_boxes_text(self) -> str:
        """What the released code puts into the stage-2 text: the answer .strip()ped, "" without tags.
        It reads the decode that keeps special tokens, as released."""
        if self.capped_text is not None:
            return self.capped_text
        return self.shown.strip() if self.shown is not None else ""


THINK_ANSWER_RE = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.S)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
_NUM = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_OBJECT_RE = re.compile(r"\{[^{}]*\}", re.S)
_BOX_RE = re.compile(r"bbox_2d['\"]?\s*:\s*\[([^\[\]]*)\]", re.S)
_POINTS_RE = re.compile(r"points['\"]?\s*:\s*(\[.*)", re.S)
_PAIR_RE = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*\]")


def extract_answer(text: str) -> str | None:
    m = ANSWER_RE.search(text)
    return m.group(1) if m else None


def decode_answer_json(raw: str) -> tuple[list | None, str | None]:
    """JSON first, then Python literals (single quotes, True/None); returns (value, warning)."""
    s = raw.strip()
    try:
        return json.loads(s), None
    except (ValueError, RecursionError):
        pass
    try:
        return ast.literal_eval(s), "answer was Python-style, not JSON"
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None, None


def _finite_numbers(values, n: int | None = None) -> list[float] | None:
    if not isinstance(values, (list, tuple)) or (n is not None and len(values) != n):
        return None
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        out.append(float(v))
    return out


def _salvage_objects(raw: str, limit: int) -> list[dict]:
    """Pull {"bbox_2d": [...], "points": [[x, y], ...]} objects out of text that is not valid JSON."""
    found = []
    for obj in _OBJECT_RE.finditer(raw + "}"):
        if len(found) > limit:
            break
        text = obj.group(0)
        box = _BOX_RE.search(text)
        if not box:
            continue
        try:
            numbers = [float(v) for v in re.findall(_NUM, box.group(1))]
        except ValueError:
            continue
        item: dict = {"bbox_2d": numbers}
        pts = _POINTS_RE.search(text)
        if pts:
            item["points"] = [[float(a), float(b)] for a, b in _PAIR_RE.findall(pts.group(1))]
        found.append(item)
    return found


_NUMERIC_KINDS = "biuf"     # numpy bool, int, uint, float: what SAM 2's predictor turns into a tensor


def _released_object(obj, i: int, width: float, height: float, warnings: list[str]) -> Item | None:
    """One answer item as the released code hands it to SAM 2, or None where it never reaches a mask.

    Released steps (`parse_visual_prompt_from_json_s2`, `segment_v4_*`, `SegInferStrategy.segment`):
    a dict; points read as `[p[0], p[1]]` (an error skips the object); `bbox_2d` a list of 4;
    `np.array(box)` (a ragged box skips it); `np.array(points)` — a ragged point list drops the points
    and the box is segmented alone; then `predict`, whose failure skips the object: a box or point
    that numpy cannot hold as numbers (strings, null, integers beyond 64 bits) or of another shape.
    What numpy holds as numbers goes on as it is: true/false as 1/0, NaN and infinities included.
    """
    if not isinstance(obj, dict):
        return None
    box = obj.get("bbox_2d", [])
    try:
        points = [[p[0], p[1]] for p in obj.get("points", [])]
    except Exception:       # the released try around the whole object
        return None
    if not isinstance(box, list) or len(box) != 4:
        return None
    try:
        box_array = np.array(box)
    except ValueError:
        return None
    if box_array.dtype.kind not in _NUMERIC_KINDS or box_array.shape != (4,):
        return None
    coords = tuple(float(v) for v in box_array.tolist())
    pts: list[tuple[float, float]] = []
    if points:
        try:
            point_array = np.array(points)
        except ValueError:
            warnings.append(f"item {i}: points are not [x, y] number pairs; as released, its box is "
                            "segmented alone")
            point_array = None
        if point_array is not None:
            if point_array.dtype.kind not in _NUMERIC_KINDS or point_array.ndim != 2:
                return None
            pts = [(float(x), float(y)) for x, y in point_array.tolist()]
    if any(isinstance(v, bool) for v in box) or any(isinstance(v, bool) for p in points for v in p):
        warnings.append(f"item {i}: true/false coordinates read as 1/0, as released")
    values = coords + tuple(v for p in pts for v in p)
    if not all(math.isfinite(v) for v in values):
        warnings.append(f"item {i}: non-finite coordinates; as released they go to the segmenter "
                        "(SAM gives no mask for them)")
    elif _far_outside(coords, width, height):
        warnings.append(f"item {i}: box {_show(coords)} reaches far beyond the {width:g}x{height:g} image; "
                        "as released it goes to the segmenter as given")
    return Item(coords, pts)


def _far_outside(box, width: float, height: float) -> bool:
    x1, y1, x2, y2 = box
    mx, my = FAR_OUTSIDE * width, FAR_OUTSIDE * height
    return (min(x1, x2) < -mx or min(y1, y2) < -my or max(x1, x2) > width + mx or max(y1, y2) > height + my
            or max(x1, x2) < 0 or max(y1, y2) < 0 or min(x1, x2) > width or min(y1, y2) > height)


def _show(box) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def _render_list(value) -> tuple[list, bool]:
    """(boxes, spoilt): the boxes the released render draws (`render_image`), the `bbox_2d` of every
    dict item whose `len()` is 4, values as given. An item whose `bbox_2d` has no length (a number,
    null, true) makes `len()` raise inside the try around the whole list: then no box at all is drawn
    (`spoilt`)."""
    if not isinstance(value, list):
        return [], False
    boxes = []
    for item in value:
        if isinstance(item, dict) and "bbox_2d" in item:
            try:
                n = len(item["bbox_2d"])
            except TypeError:
                return [], True
            if n == 4:
                boxes.append(item["bbox_2d"])
    return boxes, False


def _loads(raw: str | None):
    """json.loads of the stripped answer; (value, True) or (None, False) when it rejects the text."""
    if raw is None:
        return None, False
    try:
        return json.loads(raw.strip()), True
    except (ValueError, RecursionError):
        return None, False


def parse_answer(text: str, width: float, height: float, tolerant: bool = True, shown: str | None = None,
                 max_objects: int | None = MAX_OBJECTS) -> ParsedAnswer:
    """Boxes and points of an answer; never raises.

    `text` is the answer decoded without special tokens (what the released code segments), `shown`
    the same answer decoded with them (what it renders and puts into the stage-2 text; default:
    `text`). When json.loads reads the answer, the items are exactly what the released code segments
    (`released=True`), warnings name the cases a person may want to know about (boxes far outside
    the image, non-finite or true/false coordinates, unreadable points). Otherwise, with `tolerant`
    (the product's safety net), Python-style literals and JSON-like text are salvaged, boxes sorted
    and clamped to the `width` x `height` image and stray points dropped, each change described in
    `warnings`; without it the answer gives nothing, as released. At most `max_objects` objects go
    to the segmenter and the render (the release has no cap; see MAX_OBJECTS; None: no cap).
    """
    warnings: list[str] = []
    max_objects = max_objects if max_objects is not None else math.inf
    raw = extract_answer(text) if isinstance(text, str) else None
    shown_raw = raw if shown is None else (extract_answer(shown) if isinstance(shown, str) else None)
    shown_value, shown_json = (None, False) if shown_raw is None else _loads(shown_raw)
    if shown_raw is not None and shown_raw == raw:
        value, is_json = shown_value, shown_json
    else:
        value, is_json = _loads(raw)
    capped_text = None
    if shown_json and isinstance(shown_value, list) and len(shown_value) > max_objects:
        shown_value = shown_value[:max_objects]
        capped_text = json.dumps(shown_value)
    boxes, spoilt = _render_list(shown_value) if shown_json else ([], False)
    if spoilt:
        warnings.append("an item's bbox_2d is a number, null or true/false: as released, no box is drawn "
                        "on the stage-2 images")
    if raw is None:
        return ParsedAnswer(None, [], warnings + ["answer has no <answer>...</answer> block"], shown=shown_raw,
                            boxes=boxes, capped_text=capped_text)
    if is_json:
        items: list[Item] = []
        entries = value if isinstance(value, list) else []
        if len(entries) > max_objects:
            warnings.append(f"answer lists {len(entries)} objects; only the first {max_objects} are used")
            entries = entries[:max_objects]
        for i, obj in enumerate(entries):
            item = _released_object(obj, i, width, height, warnings)
            if item is not None:
                items.append(item)
        skipped = len(entries) - len(items) if isinstance(value, list) else 1
        if skipped > 0:
            warnings.append(f"{skipped} answer item(s) without a usable bbox_2d skipped")
        return ParsedAnswer(raw, items, warnings, released=True, shown=shown_raw, boxes=boxes,
                            capped_text=capped_text)
    if not tolerant:
        return ParsedAnswer(raw, [], warnings + ["answer is not valid JSON (tolerant parsing is off)"], shown=shown_raw,
                            boxes=boxes, capped_text=capped_text)
    value, note = decode_answer_json(raw)
    if note:
        warnings.append(note)
    if value is None:
        value = _salvage_objects(raw, max_objects)
        if value:
            warnings.append(f"answer was not valid JSON; recovered {len(value)} object(s) by pattern")
        else:
            return ParsedAnswer(raw, [], warnings + ["answer is not a JSON list of boxes"], shown=shown_raw,
                                boxes=boxes, capped_text=capped_text)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return ParsedAnswer(raw, [], warnings + [f"answer is a {type(value).__name__}, not a list"],
                            shown=shown_raw, boxes=boxes, capped_text=capped_text)
    if len(value) > max_objects:
        warnings.append(f"answer lists {len(value)} objects; only the first {max_objects} are used")
        value = value[:max_objects]
    items = []
    for i, obj in enumerate(value):
        if not isinstance(obj, dict):
            warnings.append(f"item {i} is not an object")
            continue
        box = _finite_numbers(obj.get("bbox_2d"), 4)
        if box is None:
            warnings.append(f"item {i} has no valid bbox_2d")
            continue
        x1, y1, x2, y2 = box
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        cx1, cy1 = min(max(x1, 0.0), width - 1), min(max(y1, 0.0), height - 1)
        cx2, cy2 = min(max(x2, 0.0), width - 1), min(max(y2, 0.0), height - 1)
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            warnings.append(f"item {i}: box clamped to the image")
        if cx2 - cx1 < 1 or cy2 - cy1 < 1:
            warnings.append(f"item {i}: degenerate box dropped")
            continue
        points: list[tuple[float, float]] = []
        raw_points = obj.get("points", [])
        for p in raw_points if isinstance(raw_points, (list, tuple)) else []:
            xy = _finite_numbers(p, 2)
            if xy is None:
                warnings.append(f"item {i}: malformed point dropped")
            elif cx1 <= xy[0] <= cx2 and cy1 <= xy[1] <= cy2:
                points.append((xy[0], xy[1]))
            else:
                warnings.append(f"item {i}: point {xy} outside its box dropped")
        items.append(Item((cx1, cy1, cx2, cy2), points))
    if not items and value:     # an empty list is a valid "nothing here", not a problem
        warnings.append("answer holds no usable box")
    # The salvaged boxes are drawn: json.loads rejected the answer, so the release would draw none.
    return ParsedAnswer(raw, items, warnings, shown=shown_raw, boxes=[it.box for it in items],
                        capped_text=capped_text)


def render_boxes(answer: ParsedAnswer) -> list:
    """The boxes the render draws: as released, every `bbox_2d` of length 4 in `json.loads` of the
    answer (decoded with special tokens), values as given, none at all when one `bbox_2d` has no
    length; for an answer only the tolerant parser could read, its boxes. At most MAX_OBJECTS."""
    return answer.boxes


def format_answer(items: list[Item], with_points: bool) -> str:
    """The JSON answer text in the model's own style (integer pixels)."""
    out = []
    for it in items:
        obj: dict = {"bbox_2d": [int(round(v)) for v in it.box]}
        if with_points:
            obj["points"] = [[int(round(x)), int(round(y))] for x, y in it.points]
        out.append(obj)
    return json.dumps(out)
