"""Settings dialog: the backend's Python environment, the models (presence and Download), engines, device,
budget, resolution and tiles; Diagnostics."""
from __future__ import annotations

import os
import subprocess

from qgis.PyQt.QtWidgets import (QApplication, QCheckBox, QComboBox, QCompleter, QDialog, QDialogButtonBox,
                                 QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QMessageBox, QPushButton,
                                 QScrollArea, QSpinBox, QVBoxLayout, QWidget)

from . import environment as env
from . import models
from .settings import PluginSettings

SETUP_TEXT = "Set up Python environment"
MODELS_TEXT = "Install model packages"
SEGMENTER_CHOICES = ["grabcut", "sam2:facebook/sam2-hiera-large", "sam3:facebook/sam3"]
# The Outlines choice (values: contract.OUTLINES)
OUTLINE_CHOICES = (("From the map (map reader)", "map"), ("Cut from the satellite image (Segmenter)", "image"))


def diagnostics_text(python: str | None = None) -> str:
    """`python -m backend info` run by the backend's own Python (the one typed in the dialog, if any), plus
    what QGIS runs. A Python that lacks packages gets the message naming the button, not a traceback."""
    import sys

    from qgis.core import Qgis

    from .deps import explain_missing
    from .worker_client import worker_env, worker_python

    python = worker_python(PluginSettings.load().python if python is None else python)
    head = f"QGIS {Qgis.QGIS_VERSION}, QGIS Python {sys.version.split()[0]}\nbackend Python {python}\n"
    try:
        r = subprocess.run([python, "-m", "backend", "info"], cwd=env.PLUGIN_DIR, capture_output=True, text=True,
                           timeout=120, env=worker_env(python))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return head + f"The backend's Python cannot run ({exc}). Press {env.SETUP_BUTTON}, or correct " \
                      "Settings > Python for the backend."
    if r.returncode == 0:
        return head + r.stdout
    missing = env.probe(python, env.LIGHT_MODULES).get("missing")
    if missing:
        return head + explain_missing(missing, "The backend", python)
    return head + f"backend info failed ({r.returncode}): {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}"


class SettingsDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("SocioSeg settings")
        self.data = env.data_dir()
        s = PluginSettings.load()
        self.vlm = QLineEdit(s.vlm_model)
        self.vlm.setToolTip("Hugging Face id or local folder of the vision-language model")
        self.segmenter = QLineEdit(s.segmenter)
        self.segmenter.setToolTip("grabcut, sam2[:HF_ID_OR_DIR], sam3[:HF_ID_OR_DIR] (facebook/sam3 is gated: "
                                  "request access on its Hugging Face page and log in) or "
                                  "sam:MODEL_TYPE:CHECKPOINT")
        self.segmenter.setCompleter(QCompleter(SEGMENTER_CHOICES, self.segmenter))
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.device.setCurrentText(s.device)
        self.outline = QComboBox()
        for text, value in OUTLINE_CHOICES:
            self.outline.addItem(text, value)
        self.outline.setCurrentIndex(max(0, self.outline.findData(s.outline)))
        self.outline.setToolTip("With the map reader: take each place's outline from the map (exact on a vector "
                                "map), or let the Segmenter cut it from the satellite image (the released "
                                "procedure). The vision-language model gives no outline: it always uses the Segmenter.")
        self.tokens = QSpinBox()
        self.tokens.setRange(16, 8192)
        self.tokens.setValue(s.max_new_tokens)
        self.greedy = QCheckBox("Greedy decoding")
        self.greedy.setChecked(s.greedy)
        self.greedy.setToolTip("Off (default): sample as the released model was evaluated (temperature 1.0, "
                               "top_p 0.8, top_k 100). On: the same tile always gives the same answer.")
        self.seed = QSpinBox()
        self.seed.setRange(-1, 2**31 - 1)
        self.seed.setSpecialValueText("none")
        self.seed.setValue(s.seed)
        self.seed.setToolTip("A seed makes a sampled run repeatable")
        self.resolution = QDoubleSpinBox()
        self.resolution.setRange(0.05, 100.0)
        self.resolution.setValue(s.resolution)
        self.tile = QSpinBox()
        self.tile.setRange(128, 4096)
        self.tile.setValue(s.tile_size)
        self.max_tiles = QSpinBox()
        self.max_tiles.setRange(1, 1_000_000)
        self.max_tiles.setValue(s.max_tiles)
        self.max_tiles.setToolTip("Larger areas are refused before anything is rendered: raise it for a big area")
        self.results_folder = QLineEdit(s.results_folder)
        self.results_folder.setPlaceholderText("the project's folder")
        self.results_folder.setToolTip("Where the GeoPackage of results (socioseg_results.gpkg) is kept")
        self.python = QLineEdit(s.python)
        self.python.setPlaceholderText("automatic: the environment set up above, else QGIS's Python")
        self.python.setToolTip("The Python interpreter that runs the detection in its own process; leave it "
                               "empty to use the plugin's own environment")

        self.env_state = QLabel()
        self.env_state.setWordWrap(True)
        self.setup_button = QPushButton(SETUP_TEXT)
        self.setup_button.setToolTip(f"Makes a virtual environment in {env.venv_dir(self.data)} from QGIS's Python "
                                     "and installs the backend's packages (requirements-plugin.txt)")
        self.setup_button.clicked.connect(self.set_up_environment)
        self.torch_plan = env.torch_plan(gpu=env.nvidia_gpu())
        self.models_button = QPushButton(MODELS_TEXT)
        self.models_button.setToolTip("torch, torchvision, transformers and segment-anything for the "
                                      "vision-language engine: " + self.torch_plan.description)
        self.models_button.clicked.connect(self.install_model_packages)
        self.plan_label = QLabel(f"torch: {self.torch_plan.description}; {self.torch_plan.size}")
        self.plan_label.setWordWrap(True)
        env_box = QGroupBox("Python environment of the backend")
        env_form = QFormLayout(env_box)
        env_form.addRow("Status", self.env_state)
        env_row = QHBoxLayout()
        env_row.addWidget(self.setup_button)
        env_row.addWidget(self.models_button)
        env_form.addRow(env_row)
        env_form.addRow(self.plan_label)
        env_form.addRow("Python for the backend", self.python)

        self.vlm_state, self.seg_state = QLabel(), QLabel()
        for label in (self.vlm_state, self.seg_state):
            label.setWordWrap(True)
        self.vlm_download = QPushButton("Download")
        self.vlm_download.clicked.connect(lambda: self.download(self.vlm, "Vision-language model"))
        self.seg_download = QPushButton("Download")
        self.seg_download.clicked.connect(lambda: self.download(self.segmenter, "Segmenter"))
        model_box = QGroupBox(f"Models (downloads go to {models.models_dir(self.data)})")
        model_form = QFormLayout(model_box)
        model_form.addRow("Vision-language model", self.vlm)
        model_form.addRow(self._row(self.vlm_state, self.vlm_download))
        model_form.addRow("Segmenter", self.segmenter)
        model_form.addRow(self._row(self.seg_state, self.seg_download))
        self.vlm.editingFinished.connect(self.refresh)
        self.segmenter.editingFinished.connect(self.refresh)
        from .server_settings import ServerBox
        self.server_box = ServerBox(s, self.backend_python)

        form = QFormLayout()
        form.addRow("Device", self.device)
        form.addRow("Outlines", self.outline)
        form.addRow("Response budget (tokens)", self.tokens)
        form.addRow("Decoding", self.greedy)
        form.addRow("Sampling seed", self.seed)
        form.addRow("Default resolution (m/px)", self.resolution)
        form.addRow("Tile size (px)", self.tile)
        form.addRow("Max tiles", self.max_tiles)
        form.addRow("Results folder", self.results_folder)
        diag = QPushButton("Diagnostics…")
        diag.clicked.connect(self.show_diagnostics)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        body = QWidget()
        box = QVBoxLayout(body)
        box.addWidget(env_box)
        box.addWidget(model_box)
        box.addWidget(self.server_box)
        box.addLayout(form)
        box.addWidget(diag)
        # The settings are taller than a 1000-pixel screen: QGIS then squeezed the dialog to the screen and
        # the wrapped status lines lost their second line. They scroll instead; OK and Cancel stay in view.
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.NoFrame)
        scroll.setWidget(body)
        outer = QVBoxLayout(self)
        outer.addWidget(scroll)
        outer.addWidget(buttons)
        screen = QApplication.primaryScreen()
        if screen is not None:
            body.adjustSize()
            self.resize(max(body.sizeHint().width() + 40, 720),
                        min(body.sizeHint().height() + 80, int(screen.availableGeometry().height() * 0.9)))
        self.refresh()

    @staticmethod
    def _row(label, button):
        row = QHBoxLayout()
        row.addWidget(label, 1)
        row.addWidget(button)
        return row

    def backend_python(self) -> str:
        from .worker_client import worker_python

        return worker_python(self.python.text().strip())

    def refresh(self) -> None:
        st = env.status(env.venv_dir(self.data))
        self.env_state.setText(st.text)
        self.models_button.setEnabled(st.state == "ready")
        folder = models.models_dir(self.data)
        vlm = models.model_status(self.vlm.text().strip(), folder, "Vision-language model")
        seg = models.model_status(models.segmenter_model(self.segmenter.text())[1], folder, "Segmenter")
        for state, button, status in ((self.vlm_state, self.vlm_download, vlm), (self.seg_state, self.seg_download, seg)):
            state.setText(("✔ " if status.present else "✘ ") + status.text)
            button.setEnabled(status.downloadable and not status.present)

    # --- the environment ----------------------------------------------------------------------------
    def set_up_environment(self, run_now: bool = False):
        from .setup_dialog import run_environment_setup

        return run_environment_setup(self, self.refresh, run_now=run_now)

    def install_model_packages(self, run_now: bool = False):
        from .setup_dialog import TaskWindow, model_packages_task, start

        if not run_now and QMessageBox.question(
                self, "SocioSeg: install the model packages?",
                f"Install torch and torchvision — {self.torch_plan.description} — then transformers and "
                f"segment-anything into the plugin's environment: {self.torch_plan.size}. QGIS stays usable "
                "meanwhile.", QMessageBox.Yes | QMessageBox.No) != QMessageBox.Yes:
            return None
        window = None

        def done(task):
            window.done_with(task, "The model packages are installed. Download the models below.")
            self.refresh()

        task = model_packages_task(self.data, self.torch_plan, done)
        window = TaskWindow(task, self, f"Installing torch ({self.torch_plan.description}), transformers and "
                                        "segment-anything…")
        self._keep = window
        window.show()
        start(task, run_now)
        return task

    # --- the models ---------------------------------------------------------------------------------
    def download(self, field: QLineEdit, what: str, run_now: bool = False, confirm: bool = True):
        """Size first, then the download as a task; the field then names the downloaded folder."""
        from ..backend.contract import parse_line
        from .setup_dialog import CommandsTask, TaskWindow, start
        from .worker_client import worker_env

        spec = field.text().strip()
        ref = models.segmenter_model(spec)[1] if field is self.segmenter else spec
        python = self.backend_python()
        dest = models.folder_for(ref, models.models_dir(self.data))
        try:
            r = subprocess.run(models.download_command(python, ref, dest, size_only=True), cwd=env.PLUGIN_DIR,
                               capture_output=True, text=True, timeout=60, env=worker_env(python))
        except (OSError, subprocess.TimeoutExpired) as exc:
            QMessageBox.warning(self, "SocioSeg", f"The backend's Python cannot run ({exc}): press {SETUP_TEXT}.")
            return None
        lines = r.stdout.splitlines()
        size = models.parse_size(lines)
        if size is None:
            error = next((m.text for m in map(parse_line, lines) if m and m.kind == "ERROR"), None)
            if error is None and "No module named" in r.stderr:
                error = f"the backend's Python ({python}) lacks huggingface_hub: press {SETUP_TEXT} first."
            QMessageBox.warning(self, f"SocioSeg: cannot download the {what.lower()}", error or r.stderr[-500:])
            return None
        if confirm and QMessageBox.question(
                self, f"SocioSeg: download the {what.lower()}?",
                f"{ref}: {models.human_size(size[0])} in {size[1]} files, into {dest}. Download now? Cancel keeps "
                "what has arrived; pressing Download again resumes.", QMessageBox.Yes | QMessageBox.No) != QMessageBox.Yes:
            return None
        window = None

        def progress(text):
            m = parse_line(text)
            return m.fraction if m is not None and m.kind == "PROGRESS" else None

        def done(task):
            if not task.error and not task.cancelled:
                field.setText(dest if field is self.vlm else f"{models.segmenter_model(spec)[0]}:{dest}")
                s = PluginSettings.load()
                s.vlm_model, s.segmenter = self.vlm.text().strip(), self.segmenter.text().strip()
                s.save()
            window.done_with(task, f"Downloaded to {dest}; Settings now use that folder.")
            self.refresh()

        step = env.Step(f"Downloading {ref}", models.download_command(python, ref, dest))
        task = CommandsTask(f"Download {ref}", [step], None, os.path.join(self.data, "download.log"), done, progress)
        window = TaskWindow(task, self, f"Downloading {ref} ({models.human_size(size[0])}) into {dest}…")
        self._keep = window
        window.show()
        start(task, run_now)
        return task

    def accept(self) -> None:
        s = PluginSettings.load()
        s.vlm_model = self.vlm.text().strip() or s.vlm_model
        s.segmenter = self.segmenter.text().strip() or s.segmenter
        s.device = self.device.currentText()
        s.outline = self.outline.currentData()
        s.max_new_tokens = self.tokens.value()
        s.greedy = self.greedy.isChecked()
        s.seed = self.seed.value()
        s.resolution = self.resolution.value()
        s.tile_size = self.tile.value()
        s.max_tiles = self.max_tiles.value()
        s.results_folder = self.results_folder.text().strip()
        s.python = self.python.text().strip()
        self.server_box.store(s)
        s.save()
        super().accept()

    def show_diagnostics(self) -> None:
        text = diagnostics_text(self.python.text().strip())
        QApplication.clipboard().setText(text)
        QMessageBox.information(self, "SocioSeg diagnostics (copied to the clipboard)", text)
