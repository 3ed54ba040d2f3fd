"""The plugin's GUI driven the way a planner drives it, in real QGIS (offscreen) with the real worker:
the mouse on the real buttons and actions, text typed into the real fields, modal dialogs (the save
dialog, questions, the set-up offer) answered by a timer while they are open. No method behind a button
is called directly: a button whose wiring is broken fails here (the Export… button once received Qt's
clicked(bool) as its path and never worked, while the tests calling export() directly passed).

Every click is recorded; the last test lists the plugin's buttons and actions from the widgets themselves
and fails on any that no test clicked. Run the whole module for it (alone it skips).
"""
import os
import shutil
import sys
import time
import traceback

import pytest

qgis_core = pytest.importorskip("qgis.core")
from qgis.core import (QgsApplication, QgsCoordinateReferenceSystem, QgsProject, QgsVectorLayer)  # noqa: E402
from qgis.PyQt.QtCore import QPoint, Qt, QTimer  # noqa: E402
from qgis.PyQt.QtTest import QTest  # noqa: E402
from qgis.PyQt.QtWidgets import (QAbstractButton, QApplication, QCheckBox, QDialogButtonBox, QFileDialog, QLineEdit,  # noqa: E402
                                 QMessageBox)

CLICKED: set[str] = set()      # "<where>:<label>" of every button and action a test clicked


def label(button) -> str:
    return button.text().replace("&", "").strip()


def _catching(fn):
    """Run fn with Python exceptions raised in Qt slots collected (PyQt would print them, or abort)."""
    errors = []
    old = sys.excepthook
    sys.excepthook = lambda t, v, tb: errors.append("".join(traceback.format_exception(t, v, tb)))
    try:
        fn()
    finally:
        sys.excepthook = old
    assert not errors, errors[0]


def click(button, where: str) -> None:
    """The left mouse button on the real widget; an exception in what it calls fails the test."""
    assert button.isEnabled(), f"{where}: '{label(button)}' is disabled"
    CLICKED.add(f"{where}:{label(button)}")
    # a check box takes clicks on its box and text only, not on the rest of a row it is stretched over
    pos = QPoint(8, button.height() // 2) if isinstance(button, QCheckBox) else QPoint()
    _catching(lambda: QTest.mouseClick(button, Qt.LeftButton, Qt.NoModifier, pos))


def trigger(action, where: str) -> None:
    """A menu action chosen (what clicking its menu entry or toolbar icon does)."""
    assert action.isEnabled()
    CLICKED.add(f"{where}:{label(action)}")
    _catching(action.trigger)


class Answer:
    """Answers the next modal widget of `kind` once it is open (as a user does): `act(widget)`."""

    def __init__(self, kind, act, timeout: float = 90):
        self.kind, self.act, self.seen, self.error = kind, act, None, None
        self.text = ""
        self.deadline = time.monotonic() + timeout
        QTimer.singleShot(0, self._poll)

    def _poll(self):
        w = QApplication.activeModalWidget()
        if isinstance(w, self.kind) and w.isVisible():
            self.seen = w
            self.text = w.text() if isinstance(w, QMessageBox) else w.windowTitle()
            try:
                self.act(w)
            except BaseException as exc:  # noqa: BLE001 - re-raised by check() in the test
                self.error = exc
                w.close()
            return
        if time.monotonic() < self.deadline:
            QTimer.singleShot(50, self._poll)

    def check(self):
        if self.error is not None:
            raise self.error
        assert self.seen is not None, f"no {self.kind.__name__} was shown"
        return self


def press(box: QMessageBox, which, where: str) -> None:
    click(box.button(which), where)


def wait_for(condition, timeout: float = 180, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what or condition}"
        QTest.qWait(50)


@pytest.fixture(autouse=True)
def collect_qt_garbage():
    yield
    import gc
    gc.collect()


@pytest.fixture
def settings(tmp_path):
    """The plugin's settings for this test (results in a folder of its own), restored afterwards."""
    from socioseg.plugin.settings import PluginSettings
    before = PluginSettings.load()
    s = PluginSettings.load()
    s.results_folder = str(tmp_path / "results")
    s.python = ""
    s.save()
    yield s
    before.save()


@pytest.fixture
def panel(plugin_pkg, qgis_new_project, qgis_iface, settings):
    from socioseg.plugin.panel import FindPanel
    p = FindPanel(qgis_iface)
    p.setFloating(True)
    p.show()
    yield p
    if p.task is not None:
        p.task.cancel()
        wait_for(lambda: p.task is None, 60, "the task to end")
    p.disconnect_project()
    p.hide()
    if p.help_dialog is not None:
        p.help_dialog.close()
    p.deleteLater()
    QTest.qWait(10)


def load_sample_by_click(panel):
    click(panel.sample_button, "panel")
    assert panel.sat_combo.currentLayer() is not None
    assert panel.sat_combo.currentLayer().name() == "Sample town satellite"


def run_by_click(panel, timeout: float = 180):
    click(panel.run_button, "panel")
    assert panel.task is not None, panel.status.text()
    wait_for(lambda: panel.task is None, timeout, "the run")


def read_back(path: str):
    """(geometry type name, EPSG code, field names, feature count, names) with GDAL, not QGIS."""
    from osgeo import ogr
    ds = ogr.Open(path)
    assert ds is not None, path
    lyr = ds.GetLayer(0)
    srs = lyr.GetSpatialRef()
    srs.AutoIdentifyEPSG()
    defn = lyr.GetLayerDefn()
    fields = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    names = sorted(f.GetField("name") for f in lyr)
    return (ogr.GeometryTypeToName(lyr.GetGeomType()), srs.GetAuthorityCode(None), fields,
            lyr.GetFeatureCount(), names)


def save_as(path: str, name_filter: str):
    """The save dialog answered: the format chosen, the file name typed, Return."""
    def act(dlg):
        assert "Schools" in dlg.windowTitle()
        dlg.selectNameFilter(name_filter)
        edit = dlg.findChild(QLineEdit, "fileNameEdit")
        edit.clear()
        QTest.keyClicks(edit, path)
        QTest.keyClick(edit, Qt.Key_Return)
    return act


SCHOOLS = ["Lakeview High School", "Maple School", "Northgate Middle School"]


def test_sample_town_run_and_export_in_three_formats_through_the_button(panel, qgis_iface, tmp_path):
    from backend.output.schema import FIELDS
    load_sample_by_click(panel)
    assert sorted(l.name() for l in panel.map_layers()) == [f"Sample town map {n}" for n in ("areas", "pois", "roads")]
    assert "press Run" in panel.status.text()
    assert not panel.export_button.isEnabled()       # nothing to export yet
    run_by_click(panel)
    layer = panel.last_layer
    assert layer is not None, panel.status.text()
    assert layer.name() == "Schools — Sample town map"
    assert sorted(f["name"] for f in layer.getFeatures()) == SCHOOLS
    assert panel.export_button.isEnabled() and panel.progress.value() == 100
    out = tmp_path / "export"
    out.mkdir()
    cases = [("GeoPackage (*.gpkg)", "schools", ".gpkg", "Multi Polygon", "32650"),
             ("ESRI Shapefile (*.shp)", "schools", ".shp", "Polygon", "32650"),   # a Shapefile has no multi type
             # GDAL's GeoJSON writer (RFC 7946) writes a one-part MultiPolygon as a Polygon
             ("GeoJSON (*.geojson)", "schools", ".geojson", "Polygon", "4326")]
    for name_filter, stem, ext, geom, epsg in cases:
        answer = Answer(QFileDialog, save_as(str(out / stem), name_filter))    # no extension typed
        click(panel.export_button, "panel")
        answer.check()
        path = str(out / stem) + ext
        assert os.path.exists(path), (path, panel.status.text())
        got_geom, got_epsg, fields, count, names = read_back(path)
        assert (got_geom, got_epsg, count, names) == (geom, epsg, 3, SCHOOLS), path
        assert fields == [n for n, _ in FIELDS], path
        assert path in panel.status.text()
    # the save dialog cancelled: nothing written, no message
    before = sorted(os.listdir(out))
    answer = Answer(QFileDialog, lambda dlg: dlg.reject())
    click(panel.export_button, "panel")
    answer.check()
    assert sorted(os.listdir(out)) == before

    # Zoom to result: the canvas shows the result
    canvas = qgis_iface.mapCanvas()
    canvas.setExtent(canvas.fullExtent().buffered(10_000))
    click(panel.zoom_button, "panel")
    shown, result = canvas.extent(), layer.extent()
    assert shown.contains(result)     # and fills it in one direction (the other follows the canvas's shape)
    assert min(shown.width() / result.width(), shown.height() / result.height()) < 1.5

    # Project > New: nothing of the old project stays shown
    QgsProject.instance().clear()
    QTest.qWait(10)
    assert panel.status.text() == "" and panel.progress.value() == 0
    assert not panel.export_button.isEnabled() and panel.last_layer is None


def test_replace_removes_only_the_plugins_own_result_of_the_same_map(panel, tmp_path):
    from socioseg.plugin.layers import QUERY_PROPERTY
    load_sample_by_click(panel)
    assert panel.replace.isChecked()
    run_by_click(panel)
    first_id = panel.last_layer.id()
    table = panel.last_layer.source().split("layername=")[1]
    # the planner's own copy, exported and loaded by hand; one even carries the plugin's mark in its style
    answer = Answer(QFileDialog, save_as(str(tmp_path / "mine"), "ESRI Shapefile (*.shp)"))
    click(panel.export_button, "panel")
    answer.check()
    mine = QgsVectorLayer(str(tmp_path / "mine.shp"), "Schools — map reader", "ogr")
    assert mine.isValid() and not mine.customProperty(QUERY_PROPERTY)      # the exported style has no mark
    marked = QgsVectorLayer(str(tmp_path / "mine.shp"), "Schools (old export)", "ogr")
    marked.setCustomProperty(QUERY_PROPERTY, "schools")
    QgsProject.instance().addMapLayers([mine, marked])
    mine_id, marked_id = mine.id(), marked.id()
    # the checkbox clicked off and on again, as a planner would try it
    click(panel.replace, "panel")
    assert not panel.replace.isChecked()
    click(panel.replace, "panel")
    run_by_click(panel)
    ids = set(QgsProject.instance().mapLayers())
    assert mine_id in ids and marked_id in ids and first_id not in ids
    assert panel.last_layer.id() in ids
    assert "Replaced in the Layers panel" in panel.status.text() and table in panel.status.text()
    assert "socioseg_results.gpkg" in panel.status.text()


def test_layers_added_with_the_panel_open_are_offered_and_the_satellite_is_chosen(panel, sample_dir):
    from qgis.core import QgsRasterLayer
    assert panel.sat_combo.currentLayer() is None and panel.map_combo.count() == 0
    project = QgsProject.instance()
    sat = QgsRasterLayer(os.path.join(sample_dir, "satellite.tif"), "sat")
    project.addMapLayer(sat)
    maps = [QgsVectorLayer(os.path.join(sample_dir, "map.gpkg") + f"|layername={n}", n, "ogr")
            for n in ("areas", "roads", "pois")]
    for m in maps:
        project.addMapLayer(m)
        listed = [panel.map_combo.itemData(i) for i in range(panel.map_combo.count())]
        assert m.id() in listed, f"{m.name()} added last is not offered"
    assert panel.sat_combo.currentLayer() is sat
    assert sorted(l.name() for l in panel.map_layers()) == ["areas", "pois", "roads"]
    # a raster added while the panel is open: the satellite stays, the new one is offered, unchecked
    carto = QgsRasterLayer(os.path.join(sample_dir, "map.tif"), "map_carto")
    project.addMapLayer(carto)
    assert panel.sat_combo.currentLayer() is sat
    assert carto.id() in [panel.map_combo.itemData(i) for i in range(panel.map_combo.count())]
    assert sat.id() not in [panel.map_combo.itemData(i) for i in range(panel.map_combo.count())]


def test_a_map_layer_without_crs_is_named_with_the_action_that_sets_it(panel, sample_dir):
    load_sample_by_click(panel)
    areas = [l for l in panel.map_layers() if l.name().endswith("areas")][0]
    areas.setCrs(QgsCoordinateReferenceSystem())
    click(panel.run_button, "panel")
    text = panel.status.text()
    assert panel.task is None
    assert "'Sample town map areas'" in text and "Layer Properties > Source" in text and "CRS" in text
    assert "/tmp" not in text and "socioseg-scene" not in text
    areas.setCrs(QgsCoordinateReferenceSystem("EPSG:32650"))
    # the message goes once the cause is fixed and the panel is touched again
    panel.query.setEditText("parks")
    assert panel.status.text() == ""


def test_worker_messages_never_show_the_temporary_scene_folder(plugin_pkg):
    from socioseg.plugin.task import without_scene_folder
    folder = "/tmp/socioseg-scene-abc123"
    text = without_scene_folder(f"vector map {folder}/features.gpkg holds no usable features", folder)
    assert "/tmp" not in text and "socioseg-scene" not in text and "vector Map layers" in text


def test_stale_texts_go_and_the_drawn_area_is_in_metres(panel, qgis_iface, sample_dir):
    from qgis.core import QgsRasterLayer
    click(panel.run_button, "panel")                 # empty project
    assert panel.status.text() == "Choose a Satellite layer."
    sat = QgsRasterLayer(os.path.join(sample_dir, "satellite.tif"), "sat")
    QgsProject.instance().addMapLayer(sat)
    assert panel.status.text() != "Choose a Satellite layer."
    QgsProject.instance().clear()
    load_sample_by_click(panel)
    canvas = qgis_iface.mapCanvas()
    canvas.resize(600, 400)
    canvas.show()
    canvas.setExtent(panel.sat_combo.currentLayer().extent())
    panel.area.setCurrentIndex(2)
    click(panel.draw_button, "panel")
    assert panel.status.text() == "Drag a rectangle on the map."
    vp = canvas.viewport()
    QTest.mousePress(vp, Qt.LeftButton, Qt.NoModifier, QPoint(100, 100))
    QTest.mouseMove(vp, QPoint(300, 250))
    QTest.mouseRelease(vp, Qt.LeftButton, Qt.NoModifier, QPoint(300, 250))
    assert panel.drawn_extent is not None and not panel.drawn_extent.isEmpty()
    text = panel.status.text()
    assert text.startswith("Area: ") and text.endswith(" m") and "map units" not in text, text
    w = float(text.split()[1])
    assert abs(w - panel.drawn_extent.width()) < 1.5     # UTM: metres


def test_help_opens_the_bundled_page_inside_qgis(panel):
    click(panel.help_button, "panel")
    dlg = panel.help_dialog
    assert dlg is not None and dlg.isVisible()
    assert dlg.browser.source().isLocalFile() and os.path.exists(dlg.browser.source().toLocalFile())
    text = dlg.browser.toPlainText()
    assert "First steps: the sample town" in text and "Load sample town" in text and "-wal" in text
    close = dlg.findChild(QDialogButtonBox).button(QDialogButtonBox.Close)
    click(close, "help")
    assert not dlg.isVisible()


def test_long_run_is_asked_first_then_run_and_cancelled_with_the_same_button(panel, settings):
    load_sample_by_click(panel)
    panel.settings.confirm_seconds = 0.1          # the sample's few tiles count as a long run here
    panel.resolution.setValue(0.4)
    answer = Answer(QMessageBox, lambda box: press(box, QMessageBox.No, "long-run question"))
    click(panel.run_button, "panel")
    assert "tiles" in answer.check().text and panel.task is None
    assert panel.status.text().startswith("Not started (")
    answer = Answer(QMessageBox, lambda box: press(box, QMessageBox.Yes, "long-run question"))
    click(panel.run_button, "panel")
    answer.check()
    assert panel.task is not None and panel.run_button.text() == "Cancel"
    task = panel.task
    wait_for(lambda: task.progress() > 0, 60, "the run to start")
    click(panel.run_button, "panel")
    wait_for(lambda: panel.task is None, 60, "the cancel")
    assert task.cancelled and panel.status.text() == "Cancelled." and panel.run_button.text() == "Run"


def test_first_run_without_the_environment_offers_the_set_up_in_plain_words(panel, settings):
    from socioseg.plugin import environment as env
    load_sample_by_click(panel)
    panel.settings.python = "/usr/bin/python3"          # QGIS's Python: no rasterio, as on a new machine
    seen = {}

    def answer_no(box):
        seen["text"] = box.text()
        details = [b for b in box.buttons() if label(b).startswith("Show Details")]
        assert details, [label(b) for b in box.buttons()]
        click(details[0], "setup offer")
        seen["details"] = box.detailedText()
        press(box, QMessageBox.No, "setup offer")

    answer = Answer(QMessageBox, answer_no)
    click(panel.run_button, "panel")
    answer.check()
    assert panel.task is None
    assert env.LIGHT_SIZE in seen["text"] and "rasterio" not in seen["text"] and "/usr" not in seen["text"]
    assert "rasterio" in seen["details"] and "/usr/bin/python3" in seen["details"]

    # Yes starts the set-up in its window; its Cancel stops it, Close hides the window
    data = env.data_dir()
    shutil.rmtree(env.venv_dir(data), ignore_errors=True)
    answer = Answer(QMessageBox, lambda box: press(box, QMessageBox.Yes, "setup offer"))
    click(panel.run_button, "panel")
    answer.check()
    try:
        window = [w for w in QApplication.topLevelWidgets()
                  if w.isVisible() and w.windowTitle() == "SocioSeg: Set up Python environment"][-1]
        click(window.buttons.button(QDialogButtonBox.Cancel), "task window")
        wait_for(lambda: window.task.cancelled or window.task.error, 120, "the set-up to stop")
        wait_for(lambda: "Cancelled" in window.state.text() or "Failed" in window.state.text(), 30)
        assert "press Run" not in window.state.text()
        click(window.buttons.button(QDialogButtonBox.Close), "task window")
        assert not window.isVisible()
    finally:
        shutil.rmtree(env.venv_dir(data), ignore_errors=True)


def _settings_dialog(qgis_iface):
    from socioseg.plugin.settings_dialog import SettingsDialog
    d = SettingsDialog(qgis_iface.mainWindow())
    d.show()
    return d


def test_settings_buttons(plugin_pkg, qgis_iface, settings, tmp_path):
    import subprocess

    from socioseg.plugin import environment as env
    d = _settings_dialog(qgis_iface)
    try:
        # Diagnostics: the backend's own report, also on the clipboard
        answer = Answer(QMessageBox, lambda box: press(box, QMessageBox.Ok, "settings diagnostics"))
        click([b for b in d.findChildren(QAbstractButton) if label(b) == "Diagnostics…"][0], "settings")
        assert "backend Python" in answer.check().text and "QGIS" in QApplication.clipboard().text()
        # Download, offline (the tests' HF_HUB_OFFLINE=1): said at once, naming it
        answer = Answer(QMessageBox, lambda box: box.accept())
        click(d.vlm_download, "settings")
        assert "offline" in answer.check().text.lower()
        d.segmenter.setText("sam2")
        d.refresh()
        answer = Answer(QMessageBox, lambda box: box.accept())
        click(d.seg_download, "settings")
        assert "offline" in answer.check().text.lower()
        # Test connection: nothing listens there; the answer is shown whole
        d.server_box.where.setCurrentIndex(1)
        d.server_box.url.setText("http://127.0.0.1:9/v1")
        click(d.server_box.test_button, "settings")
        result = d.server_box.result
        QTest.qWait(50)
        assert result.text().startswith("✘ ") and "URL" in result.text()
        assert result.height() >= result.heightForWidth(result.width()), "the answer is cut off"
        # Set up Python environment: its window; Cancel stops it; Close hides it
        click(d.setup_button, "settings")
        window = [w for w in QApplication.topLevelWidgets()
                  if w.isVisible() and w.windowTitle() == "SocioSeg: Set up Python environment"][-1]
        click(window.buttons.button(QDialogButtonBox.Cancel), "task window")
        wait_for(lambda: window.task.cancelled or window.task.error, 120, "the set-up to stop")
        click(window.buttons.button(QDialogButtonBox.Close), "task window")
        # Install model packages: asked with the measured size; a venv without pip fails in the window
        venv = env.venv_dir(d.data)
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
        env.mark_ready(venv, ["light"])
        d.refresh()
        answer = Answer(QMessageBox, lambda box: press(box, QMessageBox.No, "models question"))
        click(d.models_button, "settings")
        assert d.torch_plan.size in answer.check().text and "several GB" not in answer.text
        answer = Answer(QMessageBox, lambda box: press(box, QMessageBox.Yes, "models question"))
        click(d.models_button, "settings")
        answer.check()
        window = d._keep
        wait_for(lambda: window.task.error or window.task.cancelled, 120, "pip to fail")
        wait_for(lambda: window.state.text().startswith("Failed"), 30)
        # OK keeps what was typed and clicked
        greedy = d.greedy.isChecked()
        click(d.greedy, "settings")
        d.max_tiles.setValue(1234)
        click(d.findChild(QDialogButtonBox).button(QDialogButtonBox.Ok), "settings")
        from socioseg.plugin.settings import PluginSettings
        saved = PluginSettings.load()
        assert saved.max_tiles == 1234 and saved.greedy == (not greedy) and not d.isVisible()
    finally:
        shutil.rmtree(env.venv_dir(d.data), ignore_errors=True)
        d.close()


def test_plugin_menu_actions(plugin_pkg, qgis_iface, qgis_new_project, settings):
    plugin = plugin_pkg.classFactory(qgis_iface)
    plugin.initGui()
    try:
        actions = {label(a): a for a in plugin.actions}
        trigger(actions["Find entities…"], "menu")
        assert plugin.panel is not None and not plugin.panel.isHidden()    # the test main window is not shown
        from socioseg.plugin.settings_dialog import SettingsDialog
        answer = Answer(SettingsDialog,
                        lambda d: click(d.findChild(QDialogButtonBox).button(QDialogButtonBox.Cancel), "settings"))
        trigger(actions["Settings…"], "menu")
        answer.check()
        trigger(actions["Find entities…"], "menu")        # checked off: the panel hides
        assert plugin.panel.isHidden()
    finally:
        plugin.unload()


def test_processing_dialog_run_button(plugin_pkg, qgis_processing, qgis_new_project, qgis_iface, sample_dir,
                                      tmp_path, settings, monkeypatch):
    """The algorithm's dialog (Processing Toolbox > SocioSeg > Detect socially defined places), Run clicked."""
    import processing.gui.ParametersPanel as panel_module
    from qgis.core import QgsRasterLayer
    from qgis.gui import QgsBrowserGuiModel
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    # pytest-qgis's stand-in QGIS window answers browserModel() with a mock; the dialog needs a real one
    browser = QgsBrowserGuiModel()
    monkeypatch.setattr(panel_module.iface, "browserModel", lambda: browser)
    plugin = plugin_pkg.classFactory(qgis_iface)
    plugin.initProcessing()
    try:
        project = QgsProject.instance()
        project.setCrs(QgsCoordinateReferenceSystem("EPSG:32650"))
        sat = QgsRasterLayer(os.path.join(sample_dir, "satellite.tif"), "sat")
        maps = [QgsVectorLayer(os.path.join(sample_dir, "map.gpkg") + f"|layername={n}", n, "ogr")
                for n in ("areas", "roads", "pois")]
        project.addMapLayers([sat, *maps])
        alg = QgsApplication.processingRegistry().createAlgorithmById("socioseg:detect_entities")
        dlg = AlgorithmDialog(alg, False, qgis_iface.mainWindow())
        dlg.show()
        out = str(tmp_path / "schools.gpkg")
        # the dialog's defaults are the panel's (the satellite, the map layers of one source)
        params = dlg.createProcessingParameters()
        assert params["SATELLITE"] in (sat.id(), sat.source(), sat)
        dlg.setParameters({"SATELLITE": sat, "MAP": maps, "QUERY": "schools", "RESOLUTION": 2.0, "OUTPUT": out})
        run = dlg.buttonBox().button(QDialogButtonBox.Ok)
        click(run, "processing")
        wait_for(lambda: os.path.exists(out) and dlg.results(), 180, "the algorithm")
        got = QgsVectorLayer(out, "out", "ogr")
        assert sorted(f["name"] for f in got.getFeatures()) == SCHOOLS
        dlg.close()
    finally:
        plugin.unload()


def _all_controls(plugin_pkg, qgis_iface):
    """Every button and action the plugin shows, from the widgets themselves (QGIS's own composite
    widgets, such as the authentication selector, are QGIS's to test)."""
    from qgis.gui import QgsAuthConfigSelect
    from socioseg.plugin.panel import FindPanel, HelpDialog
    from socioseg.plugin.settings_dialog import SettingsDialog

    def buttons(widget, where):
        out = set()
        for b in widget.findChildren(QAbstractButton):
            parent, inside_qgis = b.parent(), False
            while parent is not None:
                inside_qgis = inside_qgis or isinstance(parent, QgsAuthConfigSelect)
                parent = parent.parent()
            if not inside_qgis and b.isVisibleTo(widget) and label(b):
                out.add(f"{where}:{label(b)}")
        return out

    found = set()
    panel = FindPanel(qgis_iface)
    found |= buttons(panel, "panel") | {"panel:Cancel"}        # Run reads Cancel while a run goes
    panel.disconnect_project()
    panel.deleteLater()
    d = SettingsDialog(qgis_iface.mainWindow())
    found |= buttons(d, "settings")
    d.deleteLater()
    h = HelpDialog()
    found |= buttons(h, "help")
    h.deleteLater()
    from socioseg.plugin.setup_dialog import TaskWindow, environment_task, setup_offer
    w = TaskWindow(environment_task("/nonexistent"))
    found |= buttons(w, "task window")
    w.deleteLater()
    box = setup_offer(None, "details")
    found |= {f"setup offer:{label(b)}" for b in box.buttons()}
    box.deleteLater()
    # built inline where they are asked (estimate.confirm_run, SettingsDialog.install_model_packages)
    found |= {"long-run question:Run", "long-run question:No", "models question:Yes", "models question:No"}
    plugin = plugin_pkg.classFactory(qgis_iface)
    plugin.initGui()
    found |= {f"menu:{label(a)}" for a in plugin.actions}
    plugin.unload()
    return found


def test_every_button_and_action_was_clicked(plugin_pkg, qgis_iface, qgis_new_project, request):
    if not CLICKED:
        pytest.skip("run the whole module: this test checks what the others clicked")
    controls = _all_controls(plugin_pkg, qgis_iface)
    assert {"panel:Export…", "panel:Run", "panel:Help", "menu:Settings…"} <= controls
    missing = sorted(controls - CLICKED)
    assert not missing, f"never clicked by a test: {missing}"

