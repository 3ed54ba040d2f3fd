"""The plugin's model-server setting and the long-run confirmation, in real QGIS (offscreen) with its real
authentication manager, the real worker process and Test connection's real subprocess.

The server these talk to is a small recorder on 127.0.0.1 that checks the key the way `vllm serve
--api-key` does (401 without the right Bearer token) and records what arrives: no model server that
runs here checks keys, and seeing the key arrive is the point. Real model serving (`transformers serve`
with the tiny Qwen2.5-VL) is tests/test_server.py.
"""
import json
import math
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

qgis_core = pytest.importorskip("qgis.core")
from qgis.core import (QgsApplication, QgsAuthMethodConfig, QgsCoordinateReferenceSystem,  # noqa: E402
                       QgsProject, QgsRasterLayer, QgsRectangle, QgsSettings, QgsVectorLayer)

KEY = "sk-socioseg-test-7f3a9c"
SERVED = ["first-model", "socioreasoner"]


@pytest.fixture(autouse=True)
def collect_qt_garbage():
    yield                      # see tests/test_plugin.py: free Qt wrappers while QGIS still holds them
    import gc
    gc.collect()


@pytest.fixture
def saved_settings(plugin_pkg):
    """The plugin's settings as they were before the test."""
    from socioseg.plugin.settings import PluginSettings
    before = PluginSettings.load()
    yield
    before.save()


def _auth_config(name: str, key: str) -> str:
    """A 'Basic' configuration with the key as password, stored as QGIS's own editor stores it."""
    am = QgsApplication.authManager()
    if not am.masterPasswordIsSet():     # pytest-qgis's temporary profile: a fresh auth database
        assert am.setMasterPassword("socioseg-test-master", True)
    cfg = QgsAuthMethodConfig("Basic")
    cfg.setName(name)
    cfg.setConfig("username", "socioseg")
    cfg.setConfig("password", key)
    ok, cfg = am.storeAuthenticationConfig(cfg)
    assert ok and cfg.id()
    return cfg.id()


@pytest.fixture
def key_config(qgis_app):
    return _auth_config("SocioSeg test server", KEY)


class Recorder(BaseHTTPRequestHandler):
    """/v1/models and /v1/chat/completions behind a key check; records the Authorization headers, the
    models asked for, and whether the key appears in any file of the scene folders while the worker runs."""
    seen: dict

    def _reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        self.seen["auth"].append(self.headers.get("Authorization"))
        if self.headers.get("Authorization") == f"Bearer {KEY}":
            return True
        self._reply(401, {"error": "Unauthorized"})       # what vllm serve --api-key answers
        return False

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self._authorised():
            self._reply(200, {"object": "list", "data": [{"id": m, "object": "model", "created": 0,
                                                          "owned_by": "test"} for m in SERVED]})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not self._authorised():
            return
        self.seen["models"].append(body["model"])
        for root, _, files in os.walk(self.seen["scenes"]):
            for name in files:
                path = os.path.join(root, name)
                self.seen["files"].add(name)
                with open(path, "rb") as f:
                    if KEY.encode() in f.read():
                        self.seen["leaks"].append(path)
                if name == "request.json":
                    with open(path) as f:
                        self.seen["server"] = json.load(f).get("server")
        self._reply(200, {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": "<answer>[]</answer>"}}],
                          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder(tmp_path):
    seen = {"auth": [], "models": [], "files": set(), "leaks": [], "server": None, "scenes": str(tmp_path)}
    handler = type("Handler", (Recorder,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    seen["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield seen
    httpd.shutdown()
    httpd.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_settings_keep_the_server_choice_and_only_the_id_of_the_key(plugin_pkg, qgis_iface, saved_settings,
                                                                    key_config):
    from socioseg.plugin.panel import FindPanel
    from socioseg.plugin.server_settings import api_key
    from socioseg.plugin.settings import ENGINE_VLM, PluginSettings
    from socioseg.plugin.settings_dialog import SettingsDialog

    d = SettingsDialog()
    box = d.server_box
    assert not box.url.isEnabled()                   # "in this computer" until the server is chosen
    box.where.setCurrentIndex(box.where.findData("server"))
    assert box.url.isEnabled() and box.auth.isEnabled()
    box.url.setText(" http://gpu-box:8000/v1 ")
    box.model.setText("socioreasoner")
    box.concurrency.setValue(8)
    box.auth.setConfigId(key_config)
    d.segmenter.setText("grabcut")
    d.accept()
    s = PluginSettings.load()
    assert (s.vlm_where, s.server_url, s.server_authcfg) == ("server", "http://gpu-box:8000/v1", key_config)
    assert s.engine_specs(ENGINE_VLM) == ("openai:http://gpu-box:8000/v1", "grabcut")
    assert s.server_options() == {"model": "socioreasoner", "concurrency": 8}
    settings = QgsSettings()
    settings.sync()
    with open(settings.fileName(), encoding="utf-8") as f:
        stored = f.read()
    assert key_config in stored and KEY not in stored                # the id only, never the key
    with open(QgsApplication.authManager().authenticationDatabasePath(), "rb") as f:
        assert KEY.encode() not in f.read()                         # encrypted in the auth database
    assert api_key(key_config) == KEY
    again = SettingsDialog()
    assert again.server_box.auth.configId() == key_config and again.server_box.model.text() == "socioreasoner"

    # the panel offers the server engine, by its address; without an address it says where to type one
    panel = FindPanel(qgis_iface)
    item = panel.engine_model.item(1)
    assert "on http://gpu-box:8000/v1" in item.text() and item.isEnabled(), item.toolTip()
    s.server_url = ""
    s.save()
    panel.refresh_engines()
    item = panel.engine_model.item(1)
    assert not item.isEnabled() and "Settings > Model server > URL" in item.toolTip()
    panel.disconnect_project()


def test_test_connection_lists_the_models_or_names_the_url_and_the_control(plugin_pkg, qgis_app, recorder,
                                                                            key_config, saved_settings):
    from socioseg.plugin.server_settings import ServerBox
    from socioseg.plugin.settings import PluginSettings
    from socioseg.plugin.worker_client import worker_python

    box = ServerBox(PluginSettings(vlm_where="server"), lambda: worker_python(""))
    box.url.setText(recorder["url"])
    box.auth.setConfigId(key_config)
    assert box.test(), box.result.text()
    assert box.result.text() == (f"✔ Connected to {recorder['url']}: it serves first-model, socioreasoner "
                                 "(the API key was sent).")
    assert recorder["auth"] == [f"Bearer {KEY}"]

    box.auth.setConfigId(_auth_config("wrong", "sk-wrong"))
    assert not box.test()
    assert recorder["auth"][-1] == "Bearer sk-wrong"
    assert "refused the API key that was sent: set it under Settings > Model server > API key" in box.result.text()

    box.auth.setConfigId(key_config)
    box.model.setText("nope")
    assert not box.test()
    assert "does not serve 'nope'; it serves first-model, socioreasoner" in box.result.text()
    assert "Settings > Model server > Served model" in box.result.text()

    url = f"http://127.0.0.1:{_free_port()}/v1"
    box.url.setText(url)
    assert not box.test()
    assert f"cannot reach the model server at {url}" in box.result.text()
    assert "(Settings > Model server > URL)" in box.result.text()


def _sample_params(sample_dir, reasoner, **kw):
    from socioseg.backend.contract import TilePlan
    from socioseg.plugin.task import DetectParams

    sat = QgsRasterLayer(os.path.join(sample_dir, "satellite.tif"), "satellite")
    areas = QgsVectorLayer(os.path.join(sample_dir, "map.gpkg") + "|layername=areas", "areas", "ogr")
    crs = QgsCoordinateReferenceSystem("EPSG:32650")
    QgsProject.instance().setCrs(crs)
    return DetectParams(sat, [areas], "schools", None, QgsRectangle(sat.extent()), crs, 2.0, reasoner, "grabcut",
                        "cpu", {"max_new_tokens": 64}, TilePlan(), **kw)


def test_a_run_on_the_server_gets_the_key_only_through_the_worker_environment(plugin_pkg, qgis_new_project,
                                                                             qgis_iface, sample_dir, recorder,
                                                                             key_config, monkeypatch, tmp_path):
    from socioseg.plugin.task import DetectTask

    monkeypatch.delenv("SOCIOSEG_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))            # the scene folder, where the recorder looks
    task = DetectTask(_sample_params(sample_dir, f"openai:{recorder['url']}",
                                     server={"model": "socioreasoner", "concurrency": 2}, server_authcfg=key_config))
    assert task.run(), task.error
    assert task.result.entities == []                                 # the recorder answers "nothing here"
    assert len(recorder["models"]) == 2 * task.result.tiles            # both stages of every tile, no discovery
    assert recorder["auth"] == [f"Bearer {KEY}"] * len(recorder["models"])
    assert set(recorder["models"]) == {"socioreasoner"}                 # the request's choice, not the first listed
    assert recorder["server"] == {"model": "socioreasoner", "concurrency": 2}
    assert {"request.json", "satellite.tif", "map.tif"} <= recorder["files"] and recorder["leaks"] == []
    assert "SOCIOSEG_API_KEY" not in os.environ                        # never put into QGIS's own environment

    # a key configuration that is gone: said before anything is rendered, naming the control
    asked = len(recorder["auth"])
    task = DetectTask(_sample_params(sample_dir, f"openai:{recorder['url']}", server={}, server_authcfg="gone123"))
    assert not task.run()
    assert "'gone123' cannot be read" in task.error and "Settings > Model server > API key" in task.error
    assert len(recorder["auth"]) == asked and not list(tmp_path.glob("socioseg-scene-*"))
    from socioseg.plugin.panel import FindPanel
    panel = FindPanel(qgis_iface)                  # the panel says so before Run starts anything
    assert "Settings > Model server > API key" in panel.input_problem(task.params)
    panel.disconnect_project()

    # a key the server refuses: the worker's message names the plugin control, not the variable
    task = DetectTask(_sample_params(sample_dir, f"openai:{recorder['url']}", server={},
                                     server_authcfg=_auth_config("wrong", "sk-wrong")))
    assert not task.run()
    assert f"the model server at {recorder['url']} refused the API key" in task.error, task.error
    assert "Settings > Model server > API key" in task.error and "SOCIOSEG_API_KEY" not in task.error


def test_server_messages_of_the_backend_name_the_plugin_controls():
    from backend.errors import InputError
    from backend.reasoners.openai_server import OpenAIReasoner, ServerSettings
    from socioseg.plugin.task import plugin_wording

    url = f"http://127.0.0.1:{_free_port()}/v1"
    for settings, control in ((ServerSettings(url), "Settings > Model server > URL"),
                              (ServerSettings("gpu-box:8000"), "Settings > Model server > URL, e.g. http://"),
                              (ServerSettings(url, concurrency=0), "Settings > Model server > Requests in flight")):
        with pytest.raises(InputError) as err:
            OpenAIReasoner(settings)
        text = plugin_wording(str(err.value))
        assert control in text and "--" not in text, text


@pytest.fixture
def answer(monkeypatch):
    """QMessageBox.exec_ answered by the test: records each question's text, ticks the checkbox on demand."""
    from qgis.PyQt.QtWidgets import QMessageBox
    script = {"reply": QMessageBox.No, "tick": False, "asked": []}

    def exec_(box):
        script["asked"].append(box.text())
        if box.checkBox() is not None:
            box.checkBox().setChecked(script["tick"])
        return script["reply"]

    monkeypatch.setattr(QMessageBox, "exec_", exec_)
    return script


def test_a_long_run_is_confirmed_with_its_tile_count_and_time_first(plugin_pkg, qgis_new_project, qgis_iface,
                                                                    sample_dir, saved_settings, answer, monkeypatch):
    from qgis.PyQt.QtWidgets import QMessageBox
    from socioseg.backend.contract import format_duration
    from socioseg.backend.geo.tiles import estimate_seconds
    from socioseg.plugin.estimate import question
    from socioseg.plugin.panel import FindPanel
    from socioseg.plugin.settings import PluginSettings

    project = QgsProject.instance()
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:32650"))
    sat = QgsRasterLayer(os.path.join(sample_dir, "satellite.tif"), "satellite")
    areas = QgsVectorLayer(os.path.join(sample_dir, "map.gpkg") + "|layername=areas", "areas", "ogr")
    project.addMapLayers([sat, areas])
    s = PluginSettings.load()
    s.confirm_seconds, s.max_tiles = 0.5, 100        # the sample's 6 tiles take seconds with the map reader
    s.save()
    panel = FindPanel(qgis_iface)
    panel.area.setCurrentIndex(1)
    panel.area_layer.setLayer(sat)
    panel.resolution.setValue(1.0)
    started = []
    monkeypatch.setattr(panel, "start", started.append)

    panel.run_or_cancel()                            # answered No: nothing starts
    seconds = estimate_seconds(6, "mapreader")
    assert answer["asked"] == [f"This Area needs 6 tiles: about {format_duration(seconds)} with this Engine (measured "
                               "on a 2-core CPU; a faster machine takes less). QGIS stays usable meanwhile, and "
                               "Cancel stops the run."]
    assert started == [] and panel.task is None and panel.status.text().startswith("Not started (6 tiles)")

    answer.update(reply=QMessageBox.Yes, tick=True)  # Run, and don't ask again for runs this long
    panel.run_or_cancel()
    assert len(started) == 1 and started[0].params.query == panel.query.currentText().strip()
    assert PluginSettings.load().confirm_seconds == math.ceil(seconds)
    panel.run_or_cancel()                            # no second question
    assert len(answer["asked"]) == 2 and len(started) == 2

    panel.settings.max_tiles = 1                     # Settings > Max tiles stays the hard limit
    panel.run_or_cancel()
    assert "more than the limit of 1" in panel.status.text() and "Settings > Max tiles" in panel.status.text()
    assert len(answer["asked"]) == 2 and len(started) == 2
    panel.disconnect_project()

    # an engine not timed here is asked about by its tile count
    s = PluginSettings(confirm_tiles=20)
    assert question(19, "openai:http://gpu-box:8000/v1", s) is None
    text, seconds = question(20, "qwen:vvangfaye/SocioReasoner-3B", s)
    assert seconds is None and text.startswith("This Area needs 20 tiles. The time per tile of this Engine was not "
                                               "measured here")


def test_the_new_plugin_modules_import_nothing_that_clashes_with_qgis(tmp_path):
    import subprocess
    import sys

    from helpers import ROOT
    (tmp_path / "socioseg").symlink_to(ROOT)
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import socioseg.plugin.server_settings, socioseg.plugin.estimate, socioseg.plugin.settings_dialog\n"
            "print([m for m in ('torch', 'rasterio', 'shapely', 'pyproj', 'openai') if m in sys.modules])"
            % str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert r.stdout.strip() == "[]", r.stderr
