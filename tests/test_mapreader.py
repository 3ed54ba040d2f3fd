"""The weight-free default on the sample town: vector and raster maps, names, classes, functions."""
import os

import pytest

from backend.pipeline.detect import detect, load_scene
from backend.errors import InputError
from backend.output import evidence
from backend.pipeline.query import resolve_query
from backend.reasoners.mapreader import MapReader, interior_points
from backend.segmenters.grabcut import GrabCutSegmenter
from backend.evaluation.metrics import mask_iou
from backend.evaluation.truth import truth_mask_for


@pytest.fixture(scope="module")
def vector_scene(sample_dir):
    return load_scene(os.path.join(sample_dir, "satellite.tif"), os.path.join(sample_dir, "map.gpkg"))


@pytest.fixture(scope="module")
def raster_scene(sample_dir):
    return load_scene(os.path.join(sample_dir, "satellite.tif"), os.path.join(sample_dir, "map.tif"))


@pytest.mark.parametrize("query,kind,classes", [
    ("schools", "class", ["school"]), ("Find parks", "class", ["park"]), ("school", "class", ["school"]),
    ("educational", "function", ["school", "university", "kindergarten"]),
    ("Parking lots", "class", ["parking lot"]), ("Jinan Zoo", "name", []),
    ("medical", "function", ["hospital", "clinic"]),
])
def test_query_interpretation(query, kind, classes):
    spec = resolve_query(query)
    assert spec.kind == kind and spec.classes == classes


def test_unknown_class_suggests_and_names_the_alternative():
    with pytest.raises(InputError, match=r"(?s)schol.*Did you mean: school.*--reasoner qwen"):
        resolve_query("schol", "class")


def test_a_truth_file_may_name_a_class_by_its_synonym(tmp_path, vector_scene):
    # Porto's truth.geojson says "college" where the class table says university (a synonym of it)
    import json
    import shapely
    g = vector_scene.grid
    x0, y0 = g.transform.c + 50 * g.resolution, g.transform.f - 150 * g.resolution
    box = shapely.box(x0, y0, x0 + 100 * g.resolution, y0 + 100 * g.resolution)
    feats = [{"type": "Feature", "properties": {"name": "A college", "class": "College"},
              "geometry": shapely.geometry.mapping(box)}]
    path = tmp_path / "truth.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats,
                                "crs": {"type": "name", "properties": {"name": g.crs.to_string()}}}))
    for query, task in (("educational", "function"), ("universities", "class")):
        assert truth_mask_for(str(path), g, query, task).sum() == 10000
    assert not truth_mask_for(str(path), g, "schools", "class").any()


@pytest.mark.parametrize("query", ["schools", "parks"])
def test_vector_default_finds_the_sample_with_high_iou(vector_scene, sample_dir, query):
    det = detect(vector_scene, query, MapReader(), GrabCutSegmenter(), keep_mask=True)
    truth = truth_mask_for(os.path.join(sample_dir, "truth.gpkg"), vector_scene.grid, query, None)
    assert mask_iou(det.mask, truth) > 0.9
    assert all(e.attrs["name"] for e in det.entities)


def test_point_only_school_takes_its_street_block(vector_scene, sample_dir):
    from backend.geo.vectormap import VectorMap
    t = VectorMap.read(os.path.join(sample_dir, "truth.gpkg"), vector_scene.grid.crs)
    point_school = next(f for f in t.features if f.props["mapped_as"] == "point")
    det = detect(vector_scene, point_school.props["name"], MapReader(), GrabCutSegmenter(), task="name")
    assert len(det.entities) == 1
    g = det.entities[0].geometry
    assert g.intersection(point_school.geometry).area / g.union(point_school.geometry).area > 0.85


def test_name_query_ranks_partial_matches(vector_scene):
    reader = MapReader()
    spec = reader.spec("Spring", "name")
    names = {evidence.split(label) for _, label, *_ in reader._candidates(spec, vector_scene.map_features)}
    assert {(n, c) for n, c, _ in names} == {("Spring Park", 0)}     # a partial name: not certain


def test_function_query_finds_schools_and_the_kindergarten(vector_scene):
    det = detect(vector_scene, "educational", MapReader(), GrabCutSegmenter(), task="function")
    names = " ".join(e.attrs["name"] for e in det.entities)
    assert "Kindergarten" in names and "School" in names and len(det.entities) == 4


def test_raster_legend_ambiguity_is_said_not_hidden(raster_scene):
    det = detect(raster_scene, "schools", MapReader(), GrabCutSegmenter())
    assert det.entities
    assert all("cannot tell school from" in e.attrs["note"] and "hospital" in e.attrs["note"]
               for e in det.entities)
    # each place says it: not certain, and named by what the map does tell (never "school")
    for e in det.entities:
        assert e.attrs["certain"] == 0 and "school" not in e.attrs["name"], e.attrs
        assert e.attrs["name"] in ("educational or medical site", "educational site")
        assert "does not tell school from" in e.attrs["evidence"]


def test_raster_park_colour_is_unambiguous(raster_scene, sample_dir):
    det = detect(raster_scene, "parks", MapReader(), GrabCutSegmenter(), keep_mask=True)
    truth = truth_mask_for(os.path.join(sample_dir, "truth.gpkg"), raster_scene.grid, "parks", None)
    assert mask_iou(det.mask, truth) > 0.9 and not any(e.attrs["note"] for e in det.entities)
    assert all(e.attrs["certain"] == 1 and e.attrs["name"] == "park" and "#c8facc" in e.attrs["evidence"]
               for e in det.entities)


def test_a_vector_feature_tagged_as_the_class_is_certain(vector_scene):
    det = detect(vector_scene, "schools", MapReader(), GrabCutSegmenter(), task="class")
    assert det.entities and all(e.attrs["certain"] == 1 and "tagged amenity=school" in e.attrs["evidence"]
                                for e in det.entities)


def test_name_on_a_raster_map_is_refused_with_the_way_out(raster_scene):
    with pytest.raises(InputError, match=r"(?s)vector map.*--reasoner qwen"):
        detect(raster_scene, "Lotus Park", MapReader(), GrabCutSegmenter(), task="name")


def test_class_outside_the_legend_is_refused(raster_scene):
    with pytest.raises(InputError, match="no colour for zoo"):
        detect(raster_scene, "zoo", MapReader(), GrabCutSegmenter())


def test_interior_points_are_deep_inside_and_apart():
    import numpy as np
    m = np.zeros((100, 200), bool)
    m[20:80, 10:190] = True
    pts = interior_points(m, 2)
    assert len(pts) == 2
    for x, y in pts:
        assert 30 <= y <= 70 and m[int(y), int(x)]
    assert abs(pts[0][0] - pts[1][0]) > 40


def test_the_default_works_on_a_geographic_grid(sample_dir):
    from rasterio.crs import CRS
    scene = load_scene(os.path.join(sample_dir, "satellite.tif"), os.path.join(sample_dir, "map.gpkg"),
                       crs=CRS.from_epsg(4326), resolution=1e-5)
    assert scene.grid.crs.is_geographic
    for query in ("schools", "parks"):
        det = detect(scene, query, MapReader(), GrabCutSegmenter(), keep_mask=True)
        truth = truth_mask_for(os.path.join(sample_dir, "truth.gpkg"), scene.grid, query, None)
        assert mask_iou(det.mask, truth) > 0.9, query
        assert all(e.attrs["area_m2"] > 50_000 for e in det.entities)   # geodesic m2, not square degrees


class _Counting(GrabCutSegmenter):
    """GrabCut that counts the objects it was asked to cut."""
    def __init__(self):
        super().__init__()
        self.cut = 0

    def segment(self, prompts):
        self.cut += len(prompts)
        return super().segment(prompts)


def test_outline_map_takes_the_readers_outline_and_image_lets_the_segmenter_cut(vector_scene, sample_dir):
    from backend.geo.raster import rasterize
    from backend.pipeline.stages import PipelineOptions
    from backend.geo.vectormap import VectorMap
    g = vector_scene.grid
    truth = VectorMap.read(os.path.join(sample_dir, "map.gpkg"), g.crs)
    parks = [f.geometry for f in truth.features if f.props.get("leisure") == "park"]
    map_mask = rasterize(parks, (g.height, g.width), g.transform) & vector_scene.whole()[2]
    by_map, by_image = _Counting(), _Counting()
    det_map = detect(vector_scene, "parks", MapReader(), by_map, task="class", keep_mask=True,
                     options=PipelineOptions(outline="map"))
    det_img = detect(vector_scene, "parks", MapReader(), by_image, task="class", keep_mask=True,
                     options=PipelineOptions(outline="image"))
    assert by_map.cut == 0 and by_image.cut > 0
    # the map's own polygons, pixel for pixel (the reader rasterises them on the tile grid)
    assert mask_iou(det_map.mask, map_mask) > 0.995
    assert mask_iou(det_img.mask, map_mask) < mask_iou(det_map.mask, map_mask)


def test_outline_option_is_checked():
    from backend.pipeline.stages import PipelineOptions
    with pytest.raises(ValueError, match="outline must be one of map, image"):
        PipelineOptions(outline="satellite")


def test_the_map_reader_reads_the_tile_at_its_own_pixels():
    # a resize to the model's pixel budget would blend the legend's colours and the labels
    assert MapReader().input_size(1000, 770) == (1000, 770)


def test_a_point_only_place_is_still_cut_from_the_image_under_map_outlines(vector_scene, sample_dir):
    # Lakeview High School is only a point on the sample map: its street block is a guess, so the
    # segmenter cuts it; the schools mapped as areas keep the map's outline.
    from backend.pipeline.stages import PipelineOptions
    counting = _Counting()
    det = detect(vector_scene, "schools", MapReader(), counting, task="class", keep_mask=True,
                 options=PipelineOptions(outline="map"))
    lakeview_tiles = {t for e in det.entities if e.attrs["name"] == "Lakeview High School"
                      for t in e.attrs["tiles"].split(",")}
    assert counting.cut > 0 and lakeview_tiles
    assert counting.cut <= 2 * len(lakeview_tiles)          # stage 1 and stage 2, Lakeview only
    assert {e.attrs["segmenter"] for e in det.entities} == {"map/grabcut"}
