"""How sure the map is (issue 22, item 3) and reading a raster map at its own pixels (item 1).

Synthetic images are drawn with OSM Carto's own colours; the real render is a clipped window of the
Porto scene (skipped where it is absent)."""
import os

import pytest
import shapely
import shapely.affinity

from backend.geo.native import ground_pixel_m
from backend.output import evidence
from backend.pipeline.detect import detect, load_scene
from backend.reasoners.legend import Judge, Legend, hex_rgb, place_mask
from backend.reasoners.mapreader import MapReader
from backend.resources import resource
from backend.segmenters.grabcut import GrabCutSegmenter
from test_carto_reading import EDU_TEXT, FILL, HEALTH, _town, _word

PORTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "realdata", "porto")
needs_porto = pytest.mark.skipif(not os.path.isdir(PORTO), reason=f"no real scene at {PORTO}")
PARK = hex_rgb("#c8facc")


@pytest.fixture(scope="module")
def legend():
    return Legend(resource("legends", "osm_carto.json"))


def _judged(legend, img, classes):
    colours, _ = legend.colours_for(classes)
    mask, explained = place_mask(img, legend, colours, 1.0, legend.label_colours(classes), explain=True)
    judge = Judge(legend, classes, explained, 1.0)
    from backend.reasoners.legend import group_places
    return [(judge.judge(m), m) for m in group_places(mask, 1.0, 50)]


def test_a_shared_fill_alone_is_not_certain_and_is_named_by_its_functions(legend):
    img = _town()
    img[14:46, 10:88] = FILL
    (certain, classes, said), _ = _judged(legend, img, ["school"])[0]
    assert not certain and evidence.site_name(classes) == "educational or medical site"
    assert "#ffffe5" in said and "does not tell school from" in said


def test_a_school_coloured_name_tells_educational_apart_but_not_a_school(legend):
    img = _town()
    img[14:46, 10:88] = FILL
    _word(img, 20, 24, EDU_TEXT)
    (certain, classes, _), _ = _judged(legend, img, ["school", "university", "kindergarten"])[0]
    assert certain
    (certain, classes, said), _ = _judged(legend, img, ["school"])[0]
    # universities and kindergartens are named in the same colour
    assert not certain and evidence.site_name(classes) == "educational site" and "#4c4c00" in said


def test_a_red_mark_says_medical_not_hospital(legend):
    img = _town()
    img[14:46, 10:88] = FILL
    _word(img, 20, 24, HEALTH)
    (certain, classes, _), _ = _judged(legend, img, ["hospital", "clinic"])[0]
    assert certain
    (certain, classes, _), _ = _judged(legend, img, ["hospital"])[0]
    assert not certain and evidence.site_name(classes) == "medical site"


def test_a_fill_no_other_class_shares_is_certain(legend):
    img = _town()
    img[14:46, 10:88] = PARK
    (certain, classes, said), _ = _judged(legend, img, ["park"])[0]
    assert certain and classes == {"park"} and "#c8facc" in said


def test_labels_carry_certain_and_evidence_through_the_merge():
    a, b = evidence.tag("park", True, "fill #c8facc (park)"), evidence.tag("park", False, "traces")
    assert evidence.split(a) == ("park", 1, "fill #c8facc (park)")
    assert evidence.merge({a: 90, b: 10})[1] == 1 and evidence.merge({a: 10, b: 90})[1] == 0
    # a place read in pieces is named and explained by the side that decided it
    c = evidence.tag("educational or medical site", False, "fill #ffffe5")
    assert evidence.merge({a: 60, c: 40}) == ("park", 1, "fill #c8facc (park)")
    assert evidence.merge({a: 40, c: 60}) == ("educational or medical site", 0, "fill #ffffe5")
    assert evidence.split("Escola X") == ("Escola X", None, "")     # a model's plain label


def test_web_mercator_pixels_are_measured_on_the_ground():
    from affine import Affine
    from rasterio.crs import CRS
    t = Affine(1.194328566955879, 0, -959498.49, 0, -1.194328566955879, 5035223.55)
    # zoom 17 in Porto (41.15 N): 1.19 m of Mercator, cos(41.15) * 1.19 = 0.90 m of ground
    assert abs(ground_pixel_m(t, CRS.from_epsg(3857), 800, 800) - 0.90) < 0.01


# A window of Porto around Jardim de João Chichorro and the schools of Cordoaria (real Carto 5.7 render)
WINDOW = (-8.6193, 41.1415, -8.6110, 41.1478)


def _places(query, task, resolution, shift=0.0):
    from rasterio.crs import CRS
    crs = CRS.from_proj4(f"+proj=tmerc +lat_0=0 +lon_0=-9 +k=0.9996 +x_0={500000 + shift} +y_0={shift} "
                         "+datum=WGS84 +units=m")
    scene = load_scene(os.path.join(PORTO, "satellite.tif"), os.path.join(PORTO, "map_carto.tif"), crs=crs,
                       resolution=resolution, bbox=WINDOW, bbox_crs=CRS.from_epsg(4326), max_tiles=1000)
    det = detect(scene, query, MapReader(), GrabCutSegmenter(), task=task)
    b = scene.grid.bounds
    inner = shapely.box(b[0] + 11, b[1] + 11, b[2] - 11, b[3] - 11)
    scene.close()
    geoms = [shapely.affinity.translate(e.geometry, -shift, -shift) for e in det.entities]
    return shapely.union_all(geoms).intersection(shapely.affinity.translate(inner, -shift, -shift)), det.entities


@needs_porto
@pytest.mark.parametrize("query,task", [("parks", "class"), ("educational", "function")])
def test_porto_carto_reads_the_same_at_any_resolution_and_phase(query, task):
    base, _ = _places(query, task, 1.0)
    for resolution, shift in ((0.5, 0.0), (1.0, 0.5), (1.0, 0.25)):
        other, _ = _places(query, task, resolution, shift)
        common = base.envelope.intersection(other.envelope)
        a, b = base.intersection(common), other.intersection(common)
        iou = a.intersection(b).area / a.union(b).area
        assert iou >= 0.95, (query, resolution, shift, round(iou, 3))


@needs_porto
def test_porto_carto_certain_places_are_right():
    _, parks = _places("parks", "class", 1.0)
    _, schools = _places("schools", "class", 1.0)
    assert parks and all(e.attrs["certain"] == 1 for e in parks)
    # Carto names schools, universities and kindergartens alike: no school is certain, none is
    # called a school
    assert schools and not any(e.attrs["certain"] for e in schools)
    assert all(e.attrs["name"] in ("educational site", "educational or medical site") for e in schools)


def test_the_default_style_draws_uncertain_places_dashed_and_lighter(plugin_pkg, qgis_new_project):
    pytest.importorskip("qgis.core")
    from qgis.core import (QgsCoordinateReferenceSystem, QgsExpressionContext, QgsExpressionContextUtils,
                           QgsSymbolLayer)
    from socioseg.plugin.layers import all_uncertain, memory_layer, style_layer
    from types import SimpleNamespace

    ents = [SimpleNamespace(wkt=f"POLYGON(({x} 0,{x + 10} 0,{x + 10} 10,{x} 10,{x} 0))",
                            attrs={"name": n, "certain": c, "evidence": "e"}) for x, n, c in
            ((0, "park", 1), (20, "educational or medical site", 0))]
    layer = memory_layer(SimpleNamespace(entities=ents), "t", QgsCoordinateReferenceSystem("EPSG:32629"))
    style_layer(layer, "#e60096")
    sl = layer.renderer().symbol().symbolLayer(0)
    styles, alphas = [], []
    for f in layer.getFeatures():
        ctx = QgsExpressionContext()
        ctx.appendScope(QgsExpressionContextUtils.layerScope(layer))
        ctx.setFeature(f)
        props = sl.dataDefinedProperties()
        styles.append(props.property(QgsSymbolLayer.PropertyStrokeStyle).value(ctx)[0])
        alphas.append(int(str(props.property(QgsSymbolLayer.PropertyFillColor).value(ctx)[0]).split(",")[-1]))
    assert styles == ["solid", "dash"] and alphas[1] < alphas[0]
    assert not all_uncertain(ents) and all_uncertain(ents[1:]) and not all_uncertain([])


@needs_porto
def test_what_the_map_shows_bounds_what_the_reader_finds():
    # benchmarks/carto_ceiling.py: a truth place with no class fill and no class label on the render,
    # farther than the reader's reach from any, cannot be found; the reader's recall stays under that
    import rasterio.features
    from benchmarks.carto_ceiling import ceiling
    from benchmarks.real_maps import truth_geoms
    parks, edu = ceiling(PORTO, "parks", {"park"}), ceiling(PORTO, "educational", {"school", "university",
                                                                                   "college", "kindergarten"})
    assert parks["shown_share"] == 1.0 and parks["far_share"] == 0.0 and parks["shown"] == parks["places"] == 9
    assert 0 < edu["shown"] < edu["places"] and 0.5 < edu["shown_share"] < 0.9 and 0.05 < edu["far_share"] < 0.3
    scene = load_scene(os.path.join(PORTO, "satellite.tif"), os.path.join(PORTO, "map_carto.tif"), resolution=2.0)
    det = detect(scene, "educational", MapReader(), GrabCutSegmenter(), task="function")
    g = scene.grid
    truth = [t for c in ("school", "university", "college", "kindergarten")
             for t in truth_geoms(os.path.join(PORTO, "truth.geojson"), g.crs).get(c, [])]
    shape = (g.height, g.width)
    t = rasterio.features.rasterize(truth, shape, transform=g.transform) > 0
    p = rasterio.features.rasterize([e.geometry for e in det.entities], shape, transform=g.transform) > 0
    scene.close()
    assert 0.3 < (t & p).sum() / t.sum() <= 1 - edu["far_share"]
