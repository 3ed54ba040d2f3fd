"""The "Find entities" dock: layers, query, area, engine, resolution, Run / Cancel, Export, Zoom, Help,
Load sample town."""
from __future__ import annotations

import os

from qgis.core import (Qgis, QgsApplication, QgsCoordinateTransform, QgsMapLayer, QgsMapLayerProxyModel,
                       QgsMessageLog, QgsProject, QgsRectangle, QgsUnitTypes, QgsWkbTypes)
from qgis.gui import QgsCheckableComboBox, QgsMapLayerComboBox, QgsMessageBarItem
from qgis.PyQt.QtCore import Qt, QUrl
from qgis.PyQt.QtGui import QColor, QStandardItemModel
from qgis.PyQt.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDockWidget, QDoubleSpinBox,
                                 QFileDialog, QFormLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton,
                                 QTextBrowser, QVBoxLayout, QWidget)

from . import deps
from .layers import default_map_layers, default_satellite, is_result
from .settings import ENGINE_DEFAULT, ENGINE_VLM, VLM_SERVER, PluginSettings
from .task import TAG, DetectParams, DetectTask, crs_problem

CLASS_PRESETS = ["schools", "parks", "hospitals", "universities", "kindergartens", "train stations",
                 "shopping malls", "parking lots", "soccer fields", "stadiums", "cemeteries", "zoos"]
FUNCTION_PRESETS = ["educational", "medical", "park & greenspace", "sport & cultural", "commercial service",
                    "administrative", "business office", "transportation stations", "industrial", "residential"]
TASKS = [("auto", None), ("class", "class"), ("function", "function"), ("name", "name")]
AREAS = ["Current map canvas extent", "Extent of a layer", "Rectangle drawn on the canvas"]
HELP_PAGE = os.path.join(deps.PLUGIN_DIR, "resources", "help", "index.html")    # bundled: works offline
SCOPE = "SocioSeg"          # the project file's entries holding the panel's last choices
SAMPLE_LAYERS = ("areas", "roads", "pois")      # the layers of resources/sample/map.gpkg


def vlm_unavailable_reason(settings: PluginSettings) -> str | None:
    """Why the vision-language engine cannot run in the backend's Python, or None."""
    from .worker_client import missing_in_worker, worker_python

    server = settings.vlm_where == VLM_SERVER
    if server and not settings.server_url.strip():
        return "Type the model server's address under Plugins > SocioSeg > Settings > Model server > URL."
    python = worker_python(settings.python)
    modules = {**deps.BASE_MODULES, **deps.VLM_MODULES}
    if server:     # the model is remote; only a SAM segmenter needs torch here
        modules = {**deps.BASE_MODULES, "openai": "openai",
                   **(deps.VLM_MODULES if not settings.segmenter.startswith("grabcut") else {})}
    if settings.segmenter.startswith("sam:"):
        modules.update(deps.SAM_MODULES)
    missing = missing_in_worker(python, modules)
    if missing is None:
        return f"The backend's Python ({python}) cannot be started: set one in the plugin settings."
    if missing:
        return deps.explain_missing(missing, "The model-server engine" if server else "The vision-language engine",
                                    python)
    from .environment import data_dir
    from .models import missing_models_reason, models_dir

    return missing_models_reason("" if server else settings.vlm_model, settings.segmenter, models_dir(data_dir()))


class HelpDialog(QDialog):
    """The plugin's help from its bundled page, inside QGIS: no browser and no network needed. Links
    within the page stay here; only links to other sites go to the system's browser."""

    def __init__(self, parent=None, anchor: str = ""):
        super().__init__(parent)
        self.setObjectName("SocioSegHelp")
        self.setWindowTitle("SocioSeg help")
        self.resize(760, 640)
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(True)
        self.browser.setSearchPaths([os.path.dirname(HELP_PAGE)])
        url = QUrl.fromLocalFile(HELP_PAGE)
        if anchor:
            url.setFragment(anchor)
        self.browser.setSource(url)
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(self.close)
        box = QVBoxLayout(self)
        box.addWidget(self.browser)
        box.addWidget(buttons)


def why_nothing(query: str, task: str | None, warnings: list[str]) -> str:
    """Why a vector map gave no place for `query`, naming what the map lacks and the controls to change."""
    from ..backend.errors import InputError
    from ..backend.pipeline.query import resolve_query

    try:
        spec = resolve_query(query, task)
    except InputError:
        spec = None
    if spec is not None and spec.kind == "name":
        lacks = f"no feature of the checked Map layers has a name like '{query}'"
    elif spec is not None and spec.tags:
        tags = ", ".join(f"{k}={v}" for k, values in sorted(spec.tags.items()) for v in sorted(values))
        lacks = f"no feature of the checked Map layers in this Area is tagged {tags}"
    else:
        lacks = "; ".join(warnings)
    return (f"Nothing found for '{query}': {lacks}. Check the layer that holds them under Map layers, "
            "widen the Area, or choose the SocioReasoner Engine, which reads the images.")


def raster_answerable(presets: list[str]) -> list[str]:
    """The presets whose classes the default raster legend (OSM Carto colours) has a colour for: the
    only ones the map reader can answer on a raster map."""
    from ..backend.errors import InputError
    from ..backend.pipeline.query import resolve_query
    from ..backend.resources import load_json, resource

    legend = {c for classes in load_json(resource("legends", "osm_carto.json"))["colours"].values() for c in classes}
    out = []
    for p in presets:
        try:
            spec = resolve_query(p)
        except InputError:
            continue
        if spec.kind != "name" and set(spec.classes) & legend:
            out.append(p)
    return out


def area_size(extent: QgsRectangle, crs) -> str:
    """The drawn rectangle's size in metres (or degrees, in a geographic CRS)."""
    if crs.isGeographic():
        return f"{extent.width():.4f}° x {extent.height():.4f}° (longitude x latitude)"
    factor = QgsUnitTypes.fromUnitToUnitFactor(crs.mapUnits(), QgsUnitTypes.DistanceMeters)
    w, h = extent.width() * factor, extent.height() * factor
    if max(w, h) >= 10_000:
        return f"{w / 1000:.1f} km x {h / 1000:.1f} km"
    return f"{w:.0f} m x {h:.0f} m"


class FindPanel(QDockWidget):
    def __init__(self, iface, parent=None):
        super().__init__("Find entities (SocioSeg)", parent)
        self.setObjectName("SocioSegFindPanel")
        self.iface = iface
        self.task: DetectTask | None = None
        self.last_layer = None
        self.drawn_extent: QgsRectangle | None = None
        self._tool = None
        self._band = None
        self._bar_items: list = []
        self._checked: dict[str, str | None] = {}
        self.settings = PluginSettings.load()
        body = QWidget()
        form = QFormLayout()
        self.sat_combo = QgsMapLayerComboBox()
        self.sat_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.sat_combo.setAllowEmptyLayer(True)
        self.map_combo = QgsCheckableComboBox()
        self.map_combo.setToolTip("One or more layers read together as the map: every layer of an "
                                  "OpenStreetMap extract (areas, points, lines), or a rendered map")
        self.query = QComboBox()
        self.query.setEditable(True)
        self.query.setToolTip("A class (schools), a function (educational) or a place name (Jinan Zoo)")
        self.task_combo = QComboBox()
        for label, _ in TASKS:
            self.task_combo.addItem(label)
        self.area = QComboBox()
        self.area.addItems(AREAS)
        self.area_layer = QgsMapLayerComboBox()
        self.draw_button = QPushButton("Draw…")
        area_row = QHBoxLayout()
        area_row.addWidget(self.area_layer)
        area_row.addWidget(self.draw_button)
        self.engine = QComboBox()
        self.engine_model = QStandardItemModel()
        self.engine.setModel(self.engine_model)
        self.resolution = QDoubleSpinBox()
        self.resolution.setRange(0.05, 100.0)
        self.resolution.setDecimals(2)
        self.resolution.setSuffix(" m/px")
        self.resolution.setValue(self.settings.resolution)
        self.replace = QCheckBox("Replace the previous result of the same query")
        self.replace.setChecked(self.settings.replace_previous)
        form.addRow("Satellite layer", self.sat_combo)
        form.addRow("Map layers", self.map_combo)
        form.addRow("Find", self.query)
        form.addRow("Task level", self.task_combo)
        form.addRow("Area", self.area)
        form.addRow("", area_row)
        form.addRow("Engine", self.engine)
        form.addRow("Resolution", self.resolution)
        form.addRow("", self.replace)
        self.run_button = QPushButton("Run")
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Write the selected result layer to a GeoPackage or a Shapefile, with its style")
        self.zoom_button = QPushButton("Zoom to result")
        self.help_button = QPushButton("Help")
        self.help_button.setToolTip("The plugin's help, inside QGIS (works offline)")
        self.sample_button = QPushButton("Load sample town")
        self.sample_button.setToolTip("Add the bundled sample town (a satellite image and an OpenStreetMap-style "
                                      "map with schools, parks and a hospital) and choose it in this panel")
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        for b in (self.run_button, self.export_button, self.zoom_button):
            buttons.addWidget(b)
        more = QHBoxLayout()
        for b in (self.sample_button, self.help_button):
            more.addWidget(b)
        box = QVBoxLayout()
        box.addLayout(form)
        box.addLayout(buttons)
        box.addLayout(more)
        box.addWidget(self.progress)
        box.addWidget(self.status)
        box.addStretch(1)
        body.setLayout(box)
        self.setWidget(body)
        # The satellite and the checked maps follow the project's layers until the user chooses them.
        self._sat_auto = True
        self._maps_auto = True
        self._problem: str | None = None      # the input problem the status line shows, cleared when fixed
        self.help_dialog: HelpDialog | None = None
        self.refresh_engines()
        self.refresh_layers()
        self.restore_choices()
        self.area.currentIndexChanged.connect(self._area_changed)
        self._area_changed(self.area.currentIndex())
        # clicked(bool) would arrive as an argument: every button calls its method without it
        self.run_button.clicked.connect(lambda _=False: self.run_or_cancel())
        self.export_button.clicked.connect(lambda _=False: self.export())
        self.zoom_button.clicked.connect(lambda _=False: self.zoom_to_result())
        self.help_button.clicked.connect(lambda _=False: self.show_help())
        self.sample_button.clicked.connect(lambda _=False: self.load_sample())
        self.draw_button.clicked.connect(lambda _=False: self.start_drawing())
        self.sat_combo.layerChanged.connect(self._satellite_chosen)
        self.map_combo.checkedItemsChanged.connect(self._maps_chosen)
        self.engine.currentIndexChanged.connect(lambda _: self.refresh_presets())
        self.query.editTextChanged.connect(lambda _: self._recheck_problem())
        self.area.currentIndexChanged.connect(lambda _: self._recheck_problem())
        self.area_layer.layerChanged.connect(lambda _: self._recheck_problem())
        project = QgsProject.instance()
        # layersAdded comes before QGIS puts the layer into the layer tree (the map list is built from the
        # tree); the tree's layerOrderChanged comes once it is there.
        project.layerTreeRoot().layerOrderChanged.connect(self._layers_changed)
        project.layersRemoved.connect(self._layers_changed)
        project.readProject.connect(self._project_read)
        project.cleared.connect(self._project_cleared)
        self._update_result_buttons()

    # --- layers and presets -------------------------------------------------------------------------
    def _layers_changed(self, *_):
        if self._sat_auto:
            self._set_satellite(default_satellite(QgsProject.instance()))
        self.refresh_layers([] if self._maps_auto else None)
        self._update_result_buttons()
        self._recheck_problem()

    def _set_satellite(self, layer) -> None:
        """Choose the satellite for the user (not a choice of theirs: it still follows the layers)."""
        if layer is self.sat_combo.currentLayer():
            return
        self.sat_combo.blockSignals(True)
        self.sat_combo.setLayer(layer)
        self.sat_combo.blockSignals(False)

    def _satellite_chosen(self, layer) -> None:
        self._sat_auto = layer is None
        self.refresh_layers([] if self._maps_auto else None)
        self._recheck_problem()

    def _maps_chosen(self, *_):
        self._maps_auto = False
        self.refresh_presets()
        self._recheck_problem()

    def refresh_layers(self, checked_ids: list[str] | None = None) -> None:
        """Fill the map list (raster and vector layers, no results, not the satellite), keeping what was
        checked; with nothing checked, check the default map layers."""
        project = QgsProject.instance()
        self.sat_combo.setExceptedLayerList([l for l in project.mapLayers().values() if is_result(l)])
        sat = self.sat_combo.currentLayer()
        sat_id = sat.id() if sat is not None else None
        if checked_ids is None:
            checked_ids = [self.map_combo.itemData(i) for i in range(self.map_combo.count())
                           if self.map_combo.itemCheckState(i) == Qt.Checked]
        candidates = [l for l in project.layerTreeRoot().layerOrder()
                      if l.type() in (QgsMapLayer.VectorLayer, QgsMapLayer.RasterLayer)
                      and not is_result(l) and l.id() != sat_id]
        ids = {l.id() for l in candidates}
        checked = [i for i in checked_ids if i in ids] or [l.id() for l in default_map_layers(project, sat_id)]
        self.map_combo.blockSignals(True)
        self.map_combo.clear()
        for l in candidates:
            self.map_combo.addItemWithCheckState(l.name(), Qt.Checked if l.id() in checked else Qt.Unchecked, l.id())
        self.map_combo.blockSignals(False)
        self.map_combo.repaint()      # its text lists the checked items; blocked signals kept it stale
        self.refresh_presets()

    def map_layers(self) -> list:
        project = QgsProject.instance()
        return [project.mapLayer(self.map_combo.itemData(i)) for i in range(self.map_combo.count())
                if self.map_combo.itemCheckState(i) == Qt.Checked and project.mapLayer(self.map_combo.itemData(i))]

    def refresh_presets(self) -> None:
        """Offer only the presets the chosen map and engine can answer: the map reader on a raster map
        answers only what the default legend has a colour for."""
        text = self.query.currentText()
        presets = CLASS_PRESETS + FUNCTION_PRESETS
        layers = self.map_layers()
        raster_only = layers and all(l.type() == QgsMapLayer.RasterLayer for l in layers)
        if raster_only and self.engine_choice() == ENGINE_DEFAULT:
            presets = raster_answerable(presets)
            self.query.setToolTip("On a raster map the map reader finds what the OSM Carto legend has a colour "
                                  "for; add a vector Map layer (e.g. an OpenStreetMap extract) for names and "
                                  "the other classes, or choose the SocioReasoner Engine")
        else:
            self.query.setToolTip("A class (schools), a function (educational) or a place name (Jinan Zoo)")
        self.query.blockSignals(True)
        self.query.clear()
        self.query.addItems(presets)
        self.query.setEditText(text or presets[0])
        self.query.blockSignals(False)

    # --- remembered choices (in the project file) ---------------------------------------------------
    def save_choices(self) -> None:
        project = QgsProject.instance()
        sat = self.sat_combo.currentLayer()
        values = {"satellite": sat.id() if sat else "", "maps": ";".join(l.id() for l in self.map_layers()),
                  "query": self.query.currentText(), "task": self.task_combo.currentIndex(),
                  "area": self.area.currentIndex(), "engine": self.engine.currentIndex(),
                  "resolution": self.resolution.value()}
        for key, value in values.items():
            project.writeEntry(SCOPE, key, str(value))

    def restore_choices(self) -> None:
        project = QgsProject.instance()

        def entry(key):
            value, ok = project.readEntry(SCOPE, key, "")
            return value if ok and value != "" else None

        sat = project.mapLayer(entry("satellite") or "")
        saved = sat is not None and not is_result(sat) and sat.type() == QgsMapLayer.RasterLayer
        self._set_satellite(sat if saved else default_satellite(project))
        self._sat_auto = not saved
        self._maps_auto = not entry("maps")
        self.refresh_layers((entry("maps") or "").split(";") if entry("maps") else [])
        if entry("query"):
            self.query.setEditText(entry("query"))
        for combo, key in ((self.task_combo, "task"), (self.area, "area"), (self.engine, "engine")):
            if entry(key) and entry(key).isdigit() and int(entry(key)) < combo.count():
                combo.setCurrentIndex(int(entry(key)))
        if entry("resolution"):
            try:
                self.resolution.setValue(float(entry("resolution")))
            except ValueError:
                pass

    def _project_read(self, *_):
        self.restore_choices()
        self._update_result_buttons()

    def _project_cleared(self) -> None:
        """Project > New (and closing before opening another): nothing of the old project stays shown."""
        if self.task is not None:
            self.task.cancel()
        self.last_layer = None
        self.drawn_extent = None
        self._sat_auto = self._maps_auto = True
        self._problem = None
        self._clear_messages()
        if self.task is None:
            self._reset("")
        self._show_drawn(False)
        self._update_result_buttons()

    # --- engines ----------------------------------------------------------------------------------
    def refresh_engines(self) -> None:
        from qgis.PyQt.QtGui import QStandardItem

        self.settings = PluginSettings.load()
        self.engine_model.clear()
        default = QStandardItem("Map reader + GrabCut (no weights)")
        default.setData(ENGINE_DEFAULT, Qt.UserRole)
        default.setToolTip("Reads the map's features or colours; a baseline, not the paper's method")
        where = (f"on {self.settings.server_url.strip() or 'a model server'}" if self.settings.vlm_where == VLM_SERVER
                 else f"({self.settings.vlm_model})")
        vlm = QStandardItem(f"SocioReasoner {where} + {self.settings.segmenter.split(':')[0].upper()}")
        vlm.setData(ENGINE_VLM, Qt.UserRole)
        reason = vlm_unavailable_reason(self.settings)
        if reason:
            vlm.setEnabled(False)
            vlm.setText(vlm.text() + " — unavailable")
            vlm.setToolTip(reason)
        else:
            vlm.setToolTip("The paper's two-stage model; a GPU is strongly recommended")
        self.engine_model.appendRow(default)
        self.engine_model.appendRow(vlm)
        self.engine.setCurrentIndex(0)

    def engine_choice(self) -> str:
        return self.engine.currentData(Qt.UserRole) or ENGINE_DEFAULT

    # --- area ---------------------------------------------------------------------------------------
    def _area_changed(self, index: int) -> None:
        self.area_layer.setEnabled(index == 1)
        self.draw_button.setEnabled(index == 2)
        self._show_drawn(index == 2)

    def start_drawing(self) -> None:
        from qgis.gui import QgsMapToolExtent

        canvas = self.iface.mapCanvas()
        self._tool = QgsMapToolExtent(canvas)
        self._tool.extentChanged.connect(self._extent_drawn)
        canvas.setMapTool(self._tool)
        self.status.setText("Drag a rectangle on the map.")

    def _extent_drawn(self, extent: QgsRectangle) -> None:
        self.drawn_extent = QgsRectangle(extent)
        self.status.setText(f"Area: {area_size(extent, self.iface.mapCanvas().mapSettings().destinationCrs())}")
        self.iface.mapCanvas().unsetMapTool(self._tool)
        self._show_drawn(True)
        self._recheck_problem()

    def _show_drawn(self, visible: bool) -> None:
        """Keep the drawn rectangle on the canvas while it is the chosen area."""
        from qgis.core import QgsGeometry
        from qgis.gui import QgsRubberBand

        canvas = self.iface.mapCanvas()
        if self._band is None:
            self._band = QgsRubberBand(canvas, QgsWkbTypes.PolygonGeometry)
            self._band.setStrokeColor(QColor(230, 0, 150))
            self._band.setFillColor(QColor(230, 0, 150, 25))
            self._band.setWidth(2)
        self._band.reset(QgsWkbTypes.PolygonGeometry)
        if visible and self.drawn_extent is not None:
            self._band.setToGeometry(QgsGeometry.fromRect(self.drawn_extent), None)

    def chosen_extent(self) -> QgsRectangle | None:
        crs = QgsProject.instance().crs()
        idx = self.area.currentIndex()
        if idx == 0:
            return QgsRectangle(self.iface.mapCanvas().extent())
        if idx == 1:
            layer = self.area_layer.currentLayer()
            if layer is None:
                return None
            tr = QgsCoordinateTransform(layer.crs(), crs, QgsProject.instance())
            return tr.transformBoundingBox(layer.extent())
        return self.drawn_extent

    # --- run ----------------------------------------------------------------------------------------
    def params(self) -> DetectParams:
        s = self.settings
        reasoner, segmenter = s.engine_specs(self.engine_choice())
        return DetectParams(self.sat_combo.currentLayer(), self.map_layers(), self.query.currentText().strip(),
                            TASKS[self.task_combo.currentIndex()][1], self.chosen_extent(),
                            QgsProject.instance().crs(), self.resolution.value(), reasoner, segmenter, s.device,
                            s.generation(), s.tile_plan(), s.python, s.server_options(), s.server_authcfg,
                            outline=s.outline)

    def input_problem(self, p: DetectParams, ask_key: bool = True) -> str | None:
        """What to choose before a run can start, naming the control. `ask_key`: read the model server's
        API key too (QGIS may ask for the master password), only when Run is pressed."""
        if not p.query:
            return "Type what to find in 'Find'."
        if p.satellite_layer is None:
            return "Choose a Satellite layer."
        if not p.map_layers:
            return "Check one or more Map layers."
        if any(m.id() == p.satellite_layer.id() for m in p.map_layers):
            return "The Satellite layer is also checked as a Map layer: uncheck it under Map layers."
        if p.extent is None:
            return "Choose an Area: a layer under 'Extent of a layer', or draw a rectangle."
        problem = crs_problem(p.satellite_layer, p.map_layers)
        if problem:
            return problem
        if ask_key and p.reasoner.startswith("openai:") and p.server_authcfg:
            from ..backend.errors import InputError
            from .server_settings import key_env
            try:      # here, on the main thread, where QGIS can ask for the master password
                key_env(p.server_authcfg)
            except InputError as exc:
                return f"{exc}."
        return None

    def run_or_cancel(self, offer: bool = True) -> None:
        """Run (or Cancel while running). `offer`: offer the set-up when the backend's Python lacks
        packages; after a set-up the run is pressed again without it, so a set-up that did not help says
        so instead of asking again."""
        if self.task is not None:
            self.task.cancel()
            self.status.setText("Cancelling…")
            return
        p = self.params()
        problem = self.input_problem(p)
        if problem:
            self._problem = problem
            self.status.setText(problem)
            return
        problem = self.worker_problem()
        if problem and offer:
            from .setup_dialog import offer_setup   # set the environment up now, then run

            def after_setup():
                self._checked.clear()
                self.run_or_cancel(offer=False)

            offer_setup(self, problem, on_ready=after_setup)
            return
        if problem:
            self.status.setText(problem)
            return
        if not self.confirmed(p):
            return
        self.save_choices()
        self.start(DetectTask(p, self._finished))

    def confirmed(self, p: DetectParams) -> bool:
        """The tile count within Settings > Max tiles, and a long run confirmed (plugin/estimate.py)."""
        from ..backend.errors import InputError
        from .estimate import confirm_run, planned_tiles
        from .task import plugin_wording

        try:
            n = planned_tiles(p)
        except InputError as exc:
            self.status.setText(plugin_wording(str(exc)))
            return False
        if confirm_run(self, n, p.reasoner, self.settings):
            return True
        self.status.setText(f"Not started ({n} tiles): choose a smaller Area or a coarser Resolution, or press Run "
                            "again.")
        return False

    def _recheck_problem(self) -> None:
        """An input problem shown in the status line goes (or becomes the next one) once it is fixed."""
        if self._problem is None or self.task is not None or self.status.text() != self._problem:
            self._problem = None
            return
        self._problem = self.input_problem(self.params(), ask_key=False)
        self.status.setText(self._problem or "")

    def worker_problem(self) -> str | None:
        """Why the backend worker cannot run (checked once per interpreter), or None."""
        from .worker_client import missing_in_worker, worker_python

        python = worker_python(self.settings.python)
        if python not in self._checked:
            missing = missing_in_worker(python)
            if missing is None:
                self._checked[python] = (f"The backend's Python ({python}) cannot be started. Set a Python 3 "
                                         "interpreter under Plugins > SocioSeg > Settings.")
            elif missing:
                self._checked[python] = deps.explain_missing(missing, "SocioSeg", python)
            else:
                self._checked[python] = None
        return self._checked[python]

    def start(self, task: DetectTask, run_now: bool = False) -> None:
        """Start `task` in QGIS's task manager (or synchronously, for tests and scripts)."""
        self._clear_messages()
        self.task = task
        self.run_button.setText("Cancel")
        self.progress.setValue(0)
        self.status.setText(f"Finding {task.params.query}…")
        task.progressChanged.connect(lambda v: (self.progress.setValue(int(v)), self.status.setText(task.message)))
        if run_now:
            task.finished(task.run())
        else:
            QgsApplication.taskManager().addTask(task)

    def _message(self, text: str, level, duration: int) -> None:
        item = QgsMessageBarItem(TAG, text, level, duration)
        self._bar_items.append(item)
        self.iface.messageBar().pushItem(item)

    def _clear_messages(self) -> None:
        """Earlier runs' messages go when a new run starts: none comes back stale after it."""
        bar = self.iface.messageBar()
        for item in self._bar_items:
            try:
                bar.popWidget(item)
            except RuntimeError:      # already closed by the user or timed out
                pass
        self._bar_items = []

    def _reset(self, text: str) -> None:
        self.task = None
        self.run_button.setText("Run")
        self.progress.setValue(0)
        self.status.setText(text)

    def _finished(self, task: DetectTask) -> None:
        from ..backend.errors import InputError
        from .layers import add_to_project, result_layer, results_path

        if task.cancelled:
            self._reset("Cancelled.")
            self._message("Cancelled.", Qgis.Info, 3)
            return
        if task.error:
            self._reset(task.error)
            self._message(task.error, Qgis.Warning, 0)
            return
        p, result = task.params, task.result
        for warning in task.warnings:
            QgsMessageLog.logMessage(f"{p.query}: {warning}", TAG, Qgis.Warning)
        if not result.entities and task.warnings:
            # Nothing found, and the backend said why: no empty layer, the reason instead.
            text = why_nothing(p.query, p.task, task.warnings)
            self._reset(text)
            self._message(text, Qgis.Warning, 0)
            return
        from .layers import map_key, read_from
        try:
            layer = result_layer(result, p.query, p.reasoner, p.crs, results_path(self.settings.results_folder),
                                 read_from(p.map_layers), map_key(p.map_layers))
        except InputError as exc:
            self._reset(str(exc))
            self._message(str(exc), Qgis.Warning, 0)
            return
        removed = add_to_project(layer, self.replace.isChecked())
        self.last_layer = layer
        self._reset("")
        self.progress.setValue(100)
        n = layer.featureCount()
        notes = {f["note"] for f in layer.getFeatures() if f["note"]}
        text = f"Found {n} place{'s' if n != 1 else ''} for '{p.query}'" + (
            f" (read as a {result.task})" if result.task and not p.task else "") + "."
        if notes:
            text += f" {'; '.join(sorted(notes))}."
        if removed:
            text += f" Replaced in the Layers panel: {', '.join(removed)}."
        self.status.setText(text)
        self._message(text, Qgis.Success if n else Qgis.Info, 5)
        self._update_result_buttons()

    # --- results --------------------------------------------------------------------------------------
    def selected_result(self):
        """The result layer selected in the Layers panel, else the last result of this session."""
        active = self.iface.activeLayer() if hasattr(self.iface, "activeLayer") else None
        if is_result(active):
            return active
        if self.last_layer is not None:
            try:
                if QgsProject.instance().mapLayer(self.last_layer.id()) is not None:
                    return self.last_layer
            except RuntimeError:      # the layer was deleted
                pass
        return None

    def _update_result_buttons(self) -> None:
        has = self.selected_result() is not None or any(is_result(l) for l in QgsProject.instance().mapLayers().values())
        self.export_button.setEnabled(has)
        self.zoom_button.setEnabled(has)

    def ask_export_path(self, layer) -> tuple[str, str]:
        """(file, chosen format filter) from QGIS's save dialog; ('', '') when cancelled."""
        from .layers import FORMATS, suggested_file_name

        start = os.path.join(QgsProject.instance().absolutePath() or os.path.expanduser("~"),
                             suggested_file_name(layer))
        return QFileDialog.getSaveFileName(self, f"Export '{layer.name()}'", start, ";;".join(FORMATS))

    def export(self, path: str | None = None, chosen_filter: str = "") -> str | None:
        """Export the selected result; without `path`, ask for it (the Export… button)."""
        from .layers import export_layer

        layer = self.selected_result()
        if layer is None:
            self.status.setText("Select a result layer in the Layers panel to export it.")
            return None
        if path is None:
            path, chosen_filter = self.ask_export_path(layer)
            if not path:
                return None
        try:
            out = export_layer(layer, path, chosen_filter)
        except OSError as exc:
            self._message(f"{exc}. Choose another file or folder.", Qgis.Warning, 0)
            return None
        text = f"Exported '{layer.name()}' to {out}"
        self.status.setText(text + ".")
        self._message(text, Qgis.Success, 5)
        return out

    def zoom_to_result(self) -> None:
        layer = self.selected_result()
        if layer is None:
            return
        canvas = self.iface.mapCanvas()
        tr = QgsCoordinateTransform(layer.crs(), canvas.mapSettings().destinationCrs(), QgsProject.instance())
        extent = tr.transformBoundingBox(layer.extent())
        extent.scale(1.1)
        canvas.setExtent(extent)
        canvas.refresh()

    def show_help(self, anchor: str = "") -> HelpDialog:
        if self.help_dialog is None:
            self.help_dialog = HelpDialog(self.iface.mainWindow(), anchor)
        elif anchor:
            url = QUrl.fromLocalFile(HELP_PAGE)
            url.setFragment(anchor)
            self.help_dialog.browser.setSource(url)
        self.help_dialog.show()
        self.help_dialog.raise_()
        return self.help_dialog

    def load_sample(self) -> list:
        """Add the bundled sample town (satellite + the three layers of its map) and choose it here."""
        from qgis.core import QgsCoordinateReferenceSystem, QgsRasterLayer, QgsVectorLayer

        from ..backend.resources import SAMPLE_DIR

        project = QgsProject.instance()
        sat = QgsRasterLayer(os.path.join(SAMPLE_DIR, "satellite.tif"), "Sample town satellite")
        maps = [QgsVectorLayer(f"{os.path.join(SAMPLE_DIR, 'map.gpkg')}|layername={n}", f"Sample town map {n}",
                               "ogr") for n in SAMPLE_LAYERS]
        bad = [l.name() for l in (sat, *maps) if not l.isValid()]
        if bad:
            self.status.setText(f"The sample town cannot be read ({', '.join(bad)}): reinstall the plugin.")
            return []
        if not project.mapLayers():
            project.setCrs(QgsCoordinateReferenceSystem(sat.crs()))
        project.addMapLayer(sat)          # each new layer goes on top: the imagery lies under the map
        for layer in maps:
            project.addMapLayer(layer)
        self._set_satellite(sat)
        self._sat_auto = False
        self.refresh_layers([l.id() for l in maps])
        self._maps_auto = False
        self.query.setEditText("schools")
        self.area.setCurrentIndex(0)
        canvas = self.iface.mapCanvas()
        tr = QgsCoordinateTransform(sat.crs(), canvas.mapSettings().destinationCrs(), project)
        canvas.setExtent(tr.transformBoundingBox(sat.extent()))
        canvas.refresh()
        self._problem = None
        self.status.setText("The sample town is loaded: press Run to find its schools (or type another query: "
                            "parks, hospitals, Lotus Park).")
        return [sat, *maps]

    def disconnect_project(self) -> None:
        project = QgsProject.instance()
        for signal, slot in ((project.layerTreeRoot().layerOrderChanged, self._layers_changed),
                             (project.layersRemoved, self._layers_changed),
                             (project.readProject, self._project_read), (project.cleared, self._project_cleared)):
            try:
                signal.disconnect(slot)
            except (TypeError, RuntimeError):
                pass
        self._show_drawn(False)
        if self.help_dialog is not None:
            self.help_dialog.close()

    def closeEvent(self, event):  # noqa: N802 (Qt's name)
        self._show_drawn(False)
        super().closeEvent(event)
