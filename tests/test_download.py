"""`python -m backend download` against a local folder served the way the Hugging Face hub serves a model
(real huggingface_hub client, real HTTP, real range requests), and the offline errors. No network."""
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from backend.contract import parse_line
from helpers import ROOT

REPO = "test-org/tiny-model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serves `folder` as model REPO: the file list with sizes (/api/models/...) and /resolve/ downloads
    with HEAD metadata and Range support. `delay` slows the big file so a test can stop it half-way."""

    def __init__(self, folder):
        self.folder = folder
        self.delay = 0.0
        self.ranges: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):  # noqa: N802
                self.serve(body=False)

            def do_GET(self):  # noqa: N802
                self.serve(body=True)

            def serve(self, body):
                path = self.path.split("?")[0]
                if path.startswith(f"/api/models/{REPO}"):
                    return self.send_json({"id": REPO, "sha": COMMIT, "siblings": [hub.sibling(f)
                                                                                  for f in sorted(os.listdir(hub.folder))]})
                prefix = f"/{REPO}/resolve/"
                if not path.startswith(prefix):
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                name = path[len(prefix):].split("/", 1)[1]
                data = open(os.path.join(hub.folder, name), "rb").read()
                start = 0
                if self.headers.get("Range"):
                    hub.ranges.append(self.headers["Range"])
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"%s"' % hashlib.sha256(data).hexdigest())
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                for i in range(start, len(data), 65536):
                    self.wfile.write(data[i:i + 65536])
                    if len(data) > 1e6 and hub.delay:
                        time.sleep(hub.delay)

            def send_json(self, obj):
                raw = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(raw)

        def sibling(name):
            data = open(os.path.join(folder, name), "rb").read()
            info = {"rfilename": name, "size": len(data)}
            if name.endswith(".safetensors"):   # the hub lists LFS files with their checksum
                info["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            return info

        self.sibling = sibling
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def hub(tmp_path):
    src = tmp_path / "source"
    src.mkdir()
    rng = np.random.default_rng(0)
    (src / "config.json").write_text('{"model_type": "tiny"}')
    (src / "model.safetensors").write_bytes(rng.integers(0, 256, 3_000_000, dtype=np.uint8).tobytes())
    (src / "pytorch_model.bin").write_bytes(b"the same weights in another format")
    (src / "tokenizer.json").write_text("{}")
    h = FakeHub(str(src))
    yield h
    h.server.shutdown()


def cli(*args, endpoint, **kw):
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_XET": "1", "NO_PROXY": "127.0.0.1,localhost", "HF_HOME": str(kw.pop("home"))}
    for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    return subprocess.Popen([sys.executable, "-m", "backend", "download", REPO, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_size_first_then_download_with_progress(hub, tmp_path):
    dest = tmp_path / "models" / "tiny-model"
    out, err = cli("--dest", str(dest), "--size-only", endpoint=hub.url, home=tmp_path / "hf").communicate(timeout=60)
    assert out.splitlines()[0] == "SIZE 3000024 3", (out, err)   # the .bin duplicate of the safetensors is skipped
    assert not dest.exists()
    p = cli("--dest", str(dest), endpoint=hub.url, home=tmp_path / "hf")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, (out, err)
    lines = out.splitlines()
    assert lines[-1] == "DONE 3"
    progress = [parse_line(line) for line in lines if line.startswith("PROGRESS")]
    fracs = [m.fraction for m in progress]
    assert progress[-1].done == progress[-1].total == 3000024
    assert fracs == sorted(fracs) and fracs[-1] == 1.0
    assert (dest / "model.safetensors").read_bytes() == (tmp_path / "source" / "model.safetensors").read_bytes()
    assert not (dest / "pytorch_model.bin").exists()
    marker = json.loads((dest / ".socioseg-download.json").read_text())
    assert marker["commit"] == COMMIT and sorted(marker["files"]) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_cancelled_download_resumes_where_it_stopped(hub, tmp_path):
    dest = tmp_path / "tiny-model"
    big = np.random.default_rng(1).integers(0, 256, 24_000_000, dtype=np.uint8).tobytes()
    (tmp_path / "source" / "model.safetensors").write_bytes(big)
    hub.delay = 0.004    # 367 chunks of 64 kB: about 1.5 s for the big file
    p = cli("--dest", str(dest), endpoint=hub.url, home=tmp_path / "hf")
    for line in p.stdout:
        if line.startswith("PROGRESS") and "model.safetensors" in line and float(line.split()[1]) > 0.4:
            break
    p.terminate()                      # what the plugin's Cancel does
    p.communicate(timeout=30)
    partial = dest / ".partial" / "model.safetensors.part"
    assert 0 < partial.stat().st_size < len(big) and not (dest / "model.safetensors").exists()
    partial_size = partial.stat().st_size
    hub.delay = 0.0
    p = cli("--dest", str(dest), endpoint=hub.url, home=tmp_path / "hf")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, (out, err)
    assert hub.ranges == [f"bytes={partial_size}-"]      # continued where it stopped, not restarted
    assert (dest / "model.safetensors").read_bytes() == big


def test_offline_is_said_at_once(tmp_path):
    t = time.monotonic()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "backend", "download", REPO, "--dest", str(tmp_path / "m")], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout.startswith("ERROR offline: HF_HUB_OFFLINE is set"), r
    # nothing listens on port 9 of this machine: refused at once instead of retried for minutes
    p = cli("--dest", str(tmp_path / "m"), endpoint="http://127.0.0.1:9", home=tmp_path / "hf")
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 2 and out.startswith("ERROR offline: cannot reach http://127.0.0.1:9"), out
    assert time.monotonic() - t < 20
    assert not (tmp_path / "m").exists()


def test_unknown_model_names_the_setting(hub, tmp_path):
    env_repo = "test-org/no-such-model"
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run([sys.executable, "-m", "backend", "download", env_repo, "--dest", str(tmp_path / "m")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "check the model id in Settings" in r.stdout, (r.stdout, r.stderr)


def test_a_damaged_partial_file_is_caught_by_its_checksum(hub, tmp_path):
    dest = tmp_path / "tiny-model"
    (dest / ".partial").mkdir(parents=True)
    (dest / ".partial" / "model.safetensors.part").write_bytes(b"\0" * 1000)   # not the file's first bytes
    out, _ = cli("--dest", str(dest), endpoint=hub.url, home=tmp_path / "hf").communicate(timeout=60)
    assert out.splitlines()[-1].startswith("ERROR model.safetensors arrived damaged"), out
    assert not (dest / "model.safetensors").exists() and not (dest / ".partial" / "model.safetensors.part").exists()
    p = cli("--dest", str(dest), endpoint=hub.url, home=tmp_path / "hf")
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    assert (dest / "model.safetensors").read_bytes() == (tmp_path / "source" / "model.safetensors").read_bytes()


def test_settings_download_button_fetches_and_selects_the_folder(hub, tmp_path, monkeypatch, plugin_pkg, qgis_app):
    """The Settings dialog's Download, for real: size first, the task, then the field names the folder."""
    import shutil

    from socioseg.plugin.settings import PluginSettings
    from socioseg.plugin.settings_dialog import SettingsDialog

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    before = PluginSettings.load()
    d = SettingsDialog()
    try:
        d.python.setText(sys.executable)
        d.vlm.setText(REPO)
        d.refresh()
        assert d.vlm_state.text().startswith("✘") and d.vlm_download.isEnabled()
        task = d.download(d.vlm, "Vision-language model", run_now=True, confirm=False)
        assert task.error is None and not task.cancelled, task.tail
        dest = os.path.join(d.data, "models", "tiny-model")
        assert d.vlm.text() == dest and PluginSettings.load().vlm_model == dest
        assert d.vlm_state.text().startswith("✔") and not d.vlm_download.isEnabled()
        assert d._keep.bar.value() == 100 and "Downloaded to" in d._keep.state.text()
        assert os.path.getsize(os.path.join(dest, "model.safetensors")) == 3_000_000
    finally:
        before.save()
        shutil.rmtree(os.path.join(d.data, "models"), ignore_errors=True)
