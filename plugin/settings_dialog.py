"""Settings dialog: VLM, segmenter, device, budget, resolution and tiles; Diagnostics."""
from __future__ import annotations

from qgis.PyQt.QtWidgets import (QApplication, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox,
                                 QFormLayout, QLineEdit, QMessageBox, QPushButton, QSpinBox, QVBoxLayout)

from .settings import PluginSettings


def diagnostics_text() -> str:
    """`python -m backend info` run by the backend's own Python, plus what QGIS runs."""
    import subprocess
    import sys

    from qgis.core import Qgis

    from .deps import PLUGIN_DIR
    from .worker_client import worker_env, worker_python

    python = worker_python(PluginSettings.load().python)
    head = f"QGIS {Qgis.QGIS_VERSION}, QGIS Python {sys.version.split()[0]}\nbackend Python {python}\n"
    try:
        r = subprocess.run([python, "-m", "backend", "info"], cwd=PLUGIN_DIR, capture_output=True, text=True,
                           timeout=120, env=worker_env(python))
        return head + (r.stdout if r.returncode == 0 else f"backend info failed ({r.returncode}): {r.stderr[-1500:]}")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return head + f"backend info could not run: {exc}"


class SettingsDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("SocioSeg settings")
        s = PluginSettings.load()
        self.vlm = QLineEdit(s.vlm_model)
        self.vlm.setToolTip("Hugging Face id or local folder of the vision-language model")
        self.segmenter = QLineEdit(s.segmenter)
        self.segmenter.setToolTip("sam2[:HF_ID_OR_DIR] or sam:MODEL_TYPE:CHECKPOINT")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.device.setCurrentText(s.device)
        self.tokens = QSpinBox()
        self.tokens.setRange(16, 8192)
        self.tokens.setValue(s.max_new_tokens)
        self.resolution = QDoubleSpinBox()
        self.resolution.setRange(0.05, 100.0)
        self.resolution.setValue(s.resolution)
        self.tile = QSpinBox()
        self.tile.setRange(128, 4096)
        self.tile.setValue(s.tile_size)
        self.python = QLineEdit(s.python)
        self.python.setPlaceholderText("automatic: the plugin's .venv, else QGIS's Python")
        self.python.setToolTip("The Python interpreter that runs the detection (it needs the packages "
                               "of requirements.txt); detection runs in its own process")
        form = QFormLayout()
        form.addRow("Python for the backend", self.python)
        form.addRow("Vision-language model", self.vlm)
        form.addRow("Segmenter", self.segmenter)
        form.addRow("Device", self.device)
        form.addRow("Response budget (tokens)", self.tokens)
        form.addRow("Default resolution (m/px)", self.resolution)
        form.addRow("Tile size (px)", self.tile)
        diag = QPushButton("Diagnostics…")
        diag.clicked.connect(self.show_diagnostics)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        box = QVBoxLayout()
        box.addLayout(form)
        box.addWidget(diag)
        box.addWidget(buttons)
        self.setLayout(box)

    def accept(self) -> None:
        s = PluginSettings.load()
        s.vlm_model = self.vlm.text().strip() or s.vlm_model
        s.segmenter = self.segmenter.text().strip() or s.segmenter
        s.device = self.device.currentText()
        s.max_new_tokens = self.tokens.value()
        s.resolution = self.resolution.value()
        s.tile_size = self.tile.value()
        s.python = self.python.text().strip()
        s.save()
        super().accept()

    def show_diagnostics(self) -> None:
        text = diagnostics_text()
        QApplication.clipboard().setText(text)
        QMessageBox.information(self, "SocioSeg diagnostics (copied to the clipboard)", text)
