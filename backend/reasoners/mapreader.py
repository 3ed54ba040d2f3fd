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
import os
import re
from collections import OrderedDict

import cv2
import numpy as np
import shapely
from affine import Affine

from ..errors import InputError
from ..pipeline.prompts import Item, ParsedAnswer, format_answer
from ..pipeline.query import QuerySpec, name_score, resolve_query
from ..geo.raster import rasterize
from ..resources import load_json, resource
from ..geo.vectormap import units_per_metre
from ..output import evidence
from .legend import Judge, Legend, group_places, place_mask
from .base import SmartResize, Reply, TileView

log = logging.getLogger(__name__)

POINT_BOX_M = 80.0        # side of the square a POI gets when no street block surrounds it
MAX_BLOCK_M2 = 250_000.0  # a "block" larger than this is open country, not a block
MIN_AREA_M2 = 100.0       # default minimum place: smaller pieces (tile-edge slivers, map noise) are dropped
WORK_M = 1.0              # raster maps are read at about this many metres per pixel
CONTEXT_M = 100.0         # ... and this far around each tile (a place's reach and grouping, with room)
BLOCK_M = 384.0           # a raster map's own pixels are read in blocks this wide (plus CONTEXT_M around)
MAX_BLOCKS = 64           # blocks kept read (about 0.6 MB each): two rows of blocks across a 12 km area
MIN_SITE_M2 = 20.0        # an enclosing building or site smaller than this is a mapping slip
# Areas that can stand for a place mapped only as a point inside them, and areas that cannot.
SITE_KEYS = ("amenity", "landuse", "leisure", "tourism", "shop", "office", "healthcare", "historic",
             "man_made", "military", "aeroway", "railway", "public_transport")
NOT_A_SITE = ("boundary", "place", "admin_level", "highway")
# Parts of a site (a school's track, a hospital's car park): a point inside one stands for more.
PARTS = {"leisure": {"pitch", "track", "playground", "swimming_pool", "fitness_station"},
         "amenity": {"parking", "bicycle_parking", "parking_space"}}
ZONING = {"residential", "commercial", "retail", "industrial", "construction", "brownfield", "greenfield"}


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


def spread_points(mask: np.ndarray, n: int, edge_px: int = 4) -> list[tuple[float, float]]:
    """Up to `n` points on a regular lattice over a mask, at least `edge_px` (and half a lattice step)
    inside its edge. The map
    says exactly where the place is; points all over it tell the segmenter that the whole shape,
    not only its middle, is foreground (an L-shaped school yard, a park around a pond)."""
    if n <= 0 or mask is None or not mask.any():
        return []
    # Half a lattice step from the edge: a segmenter that reads the lattice as "the object covers
    # each point's half-step neighbourhood" then stays inside the outline.
    edge_px = max(edge_px, int(np.ceil(0.5 * np.sqrt(mask.sum() / n))))
    inner = cv2.erode(mask.astype(np.uint8), np.ones((2 * edge_px + 1,) * 2, np.uint8)).astype(bool)
    count = int(inner.sum())
    if count == 0:
        return []
    step = max(4, int(np.ceil(np.sqrt(count / n))))
    while True:
        ys, xs = np.nonzero(inner[step // 2::step, step // 2::step])
        if len(ys) <= n:
            break
        step += 1
    return [(float(x * step + step // 2), float(y * step + step // 2)) for y, x in zip(ys, xs)]


def check_legend(path: str) -> None:
    """A legend file is JSON with "colours": {"#rrggbb": [class, ...]}; anything else is named now,
    before any work, with the option that changes it."""
    fix = "pass a legend JSON file with --reasoner mapreader:LEGEND.json (see resources/legends/osm_carto.json)"
    if not os.path.isfile(path):
        raise InputError(f"map legend {path} not found: {fix}")
    try:
        legend = load_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"map legend {path} is not valid JSON ({exc}): {fix}") from None
    colours = legend.get("colours") if isinstance(legend, dict) else None
    if not isinstance(colours, dict) or not colours:
        raise InputError(f'map legend {path} has no "colours" table: {fix}')
    for code, classes in colours.items():
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", str(code)) or not isinstance(classes, list):
            raise InputError(f'map legend {path}: entry {code!r} is not "#rrggbb": [class, ...]: {fix}')


class MapReader(SmartResize):
    name = "mapreader"
    reads_outlines = True   # its replies carry each object's outline (see PipelineOptions.outline)
    max_points = 64   # stage-2 points per box beyond the two deepest ones (see spread_points)
    max_objects = None  # it lists every place the map shows; prompts.MAX_OBJECTS guards model answers

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        # The map is read at the tile's own pixels: a resize to the model's pixel budget would blend
        # the legend's colours and the labels' strokes. The segmenter works in the same frame.
        return height, width

    def __init__(self, legend: str | None = None, min_area_m2: float = MIN_AREA_M2):
        self.legend_path = legend or resource("legends", "osm_carto.json")
        check_legend(self.legend_path)
        self._legend: Legend | None = None
        self._found: tuple = (None, None)
        self.min_area_m2 = float(min_area_m2)   # detect() drops merged regions under this too
        self._spec_cache: dict[tuple[str, str | None], QuerySpec] = {}
        self._vector_cache: dict[int, list] = {}
        self._read_blocks: OrderedDict = OrderedDict()     # blocks of a raster map's lattice, read (see _block)

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
                                 "give a vector map, a legend file with that class (--reasoner mapreader:LEGEND.json), "
                                 "or use --reasoner qwen")
        else:
            if spec.kind == "name" and not any(f.name for f in map_features.features):
                raise InputError(
                    f"this map has no names: {query!r} reads as a place name, but no feature of the vector map "
                    "has a name. Give a map with a 'name' field (e.g. an OpenStreetMap extract), ask for a class "
                    "or function (--task class), or use --reasoner qwen")
            found = self._candidates(spec, map_features)
            if not found:
                log.warning("no map feature matches %r (%s)", query, spec.kind)
            else:
                m2 = units_per_metre(map_features.crs) ** 2
                if all(g.area < self.min_area_m2 * m2 for g, *_ in found):
                    log.warning("%d map feature(s) match %r, but every one is smaller than the map reader's "
                                "minimum place of %g m2 (the largest %.0f m2), so none is found: such small "
                                "features are taken for map noise, not places", len(found), query,
                                self.min_area_m2, max(g.area for g, *_ in found) / m2)

    # --- vector maps ----------------------------------------------------------------------------
    def _candidates(self, spec: QuerySpec, vmap) -> list[tuple[shapely.Geometry, str, float, bool]]:
        """(area geometry, label, score, exact) of every feature of the whole map that answers the
        query; `exact` is False where the area is a guess (the street block or square around a point,
        a buffered line), whose outline the segmenter should cut from the image instead."""
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
        area_tree = shapely.STRtree(areas) if areas else None
        metre = units_per_metre(vmap.crs)
        out = []
        blocks = None
        for f, s in hits:
            g, exact = f.geometry, True
            label = f.name or next((f"{k}={f.props[k]}" for k in spec.tags if f.props.get(k)), spec.label)
            # The map's own words say what the feature is: its tag for a class or function, its name
            # (certain only where it is the name asked for) for a name.
            if spec.kind == "name":
                said, sure = f"name {f.name!r} ({s:.2f} like {spec.text!r})", s >= 1.0
            else:
                tag = next((f"{k}={f.props[k]}" for k, v in spec.tags.items()
                            if f.props.get(k) is not None and str(f.props[k]).strip().lower() in v), "")
                said, sure = f"tagged {tag}", True
            if g.geom_type in ("Point", "MultiPoint"):
                if area_tree is not None and len(area_tree.query(g, predicate="within")):
                    continue          # the same place is also mapped as an area
                if blocks is None:
                    blocks = self._blocks(vmap)
                g, exact = self._area_for_point(g, vmap, blocks, metre)
                said += "; mapped as a point, " + ("drawn by the site around it" if exact else
                                                   "its outline a guess (the street block around it)")
            elif g.geom_type in ("LineString", "MultiLineString"):
                # GDAL's OSM driver makes a closed way a line unless a key of its osmconf.ini says
                # "area" (healthcare=*, for one, does not): a closed way tagged as a place is its area.
                rings = [p for p in shapely.get_parts(g) if p.is_closed and len(p.coords) >= 4]
                area = shapely.make_valid(shapely.union_all([shapely.Polygon(r) for r in rings])) if rings else None
                exact = area is not None and area.area > 0
                g = area if exact else g.buffer(10.0 * metre)
            out.append((g, evidence.tag(label, sure, said), s, exact))
        self._vector_cache[key] = out
        return out

    @staticmethod
    def _blocks(vmap) -> shapely.STRtree | None:
        roads = [f.geometry for f in vmap.features if f.props.get("highway")
                 and f.geometry.geom_type in ("LineString", "MultiLineString")]
        if not roads:
            return None
        merged = shapely.union_all(roads)
        biggest = MAX_BLOCK_M2 * units_per_metre(vmap.crs) ** 2
        polys = [p for p in shapely.get_parts(shapely.polygonize([merged])) if p.area <= biggest]
        return shapely.STRtree(polys) if polys else None

    @staticmethod
    def _area_for_point(pt, vmap, blocks, metre: float) -> tuple[shapely.Geometry, bool]:
        """The area a place mapped only as a point stands for, and whether the map draws it: the
        smallest enclosing site (an area with another tag: amenity, landuse, leisure, ...; a building
        only when no site encloses it) no larger than its street block, else (a guess) the street
        block, else a square."""
        block = None
        if blocks is not None:
            idx = blocks.query(pt, predicate="within")
            if len(idx):
                block = blocks.geometries[idx[0]]
        limit = block.area if block is not None else MAX_BLOCK_M2 * metre ** 2
        sites, buildings = [], []
        for i in vmap.tree.query(pt, predicate="within"):
            f = vmap.features[i]
            g = f.geometry
            if g.geom_type not in ("Polygon", "MultiPolygon") or not (MIN_SITE_M2 * metre ** 2 <= g.area <= limit):
                continue
            if any(f.props.get(k) for k in NOT_A_SITE) or f.props.get("landuse") in ZONING or any(
                    f.props.get(k) in v for k, v in PARTS.items()):
                continue
            if any(f.props.get(k) for k in SITE_KEYS):
                sites.append(g)
            elif f.props.get("building") not in (None, "", "no"):
                buildings.append(g)
        for found in (sites, buildings):
            if found:
                return min(found, key=lambda a: a.area), True
        if block is not None:
            # The carriageway is not part of the place: pull the block edge in by half a road.
            inner = block.buffer(-5.0 * metre)
            return (inner if not inner.is_empty else block), False
        return pt.buffer(POINT_BOX_M / 2 * metre, cap_style="square"), False

    def _vector_items(self, view: TileView, spec: QuerySpec):
        h, w = view.map_image.shape[:2]
        t = view.transform
        tile_poly = shapely.box(*_bounds(t, w, h))
        px_area = abs(t.a * t.e)
        items, labels, masks, outlines = [], [], [], []
        for geom, label, _, exact in self._candidates(spec, view.map_features):
            part = geom.intersection(tile_poly)
            if part.is_empty or part.area < max(self.min_area_m2 * units_per_metre(view.crs) ** 2, 20 * px_area):
                continue
            m = rasterize([part], (h, w), t)
            if not m.any():
                continue
            ys, xs = np.nonzero(m)
            items.append(Item((float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))))
            labels.append(label)
            masks.append(m)
            outlines.append(m if exact else None)
        return items, labels, masks, outlines

    # --- raster maps ----------------------------------------------------------------------------
    @property
    def legend(self) -> Legend:
        if self._legend is None:
            self._legend = Legend(self.legend_path)
        return self._legend

    def _legend_colours(self, spec: QuerySpec) -> tuple[list[tuple[int, int, int]], set[str]]:
        return self.legend.colours_for(spec.classes)

    def _raster_items(self, view: TileView, spec: QuerySpec) -> tuple[list[Item], list[str], list[np.ndarray], list[str]]:
        colours, others = self._legend_colours(spec)
        img = view.map_image
        metre = units_per_metre(view.crs) if view.crs is not None else 1.0
        pixel_m = abs(view.transform.a) / metre if view.transform is not None else 1.0
        # Read at about the map's own scale (~1 m/px), whatever the grid: the same places at 1 m
        # and at 0.25 m per pixel, and the same cost per square metre.
        step = max(1, int(round(WORK_M / pixel_m)))
        h, w = img.shape[:2]
        dx = dy = 0
        if view.map_around is not None and view.model_size == view.original_size and view.crs is not None:
            # The map's own pixels where its file can be read so (backend/geo/native.py): which of a
            # map's one-pixel lines and strokes a grid keeps depends on where its pixels fall.
            try:
                native = view.map_around(0, native=WORK_M)
            except TypeError:          # a map_around that has only the grid's pixels
                native = None
            if native is not None:
                return self._native_items(view, spec, native, colours, others)
        if view.map_around is not None and view.model_size == view.original_size:
            # Read the map around the tile too: a place is judged on its whole extent (up to
            # CONTEXT_M beyond the tile), so a tile that sees only a school's roofs still knows the
            # school, and 1 m and 0.25 m grids (tiles of 768 m and 192 m) find the same places.
            img, dx, dy = view.map_around(-(-int(np.ceil(CONTEXT_M / pixel_m)) // step) * step)
            # the reading lattice stays the tile's own (grid edges may clip the margin)
            img, dx, dy = img[dy % step:, dx % step:], dx - dx % step, dy - dy % step
        small = img[::step, ::step]
        labels = self.legend.label_colours(spec.classes)
        mask, explained = place_mask(small, self.legend, colours, pixel_m * step, labels, explain=True)
        judge = Judge(self.legend, spec.classes, explained, pixel_m * step)
        min_px = max(1, int(np.ceil(self.min_area_m2 / (pixel_m * step) ** 2)))
        items, names, masks = [], [], []
        for m in group_places(mask, pixel_m * step, min_px):
            certain, classes, said = judge.judge(m)
            # the tile's part of the place (dx, dy are multiples of step), then at the tile's pixels
            m = m[dy // step: (dy + h + step - 1) // step, dx // step: (dx + w + step - 1) // step]
            if not m.any():
                continue
            if step > 1:
                m = np.repeat(np.repeat(m, step, axis=0), step, axis=1)
            m = m[:h, :w]
            ys, xs = np.nonzero(m)
            items.append(Item((float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))))
            names.append(evidence.tag(spec.label if certain else evidence.site_name(classes), certain, said))
            masks.append(m)
        notes = []
        if others and items:
            told = " where no label or icon on the map says which" if any(labels) else ""
            notes.append(f"the map legend ({self.legend.name}) cannot tell {spec.label} from "
                         f"{', '.join(sorted(others))}{told}")
        return items, names, masks, notes

    def _native_items(self, view: TileView, spec: QuerySpec, native, colours, others):
        """_raster_items on the map's own pixel lattice (backend/geo/native.py). The lattice is read in
        blocks of BLOCK_M anchored to the map's origin, each with CONTEXT_M around it, and a map pixel's
        place is its block's: so it is the same whatever grid, tile layout or phase asks. A tile takes
        the blocks it overlaps, warped onto its pixels with nearest neighbour (each tile pixel takes the
        map pixel under its centre)."""
        from rasterio.warp import Resampling, reproject

        h, w = view.map_image.shape[:2]
        bpx = max(64, int(round(BLOCK_M / native.pixel_m)))
        c0, r0, c1, r1 = native.window
        on_tile = np.zeros((h, w), np.int32)
        judged: list = [None]
        for bj in range(r0 // bpx, (r1 - 1) // bpx + 1):
            for bi in range(c0 // bpx, (c1 - 1) // bpx + 1):
                core, transform, found = self._block(native, spec, colours, bi, bj, bpx)
                if not found:
                    continue
                here = np.zeros((h, w), np.int32)
                reproject(core, here, src_transform=transform, src_crs=native.crs, dst_transform=view.transform,
                          dst_crs=view.crs, resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
                on_tile = np.where(here > 0, here + (len(judged) - 1), on_tile)
                judged += found
        items, names, masks = [], [], []
        for k in np.unique(on_tile):
            if k == 0:
                continue
            m = on_tile == k
            certain, classes, said = judged[k]
            ys, xs = np.nonzero(m)
            items.append(Item((float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))))
            names.append(evidence.tag(spec.label if certain else evidence.site_name(classes), certain, said))
            masks.append(m)
        notes = []
        labels = self.legend.label_colours(spec.classes)
        if others and items:
            told = " where no label or icon on the map says which" if any(labels) else ""
            notes.append(f"the map legend ({self.legend.name}) cannot tell {spec.label} from "
                         f"{', '.join(sorted(others))}{told}")
        return items, names, masks, notes

    def _block(self, native, spec: QuerySpec, colours, bi: int, bj: int, bpx: int):
        """The places of one block of the map's lattice: (the block's place ids, its transform, the
        (certain, classes, evidence) of each id from 1), read once and kept for the tiles that share it."""
        src = native.raster.src
        try:
            stat = os.stat(src.name)
            ident = (src.name, stat.st_size, stat.st_mtime_ns)
        except OSError:
            ident = (src.name, id(native.raster))
        key = (ident, native.step, spec.text, spec.kind, bpx, bi, bj)
        if key in self._read_blocks:
            self._read_blocks.move_to_end(key)
            return self._read_blocks[key]
        from ..geo.native import ground_pixel_m

        px = ground_pixel_m(native.transform, native.crs, (bi + 0.5) * bpx, (bj + 0.5) * bpx)
        ctx = int(np.ceil(CONTEXT_M / px))
        x0, y0 = max(0, bi * bpx - ctx), max(0, bj * bpx - ctx)
        rgb, transform = native.read(x0, y0, (bi + 1) * bpx + ctx, (bj + 1) * bpx + ctx)
        ox, oy = bi * bpx - x0, bj * bpx - y0
        labels = self.legend.label_colours(spec.classes)
        mask, explained = place_mask(rgb, self.legend, colours, px, labels, explain=True, step=native.step)
        judge = Judge(self.legend, spec.classes, explained, px, step=native.step)
        core = np.zeros(mask[oy:oy + bpx, ox:ox + bpx].shape, np.int32)
        found = []
        for m in group_places(mask, px, max(1, int(np.ceil(self.min_area_m2 / px ** 2)))):
            part = m[oy:oy + bpx, ox:ox + bpx]
            if part.any():
                found.append(judge.judge(m))
                core[part] = len(found)
        out = (core, transform * Affine.translation(ox, oy), found)
        self._read_blocks[key] = out
        while len(self._read_blocks) > MAX_BLOCKS:
            self._read_blocks.popitem(last=False)
        return out

    # --- the two stages -------------------------------------------------------------------------
    def _find(self, view: TileView):
        """What the map says about this tile; stage 2 asks again for the same view (cached)."""
        key = (view.tile_id, id(view.map_image), view.query, view.task)
        if self._found[0] == key:
            return self._found[1]
        spec = self.spec(view.query, view.task)
        if view.map_features is not None:
            items, labels, masks, outlines = self._vector_items(view, spec)
            found = (spec, items, labels, masks, [], outlines)
        else:
            items, labels, masks, notes = self._raster_items(view, spec)
            found = (spec, items, labels, masks, notes, masks)
        self._found = (key, found)
        return found

    def stage1(self, view: TileView, prompt: str) -> Reply:
        spec, items, labels, _, notes, outlines = self._find(view)
        source = "vector map features" if view.map_features is not None else "map colours (legend)"
        shown = [evidence.split(lab)[0] for lab in labels]
        think = (f"Reading the {source} for '{view.query}' ({spec.kind}: {spec.label}). "
                 f"Found {len(items)} candidate(s)" + (f": {'; '.join(shown)}." if shown else "."))
        return Reply(f"<think>{think}</think><answer>{format_answer(items, False)}</answer>", notes,
                     labels, list(outlines))

    def stage2(self, view: TileView, prompt: str, rendered_map, rendered_sat, stage1: ParsedAnswer) -> Reply:
        _, items, labels, masks, notes, drawn = self._find(view)
        out, outlines = [], []
        for it in stage1.items:
            best, best_iou, outline = None, 0.0, None
            for cand, m, o in zip(items, masks, drawn):
                iou = _box_iou(it.box, cand.box)
                if iou > best_iou:
                    best, best_iou, outline = m, iou, o
            pts = (interior_points(best) + spread_points(best, self.max_points)) if best is not None else []
            x1, y1, x2, y2 = it.box
            pts = [p for p in pts if x1 < p[0] < x2 and y1 < p[1] < y2]
            out.append(Item(it.box, pts or [((x1 + x2) / 2, (y1 + y2) / 2)]))
            outlines.append(outline)
        think = f"Adding interior points to {len(out)} box(es) from the matched map areas."
        return Reply(f"<think>{think}</think><answer>{format_answer(out, True)}</answer>", notes, [], outlines)


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
