"""The "Find entities" dock: layers, query, area, engine, resolution, Run / Cancel, Export."""
from __future__ import annotations

from qgis.core import (Qgis, QgsApplication, QgsCoordinateTransform, QgsMapLayerProxyModel, QgsProject,
                       QgsRectangle)
from qgis.gui import QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QStandardItemModel
from qgis.PyQt.QtWidgets import (QCheckBox, QComboBox, QDockWidget, QDoubleSpinBox, QFileDialog,
                                 QFormLayout, QHBoxLayout, QLabel, QMessageBox, QProgressBar,
                                 QPushButton, QVBoxLayout, QWidget)

from . import deps
from .settings import ENGINE_DEFAULT, ENGINE_VLM, PluginSettings
from .task import TAG, DetectParams, DetectTask

CLASS_PRESETS = ["schools", "parks", "hospitals", "universities", "kindergartens", "train stations",
                 "shopping malls", "parking lots", "soccer fields", "stadiums", "cemeteries", "zoos"]
FUNCTION_PRESETS = ["educational", "medical", "park & greenspace", "sport & cultural", "commercial service",
                    "administrative", "business office", "transportation stations", "industrial", "residential"]
TASKS = [("auto", None), ("class", "class"), ("function", "function"), ("name", "name")]
AREAS = ["Current map canvas extent", "Extent of a layer", "Rectangle drawn on the canvas"]


def vlm_unavailable_reason(settings: PluginSettings) -> str | None:
    """Why the vision-language engine cannot run in the backend's Python, or None."""
    from .worker_client import missing_in_worker, worker_python

    python = worker_python(settings.python)
    modules = {**deps.BASE_MODULES, **deps.VLM_MODULES}
    if settings.segmenter.startswith("sam:"):
        modules.update(deps.SAM_MODULES)
    missing = missing_in_worker(python, modules)
    if missing is None:
        return f"The backend's Python ({python}) cannot be started: set one in the plugin settings."
    if missing:
        return deps.explain_missing(missing, "The vision-language engine", python)
    return None


class FindPanel(QDockWidget):
    def __init__(self, iface, parent=None):
        super().__init__("Find entities (SocioSeg)", parent)
        self.setObjectName("SocioSegFindPanel")
        self.iface = iface
        self.task: DetectTask | None = None
        self.last_layer = None
        self.drawn_extent: QgsRectangle | None = None
        self._tool = None
        self._checked: dict[str, str | None] = {}
        self.settings = PluginSettings.load()
        body = QWidget()
        form = QFormLayout()
        self.sat_combo = QgsMapLayerComboBox()
        self.sat_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.map_combo = QgsMapLayerComboBox()
        self.map_combo.setFilters(QgsMapLayerProxyModel.RasterLayer | QgsMapLayerProxyModel.VectorLayer)
        self.query = QComboBox()
        self.query.setEditable(True)
        self.query.addItems(CLASS_PRESETS + FUNCTION_PRESETS)
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
        form.addRow("Map layer", self.map_combo)
        form.addRow("Find", self.query)
        form.addRow("Task level", self.task_combo)
        form.addRow("Area", self.area)
        form.addRow("", area_row)
        form.addRow("Engine", self.engine)
        form.addRow("Resolution", self.resolution)
        form.addRow("", self.replace)
        self.run_button = QPushButton("Run")
        self.export_button = QPushButton("Export…")
        self.export_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.export_button)
        box = QVBoxLayout()
        box.addLayout(form)
        box.addLayout(buttons)
        box.addWidget(self.progress)
        box.addWidget(self.status)
        box.addStretch(1)
        body.setLayout(box)
        self.setWidget(body)
        self.refresh_engines()
        self.area.currentIndexChanged.connect(self._area_changed)
        self._area_changed(0)
        self.run_button.clicked.connect(self.run_or_cancel)
        self.export_button.clicked.connect(self.export)
        self.draw_button.clicked.connect(self.start_drawing)

    # --- engines ----------------------------------------------------------------------------------
    def refresh_engines(self) -> None:
        from qgis.PyQt.QtGui import QStandardItem

        self.settings = PluginSettings.load()
        self.engine_model.clear()
        default = QStandardItem("Map reader + GrabCut (no weights)")
        default.setData(ENGINE_DEFAULT, Qt.UserRole)
        default.setToolTip("Reads the map's features or colours; a baseline, not the paper's method")
        vlm = QStandardItem(f"SocioReasoner ({self.settings.vlm_model}) + {self.settings.segmenter.split(':')[0].upper()}")
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

    def start_drawing(self) -> None:
        from qgis.gui import QgsMapToolExtent

        canvas = self.iface.mapCanvas()
        self._tool = QgsMapToolExtent(canvas)
        self._tool.extentChanged.connect(self._extent_drawn)
        canvas.setMapTool(self._tool)
        self.status.setText("Drag a rectangle on the map.")

    def _extent_drawn(self, extent: QgsRectangle) -> None:
        self.drawn_extent = QgsRectangle(extent)
        self.status.setText(f"Area: {extent.width():.0f} x {extent.height():.0f} map units")
        self.iface.mapCanvas().unsetMapTool(self._tool)

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
        return DetectParams(self.sat_combo.currentLayer(), self.map_combo.currentLayer(),
                            self.query.currentText().strip(), TASKS[self.task_combo.currentIndex()][1],
                            self.chosen_extent(), QgsProject.instance().crs(), self.resolution.value(),
                            reasoner, segmenter, s.device, s.max_new_tokens, s.tile_size, s.overlap,
                            s.max_tiles, s.python)

    def run_or_cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.status.setText("Cancelling…")
            return
        p = self.params()
        problem = self.worker_problem()
        if problem:
            QMessageBox.warning(self, "SocioSeg: the backend cannot run", problem)
            return
        problem = (not p.query and "Type what to find.") or (p.satellite_layer is None and "Choose a satellite layer.") \
            or (p.map_layer is None and "Choose a map layer.") or (p.extent is None and "Choose or draw an area.")
        if problem:
            self.status.setText(problem)
            return
        self.start(DetectTask(p, self._finished))

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
        self.task = task
        self.run_button.setText("Cancel")
        self.progress.setValue(0)
        self.status.setText(f"Finding {task.params.query}…")
        task.progressChanged.connect(lambda v: (self.progress.setValue(int(v)), self.status.setText(task.message)))
        if run_now:
            task.finished(task.run())
        else:
            QgsApplication.taskManager().addTask(task)

    def _finished(self, task: DetectTask) -> None:
        from .layers import add_to_project, detection_layer, layer_name

        self.task = None
        self.run_button.setText("Run")
        bar = self.iface.messageBar()
        if task.cancelled:
            self.status.setText("Cancelled.")
            bar.pushMessage(TAG, "Cancelled.", Qgis.Info, 3)
            return
        if task.error:
            self.status.setText(task.error)
            bar.pushMessage(TAG, task.error, Qgis.Warning, 10)
            return
        p = task.params
        layer = detection_layer(task.detection, layer_name(p.query, p.reasoner), p.crs, p.query)
        removed = add_to_project(layer, self.replace.isChecked())
        self.last_layer = layer
        self.export_button.setEnabled(True)
        self.progress.setValue(100)
        n = layer.featureCount()
        notes = {f["note"] for f in layer.getFeatures() if f["note"]}
        text = f"Found {n} place{'s' if n != 1 else ''} for '{p.query}'." + (f" {'; '.join(sorted(notes))}." if notes else "")
        if removed:
            text += f" Replaced: {', '.join(removed)}."
        self.status.setText(text)
        bar.pushMessage(TAG, text, Qgis.Success if n else Qgis.Info, 5)

    def export(self) -> None:
        from .layers import export_layer

        if self.last_layer is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export detected places", "",
                                              "GeoPackage (*.gpkg);;ESRI Shapefile (*.shp)")
        if not path:
            return
        if not path.lower().endswith((".gpkg", ".shp")):
            path += ".gpkg"
        try:
            export_layer(self.last_layer, path)
        except RuntimeError as exc:
            self.iface.messageBar().pushMessage(TAG, str(exc), Qgis.Warning, 10)
            return
        self.iface.messageBar().pushMessage(TAG, f"Exported to {path}", Qgis.Success, 5)
