"""The Qt half of the environment and model set-up: one QgsTask that runs commands with progress and a
log, a small window that shows them, and the offer made on the first Run. The commands themselves are
built and checked in environment.py and models.py (no Qt)."""
from __future__ import annotations

import os
import time

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import (QDialog, QDialogButtonBox, QLabel, QMessageBox, QPlainTextEdit, QProgressBar,
                                 QVBoxLayout)

from . import environment as env

TAG = "SocioSeg"


class CommandsTask(QgsTask):
    """Runs `steps` (environment.Step) one after another, then `check()` (in the task's thread: it may run
    a subprocess) which returns None or what is wrong. Output lines go to `line`, the log panel and a log
    file; `on_done(task)` runs on the main thread."""

    line = pyqtSignal(str)

    def __init__(self, title: str, steps, check=None, log_file: str | None = None, on_done=None,
                 parse_progress=None):
        super().__init__(title, QgsTask.CanCancel)
        self.title, self.steps, self.check = title, list(steps), check
        self.log_file, self.on_done, self.parse_progress = log_file, on_done, parse_progress
        self.error: str | None = None
        self.cancelled = False
        self.tail: list[str] = []

    def _say(self, text: str) -> None:
        self.tail = (self.tail + [text])[-30:]
        self.line.emit(text)
        if self.log_file:
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(text + "\n")

    def run(self) -> bool:
        if self.log_file:
            os.makedirs(os.path.dirname(self.log_file), exist_ok=True)
            self._say(f"--- {self.title}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
        total = sum(s.weight for s in self.steps) or 1.0
        start = 0.0
        for step in self.steps:
            self._say(f"$ {' '.join(step.argv)}")
            seen = [0]

            def on_line(text, step=step, start=start):
                self._say(text)
                frac = None
                if self.parse_progress is not None:
                    frac = self.parse_progress(text)
                elif step.expected_packages:
                    seen[0], frac = env.pip_progress(text, seen[0], step.expected_packages)
                if frac is not None:
                    self.setProgress(100.0 * (start + step.weight * frac) / total)

            self.setProgress(100.0 * start / total)
            try:
                rc = env.run_streaming(step.argv, on_line, self.isCanceled, cwd=env.PLUGIN_DIR)
            except OSError as exc:
                self.error = f"{step.label} could not start: {exc}"
                return False
            if rc == -1 or self.isCanceled():
                self.cancelled = True
                self._say("cancelled")
                return False
            if rc != 0:
                reason = env.failure_reason(self.tail)
                self.error = (f"{step.label} failed: {reason}" if reason else
                              f"{step.label} failed (exit code {rc}); the log above says why")
                if self.log_file:
                    self.error += f" (log: {self.log_file})"
                return False
            start += step.weight
        if self.check is not None:
            self._say("checking the result…")
            self.error = self.check()
            if self.error:
                self._say(self.error)
                return False
        self.setProgress(100.0)
        self._say("done")
        return True

    def finished(self, ok: bool) -> None:
        if not ok and self.error is None:
            # cancelled while still queued: run() never ran, so nothing else says how it ended
            self.cancelled = True
        if self.error:
            QgsMessageLog.logMessage(f"{self.title}: {self.error}", TAG, Qgis.Warning)
        if self.on_done is not None:
            self.on_done(self)


class TaskWindow(QDialog):
    """Progress, the live log and Cancel / Close for one CommandsTask; closing it leaves the task running
    in QGIS's task manager."""

    def __init__(self, task: CommandsTask, parent=None, intro: str = ""):
        super().__init__(parent)
        self.setWindowTitle(f"SocioSeg: {task.title}")
        self.resize(720, 420)
        self.task = task
        self.state = QLabel(intro or task.title)
        self.state.setWordWrap(True)
        self.bar = QProgressBar()
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(5000)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Cancel | QDialogButtonBox.Close)
        self.buttons.button(QDialogButtonBox.Cancel).clicked.connect(task.cancel)
        self.buttons.rejected.connect(self.hide)
        box = QVBoxLayout(self)
        for w in (self.state, self.bar, self.log, self.buttons):
            box.addWidget(w)
        task.line.connect(self.log.appendPlainText)
        task.progressChanged.connect(lambda v: self.bar.setValue(int(v)))

    def done_with(self, task: CommandsTask, success_text: str) -> None:
        self.buttons.button(QDialogButtonBox.Cancel).setEnabled(False)
        if task.cancelled:
            self.state.setText("Cancelled. Press the button again to continue where it stopped.")
        elif task.error:
            self.state.setText(f"Failed: {task.error}")
        else:
            self.bar.setValue(100)
            self.state.setText(success_text)


def start(task: CommandsTask, run_now: bool = False) -> None:
    """In QGIS's task manager, or synchronously (scripts and tests)."""
    if run_now:
        task.finished(task.run())
    else:
        QgsApplication.taskManager().addTask(task)


def environment_task(data: str, on_done=None, base: str | None = None) -> CommandsTask:
    """Create the data folder's venv from QGIS's Python and install requirements-plugin.txt; then import
    everything the backend needs in it and record it as ready."""
    venv = env.venv_dir(data)
    base = base or env.base_python()
    modules = env.LIGHT_MODULES

    def check():
        result = env.probe(env.venv_python(venv), modules)
        if result.get("missing") is None or result["missing"]:
            errors = "; ".join(f"{m}: {e}" for m, e in result.get("errors", {}).items())
            return f"the environment was made but cannot import {errors}"
        env.mark_ready(venv, ["light"])
        return None

    steps = env.setup_steps(base or "python3", venv)
    return CommandsTask("Set up Python environment", steps, check, os.path.join(data, "setup.log"), on_done)


def model_packages_task(data: str, plan: env.TorchPlan, on_done=None) -> CommandsTask:
    venv = env.venv_dir(data)

    def check():
        result = env.probe(env.venv_python(venv), {**env.LIGHT_MODULES, **env.MODEL_MODULES})
        if result.get("missing") is None or result["missing"]:
            errors = "; ".join(f"{m}: {e}" for m, e in result.get("errors", {}).items())
            return f"the model packages were installed but cannot be imported: {errors}"
        env.mark_ready(venv, ["light", "models"])
        return None

    return CommandsTask("Install model packages", env.model_steps(venv, plan), check,
                        os.path.join(data, "setup.log"), on_done)


OFFER_TEXT = ("SocioSeg finds places in a Python environment of its own, and it is not set up yet.\n\n"
              f"Set it up now? That is {env.LIGHT_SIZE}, once, and takes a few minutes. QGIS stays usable "
              "meanwhile, and the run starts by itself when the environment is ready.")


def setup_offer(parent, problem: str) -> QMessageBox:
    """The question in a planner's words; the packages and the interpreter behind Show Details."""
    box = QMessageBox(QMessageBox.Question, "SocioSeg: set up the Python environment?", OFFER_TEXT,
                      QMessageBox.Yes | QMessageBox.No, parent)
    box.setDefaultButton(QMessageBox.Yes)
    box.setDetailedText(f"{problem}\n\nThe environment is made in {env.venv_dir(env.data_dir())} and gets the "
                        f"packages of {os.path.basename(env.LIGHT_REQUIREMENTS)} from PyPI.")
    box.setObjectName("SocioSegSetupOffer")
    return box


def offer_setup(parent, problem: str, on_ready=None) -> bool:
    """The first Run's offer when the backend's Python lacks packages: set the environment up now.
    Returns True when the set-up was started."""
    if setup_offer(parent, problem).exec_() != QMessageBox.Yes:
        return False
    run_environment_setup(parent, on_ready)
    return True


_windows: list = []     # keep the windows of running tasks alive


def run_environment_setup(parent, on_ready=None, run_now: bool = False) -> CommandsTask | None:
    import sys

    from .settings import PluginSettings

    data = env.data_dir()
    base = env.base_python()
    if base is None:
        QMessageBox.warning(parent, "SocioSeg", f"No Python interpreter was found next to QGIS (under "
                                                f"{sys.base_prefix}): set Settings > Python for the backend.")
        return None
    window = None

    def done(task):
        configured = PluginSettings.load().python
        ready = not task.error and not task.cancelled
        # an interpreter named in Settings still wins over the new environment: say so, do not run
        if configured:
            text = (f"The environment is ready, but Settings > Python for the backend names {configured}: clear "
                    "that field to use it.")
        elif on_ready is not None:
            text = "The environment is ready, and the run has started: its progress is in the SocioSeg panel."
        else:
            text = "The environment is ready: the map reader engine can run now."
        window.done_with(task, text)
        if ready and not configured and on_ready is not None:
            on_ready()

    task = environment_task(data, done, base)
    window = TaskWindow(task, parent, f"Setting up the plugin's Python environment ({env.LIGHT_SIZE}) in "
                                      f"{env.venv_dir(data)}… Closing this window leaves it running.")
    _windows.append(window)
    window.show()
    start(task, run_now)
    return task
