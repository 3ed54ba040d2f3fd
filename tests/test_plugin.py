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
            "socioseg.plugin.processing_provider, socioseg.plugin.capture, socioseg.plugin.layers\n"
            "print('torch' in sys.modules, 'rasterio' in sys.modules)" % str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert r.stdout.split() == ["False", "False"], r.stderr


def _marker_raster(path, crs, transform, shape=(200, 300)):
    img = np.full((*shape, 3), 90, np.uint8)
    img[50:60, 100:120] = (255, 0, 0)          # rows 50..59, cols 100..119
    return write_raster(path, img, crs, transform)


@pytest.mark.parametrize("project_epsg,res_m", [(32650, 1.0), (4326, 1.0)])
def test_capture_georeference_is_exact(plugin_pkg, qgis_new_project, tmp_path, project_epsg, res_m):
    from socioseg.plugin.capture import capture_scene
    t = Affine(1.0, 0, 500_000, 0, -1.0, 4_057_000)
    path = _marker_raster(tmp_path / "sat.tif", "EPSG:32650", t)
    sat = QgsRasterLayer(str(path), "sat")
    gpkg = os.path.join(ROOT, "resources", "sample", "map.gpkg")
    crs = QgsCoordinateReferenceSystem(f"EPSG:{project_epsg}")
    QgsProject.instance().setCrs(crs)
    from qgis.core import QgsCoordinateTransform
    tr = QgsCoordinateTransform(sat.crs(), crs, QgsProject.instance())
    extent = tr.transformBoundingBox(sat.extent())
    scene = capture_scene(sat, sat, extent, crs, res_m)
    red = (scene.satellite[..., 0] > 200) & (scene.satellite[..., 1] < 60)
    rows, cols = np.nonzero(red)
    # the red block's centre must come out at its true place
    cx, cy = scene.pixel_to_map(cols.mean() + 0.5, rows.mean() + 0.5)
    from pyproj import Transformer
    x, y = Transformer.from_crs(32650, project_epsg, always_xy=True).transform(500_110.0, 4_056_945.0)
    tol = 1.0 if project_epsg == 32650 else 1.0 / 111_320 * 1.5
    assert abs(cx - x) < tol and abs(cy - y) < tol
    assert np.array_equal(scene.satellite.shape[:2], scene.map_image.shape[:2])
    assert QgsCoordinateReferenceSystem.fromWkt(scene.crs_wkt).authid() == f"EPSG:{project_epsg}"
    assert gpkg  # the vector map is exercised in the task test below


def test_capture_of_a_vector_map_is_aligned_and_keeps_features(plugin_pkg, qgis_new_project, sample_dir):
    from socioseg.plugin.capture import capture_scene
    sat = QgsRasterLayer(os.path.join(sample_dir, "satellite.tif"), "sat")
    vmap = QgsVectorLayer(os.path.join(sample_dir, "map.gpkg") + "|layername=areas", "areas", "ogr")
    crs = QgsCoordinateReferenceSystem("EPSG:32650")
    scene = capture_scene(sat, vmap, sat.extent(), crs, 2.0)
    assert scene.features is not None and len(scene.features) > 50
    assert scene.map_image.shape == scene.satellite.shape
    # the layer is drawn with its own QGIS style: painted inside a school area, background on a road
    from socioseg.plugin.capture import CARTO_BACKGROUND
    import shapely
    geoms = [shapely.from_wkb(bytes.fromhex(f["wkb"])) for f in scene.features]
    school = next(g for g, f in zip(geoms, scene.features) if f["props"].get("amenity") == "school")
    inv = ~Affine(*scene.transform)
    c = school.representative_point()
    col, row = inv * (c.x, c.y)
    assert tuple(scene.map_image[int(row), int(col)]) != CARTO_BACKGROUND
    covered = shapely.union_all(geoms).buffer(4)
    b = school.bounds
    gap = next(shapely.Point(b[0] - d, c.y) for d in range(1, 40) if not covered.contains(shapely.Point(b[0] - d, c.y)))
    col, row = inv * (gap.x, gap.y)
    assert tuple(scene.map_image[int(row), int(col)]) == CARTO_BACKGROUND


def _params(sample_dir, query="schools", res=2.0, vector=True):
    from socioseg.plugin.task import DetectParams
    sat = QgsRasterLayer(os.path.join(sample_dir, "satellite.tif"), "sat")
    mp = QgsVectorLayer(os.path.join(sample_dir, "map.gpkg") + "|layername=areas", "areas", "ogr") if vector \
        else QgsRasterLayer(os.path.join(sample_dir, "map.tif"), "map")
    crs = QgsCoordinateReferenceSystem("EPSG:32650")
    QgsProject.instance().setCrs(crs)
    return DetectParams(sat, mp, query, None, QgsRectangle(sat.extent()), crs, res)


def test_task_on_the_sample_gives_a_styled_layer_in_the_right_place(plugin_pkg, qgis_new_project, qgis_iface,
                                                                   sample_dir, tmp_path):
    from socioseg.plugin.panel import FindPanel
    from socioseg.plugin.task import DetectTask
    panel = FindPanel(qgis_iface)
    task = DetectTask(_params(sample_dir, "parks"), panel._finished)
    panel.start(task, run_now=True)
    assert task.error is None, task.error
    layer = panel.last_layer
    assert layer is not None and layer.crs().authid() == "EPSG:32650"
    assert layer.name() == "Parks — map reader"
    assert QgsProject.instance().layerTreeRoot().children()[0].layer() is layer
    feats = list(layer.getFeatures())
    assert len(feats) == 2
    assert {f["name"] for f in feats} == {"Lotus Park", "Spring Park"}
    assert all(f["area_m2"] > 100_000 and f["reasoner"] == "mapreader" for f in feats)
    # geometry: compare with the sample's truth
    import shapely
    from backend.geo.vectormap import VectorMap
    from rasterio.crs import CRS
    truth = VectorMap.read(os.path.join(sample_dir, "truth.gpkg"), CRS.from_epsg(32650))
    parks = shapely.union_all([f.geometry for f in truth.features if f.props["class"] == "park"])
    got = shapely.union_all([shapely.from_wkb(bytes(f.geometry().asWkb())) for f in feats])
    assert got.intersection(parks).area / got.union(parks).area > 0.9
    assert layer.renderer().symbol().color().alpha() < 255    # the semi-transparent default style

    # the same query again replaces the layer
    task2 = DetectTask(_params(sample_dir, "parks"), panel._finished)
    panel.start(task2, run_now=True)
    names = [lyr.name() for lyr in QgsProject.instance().mapLayers().values()]
    assert names.count("Parks — map reader") == 1

    # export round-trips with attributes, Shapefile with its .prj
    from socioseg.plugin.layers import export_layer
    for name in ("parks.gpkg", "parks.shp"):
        out = export_layer(panel.last_layer, str(tmp_path / name))
        back = QgsVectorLayer(out, "back", "ogr")
        assert back.featureCount() == 2 and back.crs().authid() == "EPSG:32650"
        assert {f["name"] for f in back.getFeatures()} == {"Lotus Park", "Spring Park"}
    assert (tmp_path / "parks.prj").exists()


def test_task_errors_reach_the_user_not_a_traceback(plugin_pkg, qgis_new_project, qgis_iface, sample_dir):
    from socioseg.plugin.panel import FindPanel
    from socioseg.plugin.task import DetectTask
    panel = FindPanel(qgis_iface)
    task = DetectTask(_params(sample_dir, "Lotus Park", vector=False), panel._finished)
    task.params.task = "name"
    panel.start(task, run_now=True)
    assert task.error and "vector map" in task.error
    assert "vector map" in panel.status.text()
    assert panel.run_button.text() == "Run"


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


def test_cancel_stops_a_multi_tile_task(plugin_pkg, qgis_new_project, qgis_iface, sample_dir):
    from socioseg.plugin.task import DetectTask
    p = _params(sample_dir, "schools", res=1.0)
    task = DetectTask(p)
    calls = []
    task.isCanceled = lambda: (calls.append(1), len(calls) > 3)[1]
    assert task.run() is False and task.cancelled and task.detection is None


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
        ext = "499500,500300,4056400,4057400 [EPSG:32650]"
        res = processing.run("socioseg:detect_entities", {"SATELLITE": sat, "MAP": mp, "QUERY": "parks",
                                                          "EXTENT": ext, "RESOLUTION": 2.0, "ENGINE": 0,
                                                          "OUTPUT": "memory:"})
        assert res["OUTPUT"].featureCount() >= 1
    finally:
        plugin.unload()


def test_missing_packages_in_the_backend_python_are_explained(plugin_pkg, qgis_iface, tmp_path):
    import venv
    from socioseg.plugin.panel import FindPanel
    venv.EnvBuilder(with_pip=False).create(tmp_path / "bare")
    bare = str(tmp_path / "bare" / "bin" / "python")
    panel = FindPanel(qgis_iface)
    panel.settings.python = bare
    text = panel.worker_problem()
    assert "rasterio" in text and "shapely" in text
    assert f'"{bare}" -m pip install --user -r' in text and "requirements-plugin.txt" in text


def test_settings_dialog_saves_and_diagnostics_come_from_the_backend(plugin_pkg, qgis_app):
    from socioseg.plugin.settings import PluginSettings
    from socioseg.plugin.settings_dialog import SettingsDialog, diagnostics_text
    before = PluginSettings.load()
    try:
        d = SettingsDialog()
        d.vlm.setText("/models/SocioReasoner-3B")
        d.python.setText("")
        d.accept()
        assert PluginSettings.load().vlm_model == "/models/SocioReasoner-3B"
        assert PluginSettings.load().engine_specs("vlm")[0] == "qwen:/models/SocioReasoner-3B"
    finally:
        before.save()
    text = diagnostics_text()
    assert "QGIS 3." in text and "socioseg backend" in text and "transformers" in text
