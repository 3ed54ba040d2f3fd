"""The vision-language model on a model server: Settings' "Model server" box, its API key in QGIS's
authentication manager, and what a run and "Test connection" hand to the backend's Python.

The key is kept in QgsAuthManager (encrypted with the master password); the settings hold only the id
of its configuration. It reaches the worker through the worker's environment (contract.API_KEY_ENV),
never through the scene folder, which is a plain temporary folder other processes may read.
"""
from __future__ import annotations

import json
import subprocess

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (QApplication, QComboBox, QFormLayout, QGroupBox, QLabel, QLineEdit, QPushButton,
                                 QSpinBox)

from ..backend.contract import API_KEY_ENV, parse_line
from ..backend.errors import InputError
from .settings import VLM_LOCAL, VLM_SERVER, PluginSettings

URL_CONTROL = "Settings > Model server > URL"
KEY_CONTROL = "Settings > Model server > API key"
MODEL_CONTROL = "Settings > Model server > Served model"
KEY_FIELDS = ("password", "token")     # a 'Basic' configuration's password, an 'EsriToken' one's token


def api_key(authcfg: str) -> str:
    """The key held by the authentication configuration `authcfg` (QGIS asks for the master password
    when it has not been given in this session)."""
    from qgis.core import QgsApplication, QgsAuthMethodConfig

    ok, cfg = QgsApplication.authManager().loadAuthenticationConfig(authcfg, QgsAuthMethodConfig(), True)  # SIP_INOUT
    if not ok or not cfg.isValid(True):
        raise InputError(f"the API key's authentication configuration {authcfg!r} cannot be read (removed, or the "
                         f"master password was not given): choose it again under {KEY_CONTROL}")
    for name in KEY_FIELDS:
        if cfg.config(name):
            return cfg.config(name)
    raise InputError(f"the authentication configuration '{cfg.name()}' holds no key (a 'Basic' configuration "
                     f"keeps it as its password): edit it under {KEY_CONTROL}")


def key_env(authcfg: str | None) -> dict:
    """The worker's extra environment: the API key, when a configuration is chosen."""
    return {API_KEY_ENV: api_key(authcfg)} if authcfg else {}


def with_control(message: str) -> str:
    """A backend message about the server, with the Settings control that fixes it."""
    if "API key" in message:
        return f"{message}: set it under {KEY_CONTROL}"
    if "does not serve" in message:
        return f"{message}: correct {MODEL_CONTROL} (empty: the first one)"
    if "openai package" in message:
        return message + " (Settings > Set up Python environment does it)"
    return f"{message} ({URL_CONTROL})"


def test_connection(python: str, url: str, model: str = "", authcfg: str = "") -> tuple[bool, str]:
    """Ask the server for its models with the backend's Python and the worker's environment, so that a
    passing test means a run gets through too. (ok, text for the user)."""
    from .worker_client import worker_env

    if not url.strip():
        return False, f"Type the model server's address under {URL_CONTROL} (e.g. http://gpu-box:8000/v1)."
    try:
        env = worker_env(python, key_env(authcfg))
    except InputError as exc:
        return False, f"{exc}."
    cmd = [python, "-m", "backend.server_check", url.strip(), *(["--model", model.strip()] if model.strip() else [])]
    from .deps import PLUGIN_DIR, explain_missing

    try:
        r = subprocess.run(cmd, cwd=PLUGIN_DIR, env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"The backend's Python ({python}) cannot run ({exc}): check Settings > Python for the backend."
    lines = r.stdout.strip().splitlines()
    if r.returncode == 0 and lines:
        answer = json.loads(lines[-1])
        key = "the API key was sent" if answer["key_sent"] else "no API key was sent"
        return True, f"Connected to {answer['url']}: it serves {', '.join(answer['models'])} ({key})."
    error = next((m.text for m in map(parse_line, lines) if m and m.kind == "ERROR"), None)
    if error:
        return False, with_control(error) + "."
    if "No module named" in r.stderr:
        return False, explain_missing(["openai"], "Test connection", python)
    return False, f"The test failed ({r.returncode}): {r.stderr.strip()[-300:]}"


class ServerBox(QGroupBox):
    """Where the vision-language model runs: in this computer, or on a model server (URL, served model,
    requests in flight, API key, Test connection)."""

    def __init__(self, s: PluginSettings, backend_python, parent=None):
        from qgis.gui import QgsAuthConfigSelect

        super().__init__("Model server (the vision-language model on another machine)", parent)
        self.backend_python = backend_python      # the interpreter typed in the dialog, resolved
        self.where = QComboBox()
        self.where.addItem("In this computer (the Vision-language model above)", VLM_LOCAL)
        self.where.addItem("On a model server (OpenAI API)", VLM_SERVER)
        self.where.setToolTip("A server of the OpenAI chat-completions API: vLLM, SGLang, llama.cpp's server, "
                              "Ollama, LM Studio, transformers serve. The segmenter still runs here.")
        self.where.setCurrentIndex(max(0, self.where.findData(s.vlm_where)))
        self.url = QLineEdit(s.server_url)
        self.url.setPlaceholderText("http://gpu-box:8000/v1")
        self.model = QLineEdit(s.server_model)
        self.model.setPlaceholderText("the one the server lists")
        self.concurrency = QSpinBox()
        self.concurrency.setRange(1, 256)
        self.concurrency.setValue(s.server_concurrency)
        self.concurrency.setToolTip("Tiles whose requests are in flight at once; a server batches them")
        self.auth = QgsAuthConfigSelect(self)
        self.auth.setConfigId(s.server_authcfg)
        self.auth.setToolTip("Kept in QGIS's authentication database, never in the plugin's settings. Add (+) a "
                             "'Basic' configuration with the key as its password (any user name). None: no key.")
        self.test_button = QPushButton("Test connection")
        self.test_button.clicked.connect(self.test)
        self.result = QLabel()
        self.result.setWordWrap(True)
        self.result.setTextInteractionFlags(Qt.TextSelectableByMouse)
        form = QFormLayout(self)
        form.addRow("Vision-language model runs", self.where)
        form.addRow("URL", self.url)
        form.addRow("Served model", self.model)
        form.addRow("Requests in flight", self.concurrency)
        form.addRow("API key", self.auth)
        # the answer on a row of its own, the dialog's full width: beside the button it was cut off
        form.addRow(self.test_button)
        form.addRow(self.result)
        self.where.currentIndexChanged.connect(self._enable)
        self._enable()

    def _enable(self, *_):
        on = self.where.currentData() == VLM_SERVER
        for w in (self.url, self.model, self.concurrency, self.auth, self.test_button):
            w.setEnabled(on)

    def test(self) -> bool:
        QApplication.setOverrideCursor(Qt.WaitCursor)
        try:
            ok, text = test_connection(self.backend_python(), self.url.text(), self.model.text(), self.auth.configId())
        finally:
            QApplication.restoreOverrideCursor()
        self.result.setText(("✔ " if ok else "✘ ") + text)
        self.result.setToolTip(text)
        # a wrapped label in a form gets one line's height unless told: reserve what the text needs at the
        # width it has (the dialog grows to fit)
        self.result.setMinimumHeight(self.result.heightForWidth(max(self.result.width(), 200)))
        return ok

    def store(self, s: PluginSettings) -> None:
        s.vlm_where = self.where.currentData()
        s.server_url = self.url.text().strip()
        s.server_model = self.model.text().strip()
        s.server_concurrency = self.concurrency.value()
        s.server_authcfg = self.auth.configId()
