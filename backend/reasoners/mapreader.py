"""A weight-free reasoner that reads the digital map instead of looking at it.

Vector maps: the query is matched against feature names (Socio-name) or OSM tags through
resources/socio_classes.json (Socio-class, Socio-function). Areas give boxes directly; points take the
street block around them (blocks polygonised from the map's roads) or a default square.
Raster maps: regions whose colour the legend assigns to the query's classes. Where one colour stands
for several classes the answer says so (a note that reaches the output attributes).

It answers in the released model's text format, so the pipeline, parser and dumps are the same as for
the vision-language model. It is an honest baseline, not the paper's method.
"""
from __future__ import annotations

import logging

import cv2
import numpy as np
import shapely
from scipy import ndimage

from ..errors import InputError
from ..geo.maprender import hex_rgb
from ..pipeline.prompts import Item, ParsedAnswer, format_answer
from ..pipeline.query import QuerySpec, name_score, resolve_query
from ..geo.raster import rasterize
from ..resources import load_json, resource
from ..geo.vectormap import units_per_metre
from .base import QwenFrame, Reply, TileView

log = logging.getLogger(__name__)

POINT_BOX_M = 80.0        # side of the square a POI gets when no street block surrounds it
MAX_BLOCK_M2 = 250_000.0  # a "block" larger than this is open country, not a block
MIN_AREA_M2 = 150.0       # smaller pieces (slivers at tile edges, legend noise) are ignored


def interior_points(mask: np.ndarray, n: int = 2) -> list[tuple[float, float]]:
    """Up to `n` points deep inside a mask: distance-transform maxima kept a quarter-diagonal apart."""
    if mask is None or not mask.any():
        return []
    dt = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    ys, xs = np.nonzero(mask)
    spacing = 0.25 * float(np.hypot(xs.max() - xs.min(), ys.max() - ys.min()))
    yy, xx = np.ogrid[: mask.shape[0], : mask.shape[1]]
    work = dt.copy()
    pts: list[tuple[float, float]] = []
    for _ in range(n):
        r, c = np.unravel_index(int(np.argmax(work)), work.shape)
        if work[r, c] < 1.0:
            break
        pts.append((float(c), float(r)))
        work[(yy - r) ** 2 + (xx - c) ** 2 <= max(spacing, float(dt[r, c])) ** 2] = 0
    return pts


class MapReader(QwenFrame):
    name = "mapreader"

    def __init__(self, legend: str | None = None):
        self.legend_path = legend or resource("legends", "osm_carto.json")
        self._spec_cache: dict[tuple[str, str | None], QuerySpec] = {}
        self._vector_cache: dict[int, list] = {}

    # --- checks before any tile runs ------------------------------------------------------------
    def spec(self, query: str, task: str | None) -> QuerySpec:
        key = (query, task)
        if key not in self._spec_cache:
            self._spec_cache[key] = resolve_query(query, task)
        return self._spec_cache[key]

    def prepare(self, query: str, task: str | None, map_features) -> None:
        spec = self.spec(query, task)
        if map_features is None:
            if spec.kind == "name":
                raise InputError(
                    f"{query!r} reads as a place name, and names cannot be read from a raster map's colours. "
                    "Give a vector map with names (GeoPackage, GeoJSON or Shapefile, e.g. an OpenStreetMap "
                    "extract), ask for a class or function (--task class), or use the vision-language "
                    "reasoner (--reasoner qwen; see README, 'Using the SocioReasoner model').")
            if not self._legend_colours(spec)[0]:
                raise InputError(f"the map legend {self.legend_path} has no colour for {spec.label}: "
                                 "give a vector map, a legend file with that class (--legend), or use "
                                 "--reasoner qwen")
        else:
            if not self._candidates(spec, map_features):
                log.warning("no map feature matches %r (%s)", query, spec.kind)

    # --- vector maps ----------------------------------------------------------------------------
    def _candidates(self, spec: QuerySpec, vmap) -> list[tuple[shapely.Geometry, str, float]]:
        """(area geometry, label, score) of every feature of the whole map that answers the query."""
        key = (id(vmap), spec.text, spec.kind)
        if key in self._vector_cache:
            return self._vector_cache[key]
        hits = []
        for f in vmap.features:
            if spec.kind == "name":
                score = max(name_score(spec.text, f.name), name_score(spec.text, str(f.props.get("name:en") or "")))
            else:
                score = 1.0 if spec.matches_tags(f.props) else 0.0
            if score > 0:
                hits.append((f, score))
        if spec.kind == "name" and hits:
            best = max(s for _, s in hits)
            hits = [(f, s) for f, s in hits if s >= max(0.6, best - 0.1)]
        areas = [f.geometry for f, _ in hits if f.geometry.geom_type in ("Polygon", "MultiPolygon")]
        out = []
        blocks = None
        for f, s in hits:
            g = f.geometry
            label = f.name or next((f"{k}={f.props[k]}" for k in spec.tags if f.props.get(k)), spec.label)
            if g.geom_type in ("Point", "MultiPoint"):
                if any(a.contains(g) for a in areas):
                    continue          # the same place is also mapped as an area
                if blocks is None:
                    blocks = self._blocks(vmap)
                g = self._area_for_point(g, blocks, units_per_metre(vmap.crs))
            elif g.geom_type in ("LineString", "MultiLineString"):
                g = g.buffer(10.0 * units_per_metre(vmap.crs))
            out.append((g, label, s))
        self._vector_cache[key] = out
        return out

    @staticmethod
    def _blocks(vmap) -> list[shapely.Polygon]:
        roads = [f.geometry for f in vmap.features if f.props.get("highway")
                 and f.geometry.geom_type in ("LineString", "MultiLineString")]
        if not roads:
            return []
        merged = shapely.union_all(roads)
        biggest = MAX_BLOCK_M2 * units_per_metre(vmap.crs) ** 2
        return [p for p in shapely.get_parts(shapely.polygonize([merged])) if p.area <= biggest]

    @staticmethod
    def _area_for_point(pt, blocks, metre: float) -> shapely.Geometry:
        for b in blocks:
            if b.contains(pt):
                # The carriageway is not part of the place: pull the block edge in by half a road.
                inner = b.buffer(-5.0 * metre)
                return inner if not inner.is_empty else b
        return pt.buffer(POINT_BOX_M / 2 * metre, cap_style="square")

    def _vector_items(self, view: TileView, spec: QuerySpec) -> tuple[list[Item], list[str], list[np.ndarray]]:
        h, w = view.map_image.shape[:2]
        t = view.transform
        tile_poly = shapely.box(*_bounds(t, w, h))
        px_area = abs(t.a * t.e)
        items, labels, masks = [], [], []
        for geom, label, _ in self._candidates(spec, view.map_features):
            part = geom.intersection(tile_poly)
            if part.is_empty or part.area < max(MIN_AREA_M2 * units_per_metre(view.crs) ** 2, 20 * px_area):
                continue
            m = rasterize([part], (h, w), t)
            if not m.any():
                continue
            ys, xs = np.nonzero(m)
            items.append(Item((float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))))
            labels.append(label)
            masks.append(m)
        return items, labels, masks

    # --- raster maps ----------------------------------------------------------------------------
    def _legend_colours(self, spec: QuerySpec) -> tuple[list[tuple[int, int, int]], set[str]]:
        legend = load_json(self.legend_path)
        wanted = set(spec.classes)
        colours, others = [], set()
        for hexcode, classes in legend["colours"].items():
            if wanted & set(classes):
                colours.append(hex_rgb(hexcode))
                others |= set(classes) - wanted
        return colours, others

    def _raster_items(self, view: TileView, spec: QuerySpec) -> tuple[list[Item], list[str], list[np.ndarray], list[str]]:
        legend = load_json(self.legend_path)
        tol = int(legend.get("tolerance", 6))
        colours, others = self._legend_colours(spec)
        img = view.map_image.astype(np.int16)
        hit = np.zeros(img.shape[:2], bool)
        for c in colours:
            hit |= (np.abs(img - np.array(c, np.int16)) <= tol).all(axis=-1)
        hit = cv2.morphologyEx(hit.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
        labels, n = ndimage.label(hit)
        px_area = abs(view.transform.a * view.transform.e)
        items, names, masks = [], [], []
        for k in range(1, n + 1):
            comp = ndimage.binary_fill_holes(labels == k)   # buildings and labels drawn over the area
            if comp.sum() * px_area < 400.0 * units_per_metre(view.crs) ** 2:
                continue
            ys, xs = np.nonzero(comp)
            items.append(Item((float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))))
            names.append(spec.label)
            masks.append(comp)
        notes = []
        if others and items:
            notes.append(f"map legend cannot tell {spec.label} from {', '.join(sorted(others))}")
        return items, names, masks, notes

    # --- the two stages -------------------------------------------------------------------------
    def _find(self, view: TileView):
        spec = self.spec(view.query, view.task)
        if view.map_features is not None:
            items, labels, masks = self._vector_items(view, spec)
            return spec, items, labels, masks, []
        return (spec, *self._raster_items(view, spec))

    def stage1(self, view: TileView, prompt: str) -> Reply:
        spec, items, labels, _, notes = self._find(view)
        source = "vector map features" if view.map_features is not None else "map colours (legend)"
        think = (f"Reading the {source} for '{view.query}' ({spec.kind}: {spec.label}). "
                 f"Found {len(items)} candidate(s)" + (f": {'; '.join(labels)}." if labels else "."))
        return Reply(f"<think>{think}</think><answer>{format_answer(items, False)}</answer>", notes,
                     labels if view.map_features is not None else [])

    def stage2(self, view: TileView, prompt: str, rendered_map, rendered_sat, stage1: ParsedAnswer) -> Reply:
        _, items, labels, masks, notes = self._find(view)
        out = []
        for it in stage1.items:
            best, best_iou = None, 0.0
            for cand, m in zip(items, masks):
                iou = _box_iou(it.box, cand.box)
                if iou > best_iou:
                    best, best_iou = m, iou
            pts = interior_points(best) if best is not None else []
            x1, y1, x2, y2 = it.box
            pts = [p for p in pts if x1 < p[0] < x2 and y1 < p[1] < y2]
            out.append(Item(it.box, pts or [((x1 + x2) / 2, (y1 + y2) / 2)]))
        think = f"Adding interior points to {len(out)} box(es) from the matched map areas."
        return Reply(f"<think>{think}</think><answer>{format_answer(out, True)}</answer>", notes)


def _bounds(t, w, h):
    xs = [t.c, t.c + t.a * w]
    ys = [t.f, t.f + t.e * h]
    return min(xs), min(ys), max(xs), max(ys)


def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
