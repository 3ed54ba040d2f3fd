"""Rendering OSM-tagged vector features as an OpenStreetMap-Carto-like raster map on a grid.

Used to give the vision-language model a map image when the user's map is a vector file, and by the
sample-town generator. Colours come from the legend in resources/legends/osm_carto.json where it has
one, so that the raster map reader can read these renderings back.
"""
from __future__ import annotations

import cv2
import numpy as np
import shapely

from .base import Grid
from .raster import rasterize

BACKGROUND = (242, 239, 233)
# (tag key, tag value or None for any, fill colour); painted in this order, later on top.
AREA_STYLE = [
    ("landuse", "residential", "#e0dfdf"), ("landuse", "commercial", "#f2dad9"),
    ("landuse", "industrial", "#ebdbe8"), ("landuse", "retail", "#ffd6d1"),
    ("landuse", "grass", "#cdebb0"), ("landuse", "forest", "#add19e"),
    ("landuse", "cemetery", "#aacbaf"), ("amenity", "grave_yard", "#aacbaf"),
    ("leisure", "park", "#c8facc"), ("leisure", "garden", "#c8facc"),
    ("leisure", "golf_course", "#def6c0"),
    ("amenity", "school", "#ffffe5"), ("amenity", "university", "#ffffe5"),
    ("amenity", "college", "#ffffe5"), ("amenity", "kindergarten", "#ffffe5"),
    ("amenity", "hospital", "#ffffe5"), ("amenity", "clinic", "#ffffe5"),
    ("amenity", "parking", "#eeeeee"),
    ("leisure", "stadium", "#dffce2"), ("leisure", "sports_centre", "#dffce2"),
    ("leisure", "playground", "#dffce2"), ("leisure", "pitch", "#aae0cb"),
    ("leisure", "track", "#aae0cb"),
    ("natural", "water", "#aad3df"), ("leisure", "swimming_pool", "#aad3df"),
    ("building", None, "#d9d0c9"),
]
ROAD_STYLE = {  # highway value: (width in metres, fill, casing)
    "primary": (14.0, "#fcd6a4", "#a06b00"), "secondary": (12.0, "#f7fabf", "#707d05"),
    "tertiary": (10.0, "#ffffff", "#8f8f8f"), "residential": (8.0, "#ffffff", "#bbbbbb"),
    "service": (5.0, "#ffffff", "#bbbbbb"), "footway": (2.0, "#fa8072", None),
}
WATERWAY_WIDTH = 12.0


def hex_rgb(h: str) -> tuple[int, int, int]:
    h = h.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def _paint(img: np.ndarray, geoms: list, grid: Grid, colour) -> None:
    geoms = [g for g in geoms if g is not None and not g.is_empty]
    if not geoms:
        return
    m = rasterize(geoms, (grid.height, grid.width), grid.transform)
    img[m] = colour


def _matches(props: dict, key: str, value: str | None) -> bool:
    v = props.get(key)
    if v in (None, "", "no"):
        return False
    return value is None or str(v) == value


def render_map(features, grid: Grid, labels: bool = True) -> np.ndarray:
    """H x W x 3 uint8 map of `features` (objects with .geometry and .props) on `grid`."""
    img = np.empty((grid.height, grid.width, 3), np.uint8)
    img[:] = BACKGROUND
    polys = [f for f in features if f.geometry.geom_type in ("Polygon", "MultiPolygon")]
    lines = [f for f in features if f.geometry.geom_type in ("LineString", "MultiLineString")]
    for key, value, colour in AREA_STYLE:
        _paint(img, [f.geometry for f in polys if _matches(f.props, key, value)], grid, hex_rgb(colour))
    _paint(img, [f.geometry.buffer(WATERWAY_WIDTH / 2) for f in lines if f.props.get("waterway")],
           grid, hex_rgb("#aad3df"))
    roads = [f for f in lines if f.props.get("highway") in ROAD_STYLE]
    for casing in (True, False):
        for kind, (width, fill, edge) in sorted(ROAD_STYLE.items(), key=lambda kv: kv[1][0]):
            colour = edge if casing else fill
            if colour is None:
                continue
            w = width + (2.0 * grid.resolution if casing else 0.0)
            _paint(img, [f.geometry.buffer(w / 2, cap_style="flat") for f in roads
                         if f.props.get("highway") == kind], grid, hex_rgb(colour))
    if labels:
        _labels(img, [f for f in polys if f.props.get("name")], grid)
    return img


def _labels(img: np.ndarray, feats, grid: Grid) -> None:
    inv = ~grid.transform
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1
    for f in sorted(feats, key=lambda f: -f.geometry.area):
        if f.props.get("building") and not f.props.get("amenity"):
            continue
        p = shapely.point_on_surface(f.geometry)
        col, row = inv * (p.x, p.y)
        text = str(f.props["name"])
        (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
        org = (int(col - tw / 2), int(row + th / 2))
        cv2.putText(img, text, org, font, scale, (255, 255, 255), thick + 2, cv2.LINE_AA)
        cv2.putText(img, text, org, font, scale, (80, 80, 80), thick, cv2.LINE_AA)
