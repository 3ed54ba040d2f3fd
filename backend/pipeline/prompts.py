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

    @property
    def ok(self) -> bool:
        return self.raw is not None and bool(self.items)

    @property
    def stage2_boxes_text(self) -> str:
        """What the released code puts into the stage-2 text: the answer .strip()ped, "" without tags."""
        return self.raw.strip() if self.raw is not None else ""


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


def _salvage_objects(raw: str) -> list[dict]:
    """Pull {"bbox_2d": [...], "points": [[x, y], ...]} objects out of text that is not valid JSON."""
    found = []
    for obj in _OBJECT_RE.finditer(raw + "}"):
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


def _released_items(raw: str) -> list[Item] | None:
    """The objects the released code hands to the segmenter, or None when json.loads rejects the text.

    As released: `json.loads` of the stripped answer; a non-list gives nothing; non-dict items, items
    whose `bbox_2d` is not a list of 4, and items whose points cannot be read as [x, y] are skipped;
    coordinates go on as they are (no clamping, no sorting, points outside the box kept). Items with
    non-numeric or non-finite coordinates are skipped too: the released segmenter call raises on them
    and its `except: continue` skips the object.
    """
    try:
        value = json.loads(raw.strip())
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, list):
        return []
    items = []
    for obj in value:
        if not isinstance(obj, dict):
            continue
        box = obj.get("bbox_2d", [])
        try:
            points = [(p[0], p[1]) for p in obj.get("points", [])]
        except (TypeError, KeyError, IndexError):
            continue
        if not isinstance(box, list) or len(box) != 4:
            continue
        coords = _finite_numbers(box, 4)
        pts = [_finite_numbers(list(p), 2) for p in points]
        if coords is None or any(p is None for p in pts):
            continue
        items.append(Item(tuple(coords), [tuple(p) for p in pts]))
    return items


def parse_answer(text: str, width: float, height: float, tolerant: bool = True) -> ParsedAnswer:
    """Boxes and points of an answer; never raises.

    When json.loads reads the answer, the items are exactly what the released code segments
    (`released=True`). Otherwise, with `tolerant` (the product's safety net), Python-style literals
    and JSON-like text are salvaged, boxes sorted and clamped to the `width` x `height` image and
    stray points dropped, each change described in `warnings`; without it the answer gives nothing,
    as released.
    """
    warnings: list[str] = []
    raw = extract_answer(text) if isinstance(text, str) else None
    if raw is None:
        return ParsedAnswer(None, [], ["answer has no <answer>...</answer> block"])
    released = _released_items(raw)
    if released is not None:
        skipped = _count_items(raw) - len(released)
        if skipped > 0:
            warnings.append(f"{skipped} answer item(s) without a usable bbox_2d skipped")
        return ParsedAnswer(raw, released, warnings, released=True)
    if not tolerant:
        return ParsedAnswer(raw, [], ["answer is not valid JSON (tolerant parsing is off)"])
    value, note = decode_answer_json(raw)
    if note:
        warnings.append(note)
    if value is None:
        value = _salvage_objects(raw)
        if value:
            warnings.append(f"answer was not valid JSON; recovered {len(value)} object(s) by pattern")
        else:
            return ParsedAnswer(raw, [], warnings + ["answer is not a JSON list of boxes"])
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return ParsedAnswer(raw, [], warnings + [f"answer is a {type(value).__name__}, not a list"])
    items: list[Item] = []
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
    return ParsedAnswer(raw, items, warnings)


def render_boxes(answer: ParsedAnswer) -> list:
    """The boxes the render draws: as released, every `bbox_2d` of length 4 in `json.loads` of the
    answer, values as given; for an answer only the tolerant parser could read, its boxes."""
    if not answer.released:
        return [it.box for it in answer.items]
    value = json.loads(answer.raw.strip())
    if not isinstance(value, list):
        return []
    return [obj["bbox_2d"] for obj in value
            if isinstance(obj, dict) and "bbox_2d" in obj and _sized(obj["bbox_2d"]) == 4]


def _sized(value) -> int | None:
    try:
        return len(value)
    except TypeError:
        return None


def _count_items(raw: str) -> int:
    value = json.loads(raw.strip())
    return len(value) if isinstance(value, list) else 1


def format_answer(items: list[Item], with_points: bool) -> str:
    """The JSON answer text in the model's own style (integer pixels)."""
    out = []
    for it in items:
        obj: dict = {"bbox_2d": [int(round(v)) for v in it.box]}
        if with_points:
            obj["points"] = [[int(round(x)), int(round(y))] for x, y in it.points]
        out.append(obj)
    return json.dumps(out)
