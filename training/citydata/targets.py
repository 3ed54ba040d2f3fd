"""The places of an OpenStreetMap extract that SocioSeg queries can ask for, and their outlines.

A place is an OSM area (a polygon, or a closed way GDAL left as a line) or a point taken into the
smallest site that encloses it, exactly as the weight-free map reader takes points at detection
(backend/reasoners/mapreader.py). Its classes come from resources/socio_classes.json (the same table
the map reader and `--truth` use), its functions from the classes. A point with no enclosing site has
no outline anyone drew, so it gives no truth: it is counted and skipped.
"""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field

import shapely

from backend.geo.vectormap import VectorMap, units_per_metre
from backend.pipeline.query import _table, normalise
from backend.reasoners.mapreader import NOT_A_SITE, SITE_KEYS, MapReader

log = logging.getLogger(__name__)


@dataclass
class Place:
    id: str                          # "way/123", "relation/45", "node/6" (or layer:index without OSM ids)
    name: str
    classes: list[str]
    geometry: shapely.Geometry       # in the grid's CRS


@dataclass
class Targets:
    places: list[Place]
    functions: dict[str, list[str]]          # function -> its classes (those of the requested classes)
    skipped: Counter = field(default_factory=Counter)

    def __post_init__(self):
        self.tree = shapely.STRtree([p.geometry for p in self.places]) if self.places else None

    def near(self, box: shapely.Geometry) -> list[Place]:
        if self.tree is None:
            return []
        return [self.places[i] for i in sorted(self.tree.query(box, predicate="intersects"))]


def class_table_version() -> str:
    """The class table's content hash: masks and queries change when it does."""
    from backend.resources import resource
    with open(resource("socio_classes.json"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def _classes_of(props: dict, table: dict) -> list[str]:
    out = []
    for name, entry in table.items():
        for key, values in entry["tags"].items():
            v = props.get(key)
            if v is not None and str(v).strip().lower() in values:
                out.append(name)
                break
    return out


def _osm_id(f, index: int) -> str:
    p = f.props
    if p.get("osm_way_id") not in (None, ""):
        return f"way/{p['osm_way_id']}"
    if p.get("osm_id") not in (None, ""):
        kind = {"points": "node", "lines": "way", "multipolygons": "relation"}.get(f.layer, f.layer)
        return f"{kind}/{p['osm_id']}"
    return f"{f.layer}:{index}"


def _is_site(props: dict) -> bool:
    """A named feature that is a place someone would ask for by name (not a street or a boundary)."""
    if any(props.get(k) for k in NOT_A_SITE):
        return False
    return any(props.get(k) for k in SITE_KEYS) or props.get("building") not in (None, "", "no")


def find_places(vmap: VectorMap, classes: list[str] | None = None) -> Targets:
    """Every place of `vmap` that has a class of the table (or of `classes`), with its name if any."""
    table = _table()
    wanted = {c: table["classes"][c] for c in (classes or table["classes"])}
    functions = {fn: [c for c in e["classes"] if c in wanted] for fn, e in table["functions"].items()}
    functions = {fn: cs for fn, cs in functions.items() if cs}
    metre = units_per_metre(vmap.crs)
    skipped: Counter = Counter()
    areas: list[Place] = []
    points = []
    for i, f in enumerate(vmap.features):
        cls = _classes_of(f.props, wanted)
        if not cls:
            continue
        # Socio-name asks for named socio-semantic places (a zoo, a school), not for every named shop
        name = f.name.strip() if _is_site(f.props) else ""
        g = f.geometry
        if g.geom_type in ("Point", "MultiPoint"):
            points.append((i, f, cls, name))
            continue
        if g.geom_type in ("LineString", "MultiLineString"):
            # GDAL's OSM driver keeps a closed way as a line unless its osmconf.ini says "area"
            rings = [p for p in shapely.get_parts(g) if p.is_closed and len(p.coords) >= 4]
            if not rings:
                continue                    # a street, a wall: no area to segment
            g = shapely.make_valid(shapely.union_all([shapely.Polygon(r) for r in rings]))
            g = shapely.union_all([p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")]
                                  or [shapely.Polygon()])
            if g.is_empty or g.area <= 0:
                skipped["closed way without area"] += 1
                continue
        if g.geom_type not in ("Polygon", "MultiPolygon"):
            continue
        areas.append(Place(_osm_id(f, i), name, cls, g))
    area_tree = shapely.STRtree([p.geometry for p in areas]) if areas else None
    blocks = MapReader._blocks(vmap) if points else None
    places = list(areas)
    for i, f, cls, name in points:
        inside = [areas[j] for j in (area_tree.query(f.geometry, predicate="within") if area_tree else [])]
        # the same place mapped twice (a school's node inside the school's area): the area speaks for it
        if any(set(cls) & set(a.classes) for a in inside):
            continue
        g, exact = MapReader._area_for_point(f.geometry, vmap, blocks, metre)
        if not exact:
            skipped["point without an enclosing area"] += 1
            continue
        places.append(Place(_osm_id(f, i), name, cls, g))
    log.info("%d places (%d areas, %d from points); skipped: %s", len(places), len(areas),
             len(places) - len(areas), dict(skipped) or "none")
    return Targets(places, functions, skipped)
