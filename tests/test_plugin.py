"""The QGIS plugin in real QGIS (offscreen): loading, capture georeference, the task, export, Processing."""
import os
import subprocess
import sys

import numpy as np
import pytest
from affine import Affine

from helpers import ROOT, write_raster

qgis_core = pytest.importorskip("qgis.core")
from qgis.core import (QgsCoordinateReferenceSystem, QgsProject, QgsRasterLayer, QgsRectangle,  # noqa: E402
                       QgsVectorLayer)


@pytest.fixture(autouse=True)
def collect_qt_garbage():
    """Collect this test's Python wrappers of Qt/QGIS objects while QGIS is still in the state they
    belong to; left for a later cycle, sip can free them after QGIS did and crash the interpreter."""
    yield
    import gc
    gc.collect()


def test_plugin_loads_and_unloads(plugin_pkg, qgis_iface):
    plugin = plugin_pkg.classFactory(qgis_iface)
    plugin.initProcessing()
    plugin.initGui()
    from qgis.core import QgsApplication
    assert QgsApplication.processingRegistry().providerById("socioseg") is not None
    plugin.toggle_panel(True)
    assert plugin.panel is not None and plugin.panel.engine.count() == 2
    plugin.unload()
    assert QgsApplication.processingRegistry().providerById("socioseg") is None
    assert plugin.panel is None and plugin.actions == []


def test_loading_the_plugin_does_not_import_torch(tmp_path):
    (tmp_path / "socioseg").symlink_to(ROOT)
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import socioseg, socioseg.plugin.main, socioseg.plugin.panel, socioseg.plugin.task, "
            "socioseg.plugin.processing_provider, socioseg.plugin.capture, socioseg.plugin.layers, "
            "socioseg.backend.contract\n"
            "print([m for m in ('torch', 'rasterio', 'shapely', 'pyproj') if m in sys.modules])" % str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert r.stdout.strip() == "[]", r.stderr


def _marker_raster(path, crs, transform, shape=(200, 300)):
    img = np.full((*shape, 3), 90, np.uint8)
    img[50:60, 100:120] = (255, 0, 0)          # rows 50..59, cols 100..119
    return write_raster(path, img, crs, transform)


def _read_tif(path):
    """(H x W x 4 array, affine transform, CRS WKT) through QGIS's own GDAL, as the capture wrote it."""
    from osgeo import gdal
    ds = gdal.Open(str(path))
    arr = np.dstack([ds.GetRasterBand(i + 1).ReadAsArray() for i in range(ds.RasterCount)])
    return arr, Affine.from_gdal(*ds.GetGeoTransform()), ds.GetProjection()


@pytest.mark.parametrize("project_epsg,res_m", [(32650, 1.0), (4326, 1.0)])
def test_capture_georeference_is_exact_across_render_blocks(plugin_pkg, qgis_new_project, tmp_path, monkeypatch,
                                                            project_epsg, res_m):
    from socioseg.backend.contract import TilePlan
    from socioseg.plugin import capture
    monkeypatch.setattr(capture, "BLOCK", 64)     # the marker straddles render blocks
    t = Affine(1.0, 0, 500_000, 0, -1.0, 4_057_000)
    sat = QgsRasterLayer(str(_marker_raster(tmp_path / "sat.tif", "EPSG:32650", t)), "sat")
    plain = QgsRasterLayer(str(write_raster(tmp_path / "map.tif", np.full((200, 300, 3), 200, np.uint8),
                                            "EPSG:32650", t)), "map")
    crs = QgsCoordinateReferenceSystem(f"EPSG:{project_epsg}")
    QgsProject.instance().setCrs(crs)
    from qgis.core import QgsCoordinateTransform
    extent = QgsCoordinateTransform(sat.crs(), crs, QgsProject.instance()).transformBoundingBox(sat.extent())
    folder = tmp_path / "scene"
    folder.mkdir()
    cap = capture.capture_scene(str(folder), sat, [plain], extent, crs, res_m, TilePlan())
    img, transform, wkt = _read_tif(folder / cap.satellite)
    assert transform == Affine(*cap.grid.transform)
    assert img.shape[:2] == (cap.grid.height, cap.grid.width) and len(capture.blocks(cap.grid.width, cap.grid.height)) > 4
    red = (img[..., 0] > 200) & (img[..., 1] < 60)
    rows, cols = np.nonzero(red)
    # the red block's centre must come out at its true place, and whole (no seam lost a row or column)
    cx, cy = transform * (cols.mean() + 0.5, rows.mean() + 0.5)
    from pyproj import Transformer
    x, y = Transformer.from_crs(32650, project_epsg, always_xy=True).transform(500_110.0, 4_056_945.0)
    tol = 1.0 if project_epsg == 32650 else 1.0 / 111_320 * 1.5
    assert abs(cx - x) < tol and abs(cy - y) < tol
    if project_epsg == 32650:
        assert red.sum() == 200
    mp, map_transform, _ = _read_tif(folder / cap.map_image)
    assert mp.shape == img.shape and map_transform == transform and cap.map_masks_coverage
    assert QgsCoordinateReferenceSystem.fromWkt(wkt).authid() == f"EPSG:{project_epsg}"
    assert cap.tiles and all(t.x0 + t.width <= cap.grid.width for t in cap.tiles)


def _map_layers(sample_dir, names=("areas",)):
    return [QgsVectorLayer(os.path.join(sample_dir, "map.gpkg") + f"|layername={n}", n, "ogr") for n in names]


def test_capture_of_vector_maps_is_aligned_and_keeps_every_layers_features(plugin_pkg, qgis_new_project,
                                                                          sample_dir, tmp_path):
    from socioseg.backend.contract import TilePlan
    from socioseg.plugin.capture import CARTO_BACKGROUND, capture_scene
    sat = QgsRasterLayer(os.path.join(sample_dir, "satellite.tif"), "sat")
    layers = _map_layers(sample_dir, ("areas", "roads", "pois"))
    for layer in layers:
        QgsProject.instance().addMapLayer(layer)
    crs = QgsCoordinateReferenceSystem("EPSG:32650")
    cap = capture_scene(str(tmp_path), sat, layers, sat.extent(), crs, 2.0, TilePlan())
    assert cap.map_features and not cap.map_masks_coverage
    import shapely
    from backend.geo.vectormap import VectorMap
    from rasterio.crs import CRS
    vmap = VectorMap.read(str(tmp_path / cap.map_features), CRS.from_epsg(32650))   # as the worker reads it
    by_layer = {}
    for f in vmap.features:
        by_layer.setdefault(f.layer, []).append(f)
    assert len(by_layer) == 3 and all(by_layer.values())
    assert {f.geometry.geom_type for f in vmap.features} >= {"Polygon", "LineString", "Point"}
    img, transform, _ = _read_tif(tmp_path / cap.map_image)
    # the layers are drawn with their own QGIS style: painted inside a school area, background on a gap
    school = next(f.geometry for f in vmap.features if f.props.get("amenity") == "school"
                  and f.geometry.geom_type == "Polygon")
    c = school.representative_point()
    col, row = ~transform * (c.x, c.y)
    assert tuple(img[int(row), int(col), :3]) != CARTO_BACKGROUND
    covered = shapely.union_all([f.geometry for f in vmap.features]).buffer(4)
    b = school.bounds
    gap = next(shapely.Point(b[0] - d, c.y) for d in range(1, 60) if not covered.contains(shapely.Point(b[0] - d, c.y)))
    col, row = ~transform * (gap.x, gap.y)
    assert tuple(img[int(row), int(col), :3]) == CARTO_BACKGROUND


def _params(sample_dir, query="schools", res=2.0, vector=True, layers=("areas",)):
    from socioseg.plugin.task import DetectParams
    sat = QgsRasterLayer(os.path.join(sample_dir, "satellite.tif"), "sat")
    maps = _map_layers(sample_dir, layers) if vector else [QgsRasterLayer(os.path.join(sample_dir, "map.tif"), "map")]
    crs = QgsCoordinateReferenceSystem("EPSG:32650")
    QgsProject.instance().setCrs(crs)
    return DetectParams(sat, maps, query, None, QgsRectangle(sat.extent()), crs, res)


@pytest.fixture
def results_folder(tmp_path, monkeypatch):
    """Results go to a folder of this test (Settings > Results folder)."""
    from socioseg.plugin.settings import PluginSettings
    folder = tmp_path / "results"
    before = PluginSettings.load()
    s = PluginSettings.load()
    s.results_folder = str(folder)
    s.save()
    yield folder
    before.save()


def _truth(sample_dir, cls):
    import shapely
    from backend.geo.vectormap import VectorMap
    from rasterio.crs import CRS
    truth = VectorMap.read(os.path.join(sample_dir, "truth.gpkg"), CRS.from_epsg(32650))
    return shapely.union_all([f.geometry for f in truth.features if f.props["class"] == cls])


def _geoms(layer):
    import shapely
    return shapely.union_all([shapely.from_wkb(bytes(f.geometry().asWkb())) for f in layer.getFeatures()])


def test_task_on_the_sample_gives_a_kept_styled_layer_in_the_right_place(plugin_pkg, qgis_new_project, qgis_iface,
                                                                        sample_dir, tmp_path, results_folder):
    from socioseg.plugin.panel import FindPanel
    from socioseg.plugin.task import DetectTask
    panel = FindPanel(qgis_iface)
    task = DetectTask(_params(sample_dir, "parks"), panel._finished)
    panel.start(task, run_now=True)
    assert task.error is None, task.error
    layer = panel.last_layer
    assert layer is not None and layer.crs().authid() == "EPSG:32650"
    assert layer.name() == "Parks — areas"
    assert layer.providerType() == "ogr" and layer.source().startswith(str(results_folder / "socioseg_results.gpkg"))
    assert QgsProject.instance().layerTreeRoot().children()[0].layer() is layer
    feats = list(layer.getFeatures())
    assert len(feats) == 2
    assert {f["name"] for f in feats} == {"Lotus Park", "Spring Park"}
    assert all(f["area_m2"] > 100_000 and f["reasoner"] == "mapreader" for f in feats)
    assert {f["task"] for f in feats} == {"class"}          # inferred, and said so
    assert "read as a class" in panel.status.text() and panel.progress.value() == 100
    got, parks = _geoms(layer), _truth(sample_dir, "park")
    assert got.intersection(parks).area / got.union(parks).area > 0.9
    assert layer.renderer().symbol().color().alpha() < 255    # the semi-transparent default style
    first_colour = layer.renderer().symbol().symbolLayer(0).strokeColor().name()

    # the same query again replaces the layer; another query gets a colour of its own
    panel.start(DetectTask(_params(sample_dir, "parks"), panel._finished), run_now=True)
    names = [lyr.name() for lyr in QgsProject.instance().mapLayers().values()]
    assert names.count("Parks — areas") == 1
    panel.replace.setChecked(False)
    panel.start(DetectTask(_params(sample_dir, "parks"), panel._finished), run_now=True)
    colours = {l.renderer().symbol().symbolLayer(0).strokeColor().name()
               for l in QgsProject.instance().mapLayers().values() if l.name() == "Parks — areas"}
    assert len(colours) == 2 and first_colour in colours

    # the result survives saving and reopening the project, style included
    project_file = str(tmp_path / "project.qgz")
    assert QgsProject.instance().write(project_file)
    QgsProject.instance().clear()
    assert QgsProject.instance().read(project_file)
    back = [l for l in QgsProject.instance().mapLayers().values() if l.name() == "Parks — areas"]
    assert len(back) == 2 and all(l.featureCount() == 2 for l in back)
    assert {l.renderer().symbol().symbolLayer(0).strokeColor().name() for l in back} == colours


def test_all_three_layers_of_the_map_find_all_three_schools(plugin_pkg, qgis_new_project, qgis_iface, sample_dir,
                                                           results_folder):
    from socioseg.plugin.panel import FindPanel
    from socioseg.plugin.task import DetectTask
    panel = FindPanel(qgis_iface)
    task = DetectTask(_params(sample_dir, "schools", layers=("areas", "roads", "pois")), panel._finished)
    messages = []
    task.progressChanged.connect(lambda _: messages.append(task.message))
    panel.start(task, run_now=True)
    assert any(m.startswith("2/2 tiles · ") and "tiles/s" in m and "left" in m for m in messages), messages
    assert task.error is None, task.error
    layer = panel.last_layer
    assert layer.featureCount() == 3
    import shapely
    truth = _truth(sample_dir, "school")
    got = list(shapely.get_parts(_geoms(layer)))
    assert all(any(g.intersects(t) for g in got) for t in shapely.get_parts(truth))


def test_export_of_the_selected_result_in_both_formats_keeps_the_style(plugin_pkg, qgis_new_project, qgis_iface,
                                                                      sample_dir, tmp_path, results_folder,
                                                                      monkeypatch):
    from socioseg.plugin.panel import FindPanel
    from socioseg.plugin.task import DetectTask
    panel = FindPanel(qgis_iface)
    panel.replace.setChecked(False)
    panel.start(DetectTask(_params(sample_dir, "parks"), panel._finished), run_now=True)
    parks = panel.last_layer
    panel.start(DetectTask(_params(sample_dir, "schools"), panel._finished), run_now=True)
    qgis_iface.setActiveLayer(parks)              # the selected result, not the last run, is exported
    colour = parks.renderer().symbol().symbolLayer(0).strokeColor().name()
    for name, chosen in (("parks.gpkg", ""), ("parks_shp", "ESRI Shapefile (*.shp)")):
        out = panel.export(str(tmp_path / name), chosen)
        assert out == str(tmp_path / name) + ("" if name.endswith(".gpkg") else ".shp")
        back = QgsVectorLayer(out, "back", "ogr")
        assert back.featureCount() == 2 and back.crs().authid() == "EPSG:32650"
        assert {f["name"] for f in back.getFeatures()} == {"Lotus Park", "Spring Park"}
        assert back.renderer().symbol().symbolLayer(0).strokeColor().name() == colour
    assert (tmp_path / "parks_shp.prj").exists() and (tmp_path / "parks_shp.qml").exists()
    # a failing export leaves the file it would replace as it was, and nothing half-written beside it
    from socioseg.plugin import layers
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    real_write = layers.write_layer

    def write_then_fail(*args, **kwargs):
        real_write(*args, **kwargs)
        raise OSError("No space left on device")

    monkeypatch.setattr(layers, "write_layer", write_then_fail)
    assert panel.export(str(tmp_path / "parks.gpkg"), "") is None
    assert panel.export(str(tmp_path / "parks_shp.shp"), "") is None
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".socioseg-export")]
    from socioseg.plugin.layers import suggested_file_name
    assert suggested_file_name(parks) == "parks_areas"


def test_task_errors_reach_the_user_not_a_traceback(plugin_pkg, qgis_new_project, qgis_iface, sample_dir):
    from socioseg.plugin.panel import FindPanel
    from socioseg.plugin.task import DetectTask
    panel = FindPanel(qgis_iface)
    task = DetectTask(_params(sample_dir, "Lotus Park", vector=False), panel._finished)
    task.params.task = "name"
    panel.start(task, run_now=True)
    assert task.error and "vector map" in task.error
    assert "vector map" in panel.status.text() and "--" not in task.error and "Task level: class" in task.error
    assert panel.run_button.text() == "Run" and panel.progress.value() == 0


def test_a_broken_backend_python_is_reported_with_the_fix(plugin_pkg, qgis_new_project, qgis_iface, sample_dir):
    from socioseg.plugin.panel import FindPanel
    from socioseg.plugin.task import DetectTask
    panel = FindPanel(qgis_iface)
    p = _params(sample_dir, "parks")
    p.python = "/nonexistent/python3"
    task = DetectTask(p, panel._finished)
    panel.start(task, run_now=True)
    assert "cannot start the backend's Python" in task.error and "Settings" in task.error
    panel.settings.python = "/nonexistent/python3"
    assert "cannot be started" in panel.worker_problem()


def test_cancel_stops_a_multi_tile_task_in_the_worker(plugin_pkg, qgis_new_project, qgis_iface, sample_dir):
    from socioseg.plugin.panel import FindPanel
    from socioseg.plugin.task import DetectTask
    panel = FindPanel(qgis_iface)
    task = DetectTask(_params(sample_dir, "schools", res=1.0), panel._finished)
    task.isCanceled = lambda: "detecting" in task.message or "tiles" in task.message
    panel.start(task, run_now=True)
    assert task.cancelled and task.result is None and task.error is None
    assert panel.status.text() == "Cancelled." and panel.progress.value() == 0 and panel.run_button.text() == "Run"


def test_cancel_during_capture_stops_between_render_blocks(plugin_pkg, qgis_new_project, qgis_iface, sample_dir,
                                                          monkeypatch):
    from socioseg.plugin import capture
    from socioseg.plugin import worker_client
    from socioseg.plugin.task import DetectTask
    monkeypatch.setattr(capture, "BLOCK", 128)
    rendered = []
    real_render = capture.render
    monkeypatch.setattr(capture, "render", lambda ms: (rendered.append(1), real_render(ms))[1])
    monkeypatch.setattr(worker_client, "run_worker", lambda *a, **k: pytest.fail("the worker must not start"))
    task = DetectTask(_params(sample_dir, "schools", res=1.0))
    task.isCanceled = lambda: len(rendered) >= 3
    assert task.run() is False and task.cancelled and task.error is None
    assert len(rendered) == 3       # stopped at the next block, not after rendering the whole area


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_full_disk_while_rendering_is_a_message_with_the_fix(plugin_pkg, qgis_new_project, sample_dir,
                                                               monkeypatch, tmp_path):
    from socioseg.backend import contract
    from socioseg.plugin.task import DetectTask
    monkeypatch.setattr(contract, "SATELLITE_FILE", "/dev/full")    # every write fails: "No space left"
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    task = DetectTask(_params(sample_dir, "parks"))
    assert task.run() is False and not task.cancelled
    assert "cannot write /dev/full" in task.error and "free space there" in task.error
    assert os.listdir(tmp_path) == []                                # the scene folder is gone


def test_unanswerable_query_on_a_vector_map_says_why_instead_of_an_empty_layer(plugin_pkg, qgis_new_project,
                                                                              qgis_iface, sample_dir):
    from socioseg.plugin.panel import FindPanel
    from socioseg.plugin.task import DetectTask
    panel = FindPanel(qgis_iface)
    before = set(QgsProject.instance().mapLayers())
    task = DetectTask(_params(sample_dir, "zoos"), panel._finished)
    panel.start(task, run_now=True)
    assert task.error is None and not task.result.entities
    assert set(QgsProject.instance().mapLayers()) == before
    assert panel.status.text().startswith("Nothing found for 'zoos': no feature of the checked Map layers in this "
                                          "Area is tagged tourism=zoo. Check the layer")


def test_panel_defaults_presets_and_remembered_choices(plugin_pkg, qgis_new_project, qgis_iface, sample_dir,
                                                       results_folder, tmp_path):
    from socioseg.plugin.panel import FindPanel
    from socioseg.plugin.task import DetectTask
    project = QgsProject.instance()
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:32650"))
    sat = QgsRasterLayer(os.path.join(sample_dir, "satellite.tif"), "satellite")
    raster_map = QgsRasterLayer(os.path.join(sample_dir, "map.tif"), "carto")
    project.addMapLayer(sat)
    project.addMapLayer(raster_map)                                      # drawn above the imagery
    panel = FindPanel(qgis_iface)
    assert panel.sat_combo.currentLayer() is sat                         # the bottom raster
    assert [l.name() for l in panel.map_layers()] == ["carto"]          # never the satellite as map
    presets = [panel.query.itemText(i) for i in range(panel.query.count())]
    assert "schools" in presets and "zoos" not in presets               # the Carto legend has no zoo colour
    layers = _map_layers(sample_dir, ("areas", "roads", "pois"))
    project.addMapLayers(layers)
    panel.refresh_layers([])
    assert sorted(l.name() for l in panel.map_layers()) == ["areas", "pois", "roads"]   # one source, all layers
    assert "zoos" in [panel.query.itemText(i) for i in range(panel.query.count())]
    panel.start(DetectTask(_params(sample_dir, "parks"), panel._finished), run_now=True)
    result_name = panel.last_layer.name()
    panel.query.setEditText("hospitals")
    panel.task_combo.setCurrentIndex(1)
    panel.resolution.setValue(3.5)
    panel.save_choices()
    project_file = str(tmp_path / "remember.qgz")
    assert project.write(project_file)
    project.clear()
    assert project.read(project_file)
    again = FindPanel(qgis_iface)
    assert again.sat_combo.currentLayer().name() == "satellite"
    assert sorted(l.name() for l in again.map_layers()) == ["areas", "pois", "roads"]
    assert result_name not in [again.map_combo.itemText(i) for i in range(again.map_combo.count())]
    assert (again.query.currentText(), again.task_combo.currentIndex(), again.resolution.value()) == ("hospitals", 1, 3.5)
    again.disconnect_project()
    panel.disconnect_project()


def test_backend_option_names_become_plugin_controls():
    from socioseg.plugin.task import plugin_wording
    text = plugin_wording("use the vision-language reasoner (--reasoner qwen) or --task class; raise the limit (--max-tiles)")
    assert "--" not in text and "Engine: SocioReasoner" in text and "Settings > Max tiles" in text
    text = plugin_wording("the map legend L has no colour for zoo: give a vector map, a legend file with that class "
                          "(--legend), or use --reasoner qwen")
    assert text == ("the map legend L has no colour for zoo: check a vector Map layer (e.g. an OpenStreetMap "
                    "extract), or use Engine: SocioReasoner")


def test_drawn_area_stays_visible_and_zoom_goes_to_the_result(plugin_pkg, qgis_new_project, qgis_iface, sample_dir,
                                                             results_folder, qgis_processing):
    from socioseg.plugin.panel import FindPanel
    from socioseg.plugin.task import DetectTask
    project = QgsProject.instance()
    sat = QgsRasterLayer(os.path.join(sample_dir, "satellite.tif"), "satellite")
    project.addMapLayers([sat] + _map_layers(sample_dir, ("areas", "pois")))
    panel = FindPanel(qgis_iface)
    panel.area.setCurrentIndex(2)
    drawn = QgsRectangle(499_600, 4_056_500, 500_200, 4_057_300)
    panel._extent_drawn(drawn)
    assert panel._band.asGeometry().boundingBox() == drawn and panel.chosen_extent() == drawn
    panel.area.setCurrentIndex(0)
    assert panel._band.asGeometry().isEmpty()
    panel.start(DetectTask(_params(sample_dir, "parks"), panel._finished), run_now=True)
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(project.crs())
    canvas.setExtent(QgsRectangle(0, 0, 10, 10))
    panel.zoom_to_result()
    assert canvas.extent().contains(panel.last_layer.extent())
    # the Processing dialog's defaults: the satellite as satellite, the map layers (never a result) as map
    from socioseg.plugin.processing_provider import DetectEntitiesAlgorithm
    alg = DetectEntitiesAlgorithm()
    alg.initAlgorithm()
    assert alg.parameterDefinition("SATELLITE").defaultValue() == sat.id()
    maps = alg.parameterDefinition("MAP").defaultValue()
    assert sat.id() not in maps and panel.last_layer.id() not in maps and len(maps) == 2
    panel.disconnect_project()


def test_processing_algorithm_runs_with_and_without_extent(plugin_pkg, qgis_processing, qgis_new_project,
                                                         qgis_iface, sample_dir, tmp_path):
    import processing
    plugin = plugin_pkg.classFactory(qgis_iface)
    plugin.initProcessing()
    try:
        sat = os.path.join(sample_dir, "satellite.tif")
        mp = os.path.join(sample_dir, "map.gpkg") + "|layername=areas"
        QgsProject.instance().setCrs(QgsCoordinateReferenceSystem("EPSG:32650"))
        out = str(tmp_path / "schools.gpkg")
        res = processing.run("socioseg:detect_entities", {"SATELLITE": sat, "MAP": mp, "QUERY": "schools",
                                                          "RESOLUTION": 2.0, "OUTPUT": out})
        layer = QgsVectorLayer(res["OUTPUT"], "out", "ogr")
        assert layer.featureCount() == 2        # the point-only school is not in the 'areas' layer
        all_layers = [os.path.join(sample_dir, "map.gpkg") + f"|layername={n}" for n in ("areas", "roads", "pois")]
        res = processing.run("socioseg:detect_entities", {"SATELLITE": sat, "MAP": all_layers, "QUERY": "schools",
                                                          "RESOLUTION": 2.0, "OUTPUT": "memory:"})
        assert res["OUTPUT"].featureCount() == 3
        ext = "499500,500300,4056400,4057400 [EPSG:32650]"
        res = processing.run("socioseg:detect_entities", {"SATELLITE": sat, "MAP": mp, "QUERY": "parks",
                                                          "EXTENT": ext, "RESOLUTION": 2.0, "ENGINE": 0,
                                                          "OUTPUT": "memory:"})
        assert res["OUTPUT"].featureCount() >= 1
    finally:
        plugin.unload()


def test_processing_without_the_environment_gives_the_set_up_advice_not_a_traceback(
        plugin_pkg, qgis_processing, qgis_new_project, qgis_iface, sample_dir, tmp_path):
    """qgis_process on a profile without the plugin's environment: QGIS's own Python has no rasterio."""
    import processing
    from qgis.core import QgsProcessingException
    from socioseg.plugin.settings import PluginSettings
    from socioseg.plugin.worker_client import missing_module
    before = PluginSettings.load()
    s = PluginSettings.load()
    s.python = "/usr/bin/python3"
    s.save()
    plugin = plugin_pkg.classFactory(qgis_iface)
    plugin.initProcessing()
    try:
        with pytest.raises(QgsProcessingException) as err:
            processing.run("socioseg:detect_entities", {
                "SATELLITE": os.path.join(sample_dir, "satellite.tif"),
                "MAP": os.path.join(sample_dir, "map.gpkg") + "|layername=areas", "QUERY": "schools",
                "RESOLUTION": 2.0, "OUTPUT": str(tmp_path / "out.gpkg")})
        text = str(err.value)
        assert "Set up Python environment" in text and "rasterio" in text and "Traceback" not in text
    finally:
        plugin.unload()
        before.save()
    # the worker's own traceback (a Python that lost a package after the check) gives the same advice
    tail = "Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'cv2'"
    assert missing_module(tail) == "opencv-python-headless" and missing_module("ValueError: x") is None


def test_missing_packages_in_the_backend_python_are_explained(plugin_pkg, qgis_iface, tmp_path):
    import venv
    from socioseg.plugin.panel import FindPanel
    venv.EnvBuilder(with_pip=False).create(tmp_path / "bare")
    bare = str(tmp_path / "bare" / "bin" / "python")
    panel = FindPanel(qgis_iface)
    panel.settings.python = bare
    text = panel.worker_problem()
    assert "rasterio" in text and "shapely" in text
    assert "Set up Python environment" in text and bare in text


def test_settings_dialog_saves_and_diagnostics_come_from_the_backend(plugin_pkg, qgis_app):
    from socioseg.plugin.settings import PluginSettings
    from socioseg.plugin.settings_dialog import SettingsDialog, diagnostics_text
    before = PluginSettings.load()
    try:
        d = SettingsDialog()
        d.vlm.setText("/models/SocioReasoner-3B")
        d.python.setText("")
        d.max_tiles.setValue(900)
        d.results_folder.setText("/data/results")
        assert not d.greedy.isChecked() and PluginSettings.load().generation()["do_sample"]   # released sampling
        d.greedy.setChecked(True)
        d.seed.setValue(7)
        assert d.outline.currentData() == "map"         # the map reader's outlines by default
        d.outline.setCurrentIndex(d.outline.findData("image"))
        d.accept()
        assert PluginSettings.load().outline == "image"
        assert PluginSettings.load().generation() == {"max_new_tokens": 2048, "do_sample": False, "seed": 7}
        assert PluginSettings.load().vlm_model == "/models/SocioReasoner-3B"
        assert PluginSettings.load().tile_plan().max_tiles == 900
        assert PluginSettings.load().results_folder == "/data/results"
        assert PluginSettings.load().engine_specs("vlm")[0] == "qwen:/models/SocioReasoner-3B"
    finally:
        before.save()
    text = diagnostics_text()
    assert "QGIS 3." in text and "socioseg backend" in text and "transformers" in text
