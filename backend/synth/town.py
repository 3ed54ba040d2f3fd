"""A seeded synthetic town: OSM-style vector map, Carto-like raster map, satellite-like image, truth.

It makes the bundled sample (`python -m backend sample`) and SocioSeg-format training samples
(`python -m backend synth-socioseg`). Everything is drawn on a real projected CRS at a real place, so
that georeferencing is exercised exactly as with real data.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import shapely
from affine import Affine
from rasterio.crs import CRS
from shapely.geometry import LineString, Point, box

from ..geo.grid import Grid
from ..geo.raster import rasterize
from ..geo.vectormap import Feature

# Jinan, Shandong: WGS 84 / UTM zone 50N (the SocioSeg cities are Chinese).
SAMPLE_CRS = CRS.from_epsg(32650)
SAMPLE_ORIGIN = (499_200.0, 4_057_400.0)   # top-left easting, northing

USES = {  # use: (tags, name pool, class, function)
    "school": ({"amenity": "school"}, ["Riverside Primary School", "Northgate Middle School",
                                       "Hillside School", "Lakeview High School", "Maple School"],
               "school", "educational"),
    "kindergarten": ({"amenity": "kindergarten"}, ["Sunflower Kindergarten", "Little Star Kindergarten"],
                     "kindergarten", "educational"),
    "hospital": ({"amenity": "hospital"}, ["St. Mary Hospital", "People's Hospital"], "hospital", "medical"),
    "park": ({"leisure": "park"}, ["Lotus Park", "Willow Park", "Spring Park", "Baotu Garden"],
             "park", "park & greenspace"),
    "pitch": ({"leisure": "pitch", "sport": "soccer"}, ["City Football Ground", "East Pitch"],
              "soccer field", "sport & cultural"),
    "cemetery": ({"landuse": "cemetery"}, ["Eastern Cemetery", "Quiet Hill Cemetery"], "cemetery", None),
    "mall": ({"shop": "mall", "landuse": "retail"}, ["Huaxia Mall", "Central Market Plaza"],
             "shopping mall", "commercial service"),
    "parking": ({"amenity": "parking"}, ["Station Parking"], "parking lot", "transportation stations"),
}


@dataclass
class Entity:
    use: str
    name: str
    geometry: shapely.Polygon     # the AOI, map CRS
    point_only: bool = False      # mapped as a POI only (no area in the vector map)

    @property
    def cls(self) -> str:
        return USES[self.use][2]

    @property
    def function(self) -> str | None:
        return USES[self.use][3]


@dataclass
class Town:
    crs: CRS
    grid: Grid
    features: list[Feature] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)


def _world(x0: float, y0: float):
    """Local metres (x right, y down from the top-left corner) to map coordinates."""
    def f(geom):
        return shapely.transform(geom, lambda xy: np.column_stack([x0 + xy[:, 0], y0 - xy[:, 1]]))
    return f


def make_town(seed: int, width_m: float, height_m: float, origin=SAMPLE_ORIGIN, crs: CRS = SAMPLE_CRS,
              required: list[str] | None = None, block: float = 380.0, resolution: float = 1.0) -> Town:
    rng = np.random.default_rng(seed)
    x0, y0 = origin
    W = world = _world(x0, y0)
    grid = Grid(crs, Affine(resolution, 0, x0, 0, -resolution, y0),
                int(round(width_m / resolution)), int(round(height_m / resolution)))
    town = Town(crs, grid)
    add = town.features.append
    nx, ny = max(1, int(round(width_m / block))), max(1, int(round(height_m / block)))
    xs = np.linspace(0, width_m, nx + 1)
    ys = np.linspace(0, height_m, ny + 1)
    jitter = block * 0.08
    xs[1:-1] += rng.uniform(-jitter, jitter, nx - 1)
    ys[1:-1] += rng.uniform(-jitter, jitter, ny - 1)
    main_x, main_y = (nx // 2, ny // 2)
    for i, x in enumerate(xs):
        kind = "primary" if i == main_x and 0 < i < nx else "secondary" if i in (0, nx) else "tertiary"
        add(Feature(world(LineString([(x, -50), (x, height_m + 50)])), {"highway": kind, "name": f"Road {i + 1}"}, "roads"))
    for j, y in enumerate(ys):
        kind = "secondary" if j == main_y and 0 < j < ny else "tertiary"
        add(Feature(world(LineString([(-50, y), (width_m + 50, y)])), {"highway": kind, "name": f"Street {j + 1}"}, "roads"))
    cells = [(i, j) for j in range(ny) for i in range(nx)]
    order = list(rng.permutation(len(cells)))
    wanted = list(required if required is not None else
                  rng.choice(list(USES), size=min(len(cells), 3), replace=True))
    names_used: set[str] = set()
    for k in order:
        i, j = cells[k]
        inset = 9.0
        bx1, by1, bx2, by2 = xs[i] + inset, ys[j] + inset, xs[i + 1] - inset, ys[j + 1] - inset
        use = wanted.pop(0) if wanted else "residential"
        if use == "residential":
            _residential(town, W, (bx1, by1, bx2, by2), rng)
            continue
        split = use in ("kindergarten", "parking", "cemetery", "hospital") or rng.random() < 0.35
        if split and bx2 - bx1 > 120:
            # A residential street splits the block: the use takes one side.
            sx = bx1 + (bx2 - bx1) * rng.uniform(0.42, 0.58)
            add(Feature(world(LineString([(sx, ys[j]), (sx, ys[j + 1])])), {"highway": "residential"}, "roads"))
            left = rng.random() < 0.5
            area = (bx1, by1, sx - 6, by2) if left else (sx + 6, by1, bx2, by2)
            rest = (sx + 6, by1, bx2, by2) if left else (bx1, by1, sx - 6, by2)
            _residential(town, W, rest, rng)
        else:
            area = (bx1, by1, bx2, by2)
        pool = [n for n in USES[use][1] if n not in names_used] or [f"{USES[use][1][0]} {len(names_used)}"]
        name = str(rng.choice(pool))
        names_used.add(name)
        # The second school is mapped only as a point, as many POIs are: its area comes from its block.
        point_only = use == "school" and sum(e.use == "school" for e in town.entities) == 1
        _place(town, W, use, name, area, rng, point_only)
    return town


def _residential(town: Town, W, a, rng) -> None:
    x1, y1, x2, y2 = a
    town.features.append(Feature(W(box(x1, y1, x2, y2)), {"landuse": "residential"}, "areas"))
    bw, bh = rng.uniform(40, 60), rng.uniform(12, 16)
    y = y1 + 12
    while y + bh < y2 - 8:
        x = x1 + 10
        while x + bw < x2 - 8:
            town.features.append(Feature(W(box(x, y, x + bw, y + bh)), {"building": "residential"}, "areas"))
            x += bw + rng.uniform(12, 20)
        y += bh + rng.uniform(22, 30)


def _place(town: Town, W, use: str, name: str, a, rng, point_only: bool) -> None:
    x1, y1, x2, y2 = a
    aoi = box(x1, y1, x2, y2)
    tags = dict(USES[use][0])
    add = town.features.append
    if point_only:
        add(Feature(W(aoi.centroid), {**tags, "name": name}, "pois"))
    else:
        add(Feature(W(aoi), {**tags, "name": name}, "areas"))
    w, h = x2 - x1, y2 - y1
    if use in ("school", "kindergarten", "hospital", "mall"):
        bw, bh = w * (0.5 if use != "mall" else 0.7), h * 0.22
        add(Feature(W(box(x1 + 10, y1 + 10, x1 + 10 + bw, y1 + 10 + bh)), {"building": use}, "areas"))
    if use == "school" and w > 100 and h > 100:
        cx, cy = x1 + w * 0.5, y1 + h * 0.65
        add(Feature(W(box(cx - 0.3 * w, cy - 0.18 * h, cx + 0.3 * w, cy + 0.18 * h)),
                    {"leisure": "pitch", "sport": "athletics"}, "areas"))
    if use == "park":
        add(Feature(W(Point(x1 + w * 0.6, y1 + h * 0.4).buffer(min(w, h) * 0.18)), {"natural": "water"}, "areas"))
    if use == "mall":
        add(Feature(W(box(x1 + 10, y1 + h * 0.45, x2 - 10, y2 - 10)), {"amenity": "parking"}, "areas"))
    town.entities.append(Entity(use, name, W(aoi), point_only))


# --- satellite-like rendering -------------------------------------------------------------------

def _mask(geoms, grid: Grid) -> np.ndarray:
    geoms = [g for g in geoms if g is not None and not g.is_empty]
    if not geoms:
        return np.zeros((grid.height, grid.width), bool)
    return rasterize(geoms, (grid.height, grid.width), grid.transform)


def _texture(rng, shape, base, spread, blur=3) -> np.ndarray:
    noise = rng.normal(0, 1, (*shape, 1)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), blur)[..., None] if blur else noise
    noise /= max(1e-6, float(noise.std()))
    return np.clip(np.array(base, np.float32) + noise * spread, 0, 255)


def render_satellite(town: Town, seed: int = 0, grid: Grid | None = None) -> np.ndarray:
    grid = grid or town.grid
    rng = np.random.default_rng(seed + 1000)
    shape = (grid.height, grid.width)
    img = _texture(rng, shape, (118, 122, 92), 14, blur=4)   # scrubby bare ground

    def paint(mask, base, spread=8, blur=2):
        if mask.any():
            img[mask] = _texture(rng, shape, base, spread, blur)[mask]

    feats = town.features
    by = lambda pred: [f.geometry for f in feats if pred(f.props)]  # noqa: E731
    paint(_mask(by(lambda p: p.get("landuse") == "residential"), grid), (168, 166, 160), 10)
    for e in town.entities:
        m = _mask([e.geometry], grid)
        if e.use == "school" or e.use == "kindergarten":
            paint(m, (196, 178, 140), 8)              # sandy school yard
        elif e.use == "park":
            paint(m, (88, 138, 64), 12, 3)
        elif e.use == "pitch":
            paint(m, (70, 150, 70), 5)
        elif e.use == "cemetery":
            paint(m, (104, 132, 88), 10)
        elif e.use in ("hospital", "mall", "parking"):
            paint(m, (150, 150, 152), 6)
    tracks = by(lambda p: p.get("sport") == "athletics")
    if tracks:
        paint(_mask([g.buffer(6) for g in tracks], grid), (176, 86, 66), 6)    # running track
        paint(_mask(tracks, grid), (74, 146, 72), 5)                           # football field inside
    paint(_mask(by(lambda p: p.get("sport") == "soccer" or (p.get("leisure") == "pitch" and not p.get("sport"))), grid), (70, 150, 70), 5)
    paint(_mask(by(lambda p: p.get("amenity") == "parking"), grid), (120, 120, 124), 5)
    paint(_mask(by(lambda p: p.get("natural") == "water"), grid), (38, 72, 84), 4, 4)
    # Buildings with shadows cast to the south-east.
    buildings = by(lambda p: bool(p.get("building")))
    inv = ~grid.transform
    shadow = _mask([shapely.affinity.translate(g, 3 * grid.resolution, -3 * grid.resolution) for g in buildings], grid)
    img[shadow] *= 0.45
    for g, props in [(f.geometry, f.props) for f in feats if f.props.get("building")]:
        kind = props["building"]
        if kind in ("school", "kindergarten"):
            colour = (228, 226, 218)
        elif kind in ("hospital", "mall"):
            colour = (236, 238, 240)
        else:
            colour = [(150, 60, 50), (160, 160, 165), (90, 110, 140), (185, 180, 170)][rng.integers(4)]
        m = _mask([g], grid)
        img[m] = _texture(rng, shape, colour, 5, 1)[m] if m.sum() > 4000 else np.array(colour, np.float32)
    # Roads: asphalt with centre lines on the big ones.
    for f in feats:
        hw = f.props.get("highway")
        if not hw:
            continue
        width = {"primary": 14, "secondary": 12, "tertiary": 10, "residential": 8}.get(hw, 5)
        m = _mask([f.geometry.buffer(width / 2, cap_style="flat")], grid)
        img[m] = _texture(rng, shape, (82, 84, 88), 4, 1)[m]
    # Trees: round crowns, mostly in parks, some in cemeteries and yards.
    for e in town.entities:
        n = {"park": 160, "cemetery": 50, "school": 14, "hospital": 10}.get(e.use, 0)
        _trees(img, e.geometry, n, grid, rng)
    for f in feats:
        if f.props.get("landuse") == "residential":
            _trees(img, f.geometry, 12, grid, rng)
    if any(e.use == "cemetery" for e in town.entities):
        for e in [e for e in town.entities if e.use == "cemetery"]:
            minx, miny, maxx, maxy = e.geometry.bounds
            for x in np.arange(minx + 6, maxx - 6, 4.0):
                for y in np.arange(miny + 6, maxy - 6, 6.0):
                    c, r = inv * (x, y)
                    cv2.rectangle(img, (int(c), int(r)), (int(c) + 1, int(r) + 2), (190, 190, 185), -1)
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    img = cv2.GaussianBlur(img, (3, 3), 0.6)
    return np.clip(img, 0, 255).astype(np.uint8)


def _trees(img, geom, n, grid: Grid, rng) -> None:
    if n <= 0:
        return
    inv = ~grid.transform
    minx, miny, maxx, maxy = geom.bounds
    placed = 0
    for _ in range(n * 4):
        if placed >= n:
            break
        x, y = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
        if not geom.contains(Point(x, y)):
            continue
        c, r = inv * (x, y)
        rad = max(2, int(rng.uniform(2.5, 5.5) / grid.resolution))
        cv2.circle(img, (int(c) + 2, int(r) + 2), rad, (30, 40, 28), -1)
        cv2.circle(img, (int(c), int(r)), rad, tuple(float(v) for v in rng.uniform((34, 74, 30), (60, 110, 50))), -1)
        placed += 1


def truth_mask(entities: list[Entity], grid: Grid) -> np.ndarray:
    return _mask([e.geometry for e in entities], grid)
