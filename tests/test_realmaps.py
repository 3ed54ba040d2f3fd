"""The weight-free default on real OpenStreetMap data: GDAL's OSM-driver output with a broken ring,
.osm files, other_tags, points inside buildings, the same place at 1 m and 0.25 m per pixel, and the
Porto scene's scores (skipped when ../shared/realdata/porto is not beside the checkout)."""
import logging
import os

import numpy as np
import pytest
import shapely
from rasterio.crs import CRS

from backend.geo.vectormap import Feature, VectorMap, parse_hstore
from backend.output import evidence
from backend.pipeline.detect import detect, load_scene
from backend.pipeline.query import resolve_query
from backend.reasoners.mapreader import MapReader
from backend.segmenters.grabcut import GrabCutSegmenter

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "porto_cordoaria.gpkg")
PORTO = os.path.join(HERE, "..", "..", "shared", "realdata", "porto")
UTM29 = CRS.from_epsg(32629)
needs_porto = pytest.mark.skipif(not os.path.isdir(PORTO), reason=f"no real scene at {PORTO}")


def test_fixture_really_holds_a_ring_of_two_points():
    import pyogrio
    _, _, wkb, _ = pyogrio.raw.read(FIXTURE, layer="multipolygons")
    with pytest.raises(shapely.errors.GEOSException, match="LinearRing"):
        shapely.from_wkb(wkb)


def test_broken_osm_geometry_is_skipped_and_counted(caplog):
    with caplog.at_level(logging.INFO, logger="backend.geo.vectormap"):
        vmap = VectorMap.read(FIXTURE, UTM29)
    assert "1 unusable ones skipped" in caplog.text
    assert {f.layer for f in vmap.features} == {"points", "lines", "multipolygons"}
    assert all(f.geometry.is_valid for f in vmap.features)
    # other_tags are tags like any other: wikidata, name:en, addr:* come out of the hstore text
    assert "other_tags" not in vmap.features[0].props
    assert any("wikidata" in f.props for f in vmap.features)


def test_parse_hstore_handles_quotes_commas_and_null():
    text = r'"name:en"=>"Hospital \"Santo\", Porto","healthcare"=>"hospital","x"=>NULL'
    assert parse_hstore(text) == {"name:en": 'Hospital "Santo", Porto', "healthcare": "hospital"}
    assert parse_hstore(None) == {} and parse_hstore("garbage") == {}


def test_osm_xml_is_read_by_gdals_osm_driver(tmp_path):
    # A tiny .osm file in OpenStreetMap's own XML: a hospital area tagged only through other_tags
    # (healthcare=hospital) and a degenerate closed way of two nodes, which must not stop the read.
    nodes = [(1, 41.1450, -8.6160), (2, 41.1450, -8.6150), (3, 41.1458, -8.6150), (4, 41.1458, -8.6160),
             (5, 41.1460, -8.6140), (6, 41.1461, -8.6139)]
    xml = ['<?xml version="1.0" encoding="UTF-8"?>', '<osm version="0.6" generator="test">']
    xml += [f'<node id="{i}" version="1" lat="{lat}" lon="{lon}"/>' for i, lat, lon in nodes]
    xml += ['<way id="10" version="1">', *[f'<nd ref="{i}"/>' for i in (1, 2, 3, 4, 1)],
            '<tag k="healthcare" v="hospital"/><tag k="name" v="Hospital Teste"/>'
            '<tag k="name:en" v="Test Hospital"/></way>',
            '<way id="11" version="1"><nd ref="5"/><nd ref="6"/><nd ref="5"/><tag k="building" v="yes"/></way>',
            '</osm>']
    path = tmp_path / "tiny.osm"
    path.write_text("\n".join(xml), encoding="utf-8")
    vmap = VectorMap.read(str(path), UTM29)
    spec = resolve_query("hospitals")
    hits = [f for f in vmap.features if spec.matches_tags(f.props)]
    assert len(hits) == 1 and hits[0].props["name:en"] == "Test Hospital"
    # osmconf.ini does not count healthcare=* as an area key, so GDAL gives a closed line; the map
    # reader still takes the area inside it
    (area, label, _, exact), = MapReader()._candidates(spec, vmap)
    assert evidence.split(label)[:2] == ("Hospital Teste", 1) and 6000 < area.area < 8000 and exact     # about 84 m x 89 m


def test_point_takes_the_site_or_building_around_it_before_the_block():
    m = 1.0
    road = shapely.LineString([(0, 0), (400, 0), (400, 400), (0, 400), (0, 0)])
    grounds = shapely.box(50, 50, 200, 200)       # landuse=education around a school POI
    building = shapely.box(250, 250, 270, 265)    # a building around a language school POI
    feats = [Feature(road, {"highway": "residential"}, "lines"),
             Feature(grounds, {"landuse": "education"}, "multipolygons"),
             Feature(building, {"building": "yes"}, "multipolygons"),
             Feature(shapely.Point(100, 100), {"amenity": "school", "name": "A"}, "points"),
             Feature(shapely.Point(260, 258), {"amenity": "school", "name": "B"}, "points"),
             Feature(shapely.Point(350, 100), {"amenity": "school", "name": "C"}, "points")]
    vmap = VectorMap(feats, UTM29)
    got = {evidence.split(label)[0]: (g, exact)
           for g, label, _, exact in MapReader()._candidates(resolve_query("schools"), vmap)}
    assert got["A"][0].equals(grounds) and got["A"][1]
    assert got["B"][0].equals(building) and got["B"][1]
    # no site around it: its street block, a guess whose outline the segmenter cuts from the image
    assert got["C"][0].area > 100_000 * m and not got["C"][1]


def _scene(sample_dir, resolution, map_name="map.gpkg", bbox=(499980, 4057000, 500460, 4057440)):
    # Lakeview High School (375 x 330 m, mapped only as a point) with its surroundings
    return load_scene(os.path.join(sample_dir, "satellite.tif"), os.path.join(sample_dir, map_name),
                      resolution=resolution, bbox=bbox, max_tiles=100)


@pytest.mark.parametrize("map_name,query,bbox,least", [
    ("map.gpkg", "schools", (499980, 4057000, 500460, 4057440), 100_000),
    # the raster map's largest school fill (Northgate Middle School), read tile by tile with the
    # map around each tile: 0.25 m tiles are 192 m, the school about 380 m across
    ("map.tif", "schools", None, 100_000),
])
def test_place_larger_than_a_tile_is_the_same_at_1m_and_025m(sample_dir, map_name, query, bbox, least):
    results = {}
    for res in (1.0, 0.25):
        scene = _scene(sample_dir, res, map_name, bbox)
        reader = MapReader()
        det = detect(scene, query, reader, GrabCutSegmenter(), task="class")
        assert all(e.attrs["area_m2"] >= reader.min_area_m2 for e in det.entities)
        results[res] = max((e.geometry for e in det.entities), key=lambda g: g.area)
    assert len(_scene(sample_dir, 0.25, map_name, bbox).tiles) > 1
    a, b = results[1.0], results[0.25]
    assert a.area > least
    assert a.intersection(b).area / a.union(b).area > 0.9


def _porto_iou(map_name, query, task, classes, bbox, resolution=None):
    import json
    scene = load_scene(os.path.join(PORTO, "satellite.tif"), os.path.join(PORTO, map_name), bbox=bbox,
                       bbox_crs="EPSG:4326", resolution=resolution, max_tiles=1000)
    det = detect(scene, query, MapReader(), GrabCutSegmenter(), task=task, keep_mask=True)
    with open(os.path.join(PORTO, "truth.geojson"), encoding="utf-8") as fh:
        feats = json.load(fh)["features"]
    from backend.geo.raster import rasterize
    from backend.geo.vectormap import _reproject
    geoms = [shapely.make_valid(shapely.geometry.shape(f["geometry"])) for f in feats
             if f["properties"]["class"] in classes]
    g = scene.grid
    truth = rasterize(_reproject(np.array(geoms, object), CRS.from_epsg(4326), g.crs), (g.height, g.width),
                      g.transform) & scene.whole()[2]
    return (det.mask & truth).sum() / max(1, (det.mask | truth).sum())


# One tile of Porto (about 700 x 700 m): Cordoaria, Virtudes, Carrilho Videira, Santo António, and
# a dozen schools and university buildings. Floors are the levels reached at the time of writing,
# with a margin (the window's schools are mostly invisible on Carto: a hospital, a building, no label).
WINDOW = (-8.6193, 41.1415, -8.6110, 41.1478)
EDUCATIONAL = {"school", "university", "college", "kindergarten"}


@needs_porto
@pytest.mark.parametrize("map_name,query,task,classes,bbox,floor", [
    ("map.gpkg", "parks", "class", {"park"}, WINDOW, 0.95),
    ("map.gpkg", "schools", "class", {"school"}, WINDOW, 0.95),
    ("map_carto.tif", "parks", "class", {"park"}, WINDOW, 0.7),
    ("map_carto.tif", "educational", "function", EDUCATIONAL, WINDOW, 0.18),
    # the whole scene against the targets. Educational on Carto is 0.447 since the map is read
    # at its own pixels (0.454 before, on a 1 m lattice, where the grid's phase alone moved it 0.42-0.46);
    # the floor sits just under the phase-independent value
    ("map.gpkg", "parks", "class", {"park"}, None, 0.85),
    ("map.gpkg", "schools", "class", {"school"}, None, 0.85),
    ("map_carto.tif", "parks", "class", {"park"}, None, 0.6),
    ("map_carto.tif", "educational", "function", EDUCATIONAL, None, 0.44),
])
def test_porto_scores_stay_above_their_floors(map_name, query, task, classes, bbox, floor):
    iou = _porto_iou(map_name, query, task, classes, bbox)
    assert iou >= floor, f"{map_name} {query}: IoU {iou:.3f} under {floor}"


@needs_porto
@pytest.mark.parametrize("query,task,classes,target", [
    ("parks", "class", {"park"}, 0.6), ("educational", "function", EDUCATIONAL, 0.44)])
def test_porto_carto_reaches_the_targets_at_025m_too(query, task, classes, target):
    # 0.25 m tiles are 192 m and the map's ~0.9 m pixels fall differently on the reading lattice
    # (0.443 for educational before words were judged by their span rather than their pixel count)
    assert _porto_iou("map_carto.tif", query, task, classes, None, resolution=0.25) >= target


@needs_porto
def test_porto_osm_pbf_runs_the_default_end_to_end():
    import json
    from backend.geo.vectormap import _reproject
    window = (-8.6165, 41.1447, -8.6128, 41.1477)
    scene = load_scene(os.path.join(PORTO, "satellite.tif"), os.path.join(PORTO, "extract.osm.pbf"),
                       bbox=window, bbox_crs="EPSG:4326")
    det = detect(scene, "Jardim de João Chagas", MapReader(), GrabCutSegmenter(), task="name")
    with open(os.path.join(PORTO, "truth.geojson"), encoding="utf-8") as fh:
        park = next(shapely.geometry.shape(f["geometry"]) for f in json.load(fh)["features"]
                    if f["properties"]["name"] == "Jardim de João Chagas")
    # the window holds about a third of the park's 14 800 m2; the grid's own extent is what was read
    g = scene.grid
    inside = _reproject(np.array([park.intersection(shapely.box(*window))], object), CRS.from_epsg(4326), g.crs)[0]
    inside = inside.intersection(shapely.box(*g.bounds))
    assert len(det.entities) == 1
    found = det.entities[0].geometry
    assert found.intersection(inside).area / found.union(inside).area > 0.9


def test_a_legend_of_fills_only_does_not_flood_the_map(tmp_path):
    import json
    from backend.reasoners.legend import Legend, place_mask
    img = np.full((60, 60, 3), 240, np.uint8)          # an unknown ground colour
    img[10:30, 10:30] = (200, 250, 204)                 # the park fill
    img[18:21, 13:27] = (0, 0, 0)                       # a label inside it
    path = tmp_path / "legend.json"
    path.write_text(json.dumps({"colours": {"#c8facc": ["park"]}}), encoding="utf-8")
    legend = Legend(str(path))
    mask = place_mask(img, legend, legend.colours_for(["park"])[0], 1.0)
    assert mask[10:30, 10:30].all() and not mask[35:, :].any() and mask.sum() == 400


@needs_porto
def test_the_cli_scores_porto_carto_like_the_benchmark(tmp_path, capsys):
    # the user's command: --truth names college (a synonym of university) and reaches beyond the
    # imagery; the CLI counts the former and leaves the latter out, as benchmarks/real_maps.py does
    from backend.cli import main
    out = tmp_path / "educational.gpkg"
    rc = main(["detect", "--satellite", os.path.join(PORTO, "satellite.tif"), "--map",
               os.path.join(PORTO, "map_carto.tif"), "--query", "educational", "--task", "function",
               "--out", str(out), "--truth", os.path.join(PORTO, "truth.geojson")])
    text = capsys.readouterr().out
    assert rc == 0 and out.exists()
    iou = float(text.split("IoU against")[1].split(":")[1].split()[0])
    assert iou >= 0.44 and "where the inputs have no data left out" in text
