"""The plugin's environment manager: interpreter discovery on the three OS layouts, the torch build
choice, model presence, the messages that name the buttons, the Qt task on real commands, and a real
virtual environment made from the ZIP by Debian's Python with the ZIP's requirements-plugin.txt."""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from helpers import ROOT
from plugin import deps, environment as env


def test_real_interpreter_found_for_each_layout():
    on = lambda *paths: (lambda p: p in paths)   # noqa: E731  (a file system holding exactly `paths`)
    # Windows (OSGeo4W / standalone installer): sys.executable is qgis-bin.exe
    win = env.base_python(r"C:\OSGeo4W\bin\qgis-bin.exe", r"C:\OSGeo4W\apps\Python312", "", "win32",
                          on(os.path.join(r"C:\OSGeo4W\apps\Python312", "python.exe")))
    assert win == os.path.join(r"C:\OSGeo4W\apps\Python312", "python.exe")
    # macOS app bundle: sys.executable is the QGIS binary, the interpreter is under the prefix's bin/
    prefix = "/Applications/QGIS.app/Contents/Frameworks/Python.framework/Versions/3.11"
    mac = env.base_python("/Applications/QGIS.app/Contents/MacOS/QGIS", prefix, "", "darwin",
                          on(f"{prefix}/bin/python3"))
    assert mac == f"{prefix}/bin/python3"
    # Debian: QGIS runs /usr's Python; from inside a venv the base interpreter wins over the venv's
    assert env.base_python("/usr/bin/qgis", "/usr", "", "linux", on("/usr/bin/python3")) == "/usr/bin/python3"
    assert env.base_python("/x/.venv/bin/python", "/usr", "/usr/bin/python3", "linux",
                           on("/usr/bin/python3", "/x/.venv/bin/python")) == "/usr/bin/python3"
    # embedded in QGIS, sys.executable came from a PATH search and hit a pyenv shim: the prefix wins
    assert env.base_python("/root/.pyenv/shims/python3", "/usr", "", "linux",
                           on("/usr/bin/python3", "/root/.pyenv/shims/python3")) == "/usr/bin/python3"
    # and on this machine, for real
    assert os.path.basename(env.base_python()).startswith("python") and os.path.exists(env.base_python())


def test_torch_build_follows_the_machine():
    cpu = env.torch_plan("linux", "x86_64", None)
    assert cpu.pip_args[-2:] == ["--index-url", env.TORCH_CPU_INDEX] and cpu.description.startswith("CPU build")
    cuda = env.torch_plan("linux", "x86_64", "NVIDIA H100 80GB HBM3")
    assert "--index-url" not in cuda.pip_args and "CUDA build" in cuda.description and "H100" in cuda.description
    assert env.torch_plan("win32", "AMD64", "RTX 4090").pip_args[-1] == env.TORCH_CUDA_INDEX
    assert "--index-url" not in env.torch_plan("win32", "AMD64", None).pip_args
    assert "MPS" in env.torch_plan("darwin", "arm64", None).description
    assert "--index-url" not in env.torch_plan("linux", "aarch64", None).pip_args
    steps = env.model_steps("/v", cpu)
    assert steps[0].argv[-4:] == ["torch", "torchvision", "--index-url", env.TORCH_CPU_INDEX]
    assert steps[1].argv[-1].endswith("requirements-models.txt")


def test_pip_lines_drive_progress():
    seen, fracs = 0, []
    for line in ["Collecting numpy>=1.26", "  Downloading numpy-1.26.4.whl (18 MB)",
                 "Processing /opt/wheels/rasterio-1.4.4-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "Installing collected packages: numpy, rasterio", "Successfully installed numpy rasterio"]:
        seen, f = env.pip_progress(line, seen, 4)
        fracs.append(f)
    assert fracs == [0.2, None, 0.4, 0.85, 1.0] and seen == 2
    assert env.failure_reason(["x", "ERROR: No matching distribution found for rasterio", "y"]) == \
        "No matching distribution found for rasterio"


def test_messages_name_the_button():
    light = deps.explain_missing(["rasterio", "shapely"], "SocioSeg", "/usr/bin/python3")
    assert "Set up Python environment" in light and "/usr/bin/python3" in light and "\n" not in light
    heavy = deps.explain_missing(["torch", "transformers"], "The vision-language engine", "/v/bin/python")
    assert "Install model packages" in heavy and "CPU or CUDA" in heavy


def test_set_up_steps(tmp_path):
    venv = str(tmp_path / "venv")
    create, install = env.setup_steps("/usr/bin/python3", venv)
    assert create.argv == ["/usr/bin/python3", "-m", "venv", venv]
    assert install.argv[:4] == [env.venv_python(venv), "-m", "pip", "install"] and install.argv[-2:] == \
        ["-r", env.LIGHT_REQUIREMENTS]
    os.makedirs(os.path.join(venv, "lib"))          # an environment whose interpreter is gone: made afresh
    assert env.setup_steps("/usr/bin/python3", venv)[0].argv == ["/usr/bin/python3", "-m", "venv", "--clear", venv]
    os.makedirs(os.path.dirname(env.venv_python(venv)))
    open(env.venv_python(venv), "w").close()        # present: only the install (an update) runs
    assert [s.label for s in env.setup_steps("/usr/bin/python3", venv)] == ["Installing the backend's packages"]


def test_status_of_the_environment(tmp_path):
    venv = str(tmp_path / "venv")
    assert env.status(venv).state == "missing" and "Set up Python environment" in env.status(venv).text
    os.makedirs(os.path.dirname(env.venv_python(venv)))
    open(env.venv_python(venv), "w").close()
    assert env.status(venv).state == "broken"
    env.mark_ready(venv, ["light"])
    assert env.status(venv).state == "ready" and not env.status(venv).models
    ready = json.load(open(os.path.join(venv, env.READY)))
    ready["light"] = "from-an-older-plugin"
    json.dump(ready, open(os.path.join(venv, env.READY), "w"))
    assert env.status(venv).state == "outdated"


def test_model_presence(tmp_path, monkeypatch, plugin_pkg):
    from socioseg.plugin import models

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    folder = str(tmp_path / "models")
    missing = models.model_status("vvangfaye/SocioReasoner-3B", folder, "Vision-language model")
    assert not missing.present and missing.downloadable and missing.path == os.path.join(folder, "SocioReasoner-3B")
    # a sharded model with one shard missing, then complete
    m = tmp_path / "models" / "SocioReasoner-3B"
    m.mkdir(parents=True)
    (m / "config.json").write_text("{}")
    (m / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "s1.safetensors",
                                                                                 "b": "s2.safetensors"}}))
    (m / "s1.safetensors").write_bytes(b"x")
    assert "s2.safetensors missing" in models.model_status("vvangfaye/SocioReasoner-3B", folder, "VLM").text
    (m / "s2.safetensors").write_bytes(b"x")
    assert models.model_status("vvangfaye/SocioReasoner-3B", folder, "VLM").present
    # an interrupted download is not a model
    (m / ".partial").mkdir()
    (m / ".partial" / "s3.safetensors.part").write_bytes(b"x")
    assert "resume" in models.model_status(str(m), folder, "VLM").text
    # a model in the Hugging Face cache counts
    snap = tmp_path / "hf" / "hub" / "models--facebook--sam2-hiera-large" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").write_bytes(b"x")
    kind, ref = models.segmenter_model("sam2:facebook/sam2-hiera-large")
    assert kind == "sam2" and models.model_status(ref, folder, "Segmenter").path == str(snap)
    assert models.segmenter_model("grabcut") == ("grabcut", None)
    assert models.segmenter_model("sam2") == ("sam2", "facebook/sam2-hiera-large")
    assert models.segmenter_model("sam:vit_h:/m/sam_vit_h.pth") == ("sam", "/m/sam_vit_h.pth")
    assert models.segmenter_model("sam3") == ("sam3", "facebook/sam3")
    assert models.segmenter_model("sam3:/m/sam3") == ("sam3", "/m/sam3")
    assert models.model_status(None, folder, "Segmenter").present
    # the panel's reason for not offering the vision-language engine names the button
    reason = models.missing_models_reason("org/absent-model", "sam2:facebook/sam2-hiera-large", folder)
    assert reason.startswith("The vision-language model org/absent-model is not here (not downloaded")
    assert "press Download beside 'Vision-language model' in Plugins > SocioSeg > Settings" in reason
    shutil.rmtree(m / ".partial")
    reason = models.missing_models_reason(str(m), "sam:vit_h:/no.pth", folder)
    assert reason.startswith("The segmenter /no.pth is not here") and "correct 'Segmenter'" in reason
    assert models.missing_models_reason(str(m), "sam2:facebook/sam2-hiera-large", folder) is None


def test_commands_task_runs_real_commands_with_progress_log_and_errors(plugin_pkg, qgis_app, tmp_path):
    from socioseg.plugin import environment as penv
    from socioseg.plugin.setup_dialog import CommandsTask

    py = sys.executable
    ok = penv.Step("pip-like", [py, "-c", "print('Collecting a'); print('Collecting b'); "
                                          "print('Successfully installed a b')"], 1.0, 2)
    seen = []
    task = CommandsTask("demo", [ok], check=lambda: None, log_file=str(tmp_path / "setup.log"))
    task.line.connect(seen.append)
    task.progressChanged.connect(lambda v: seen.append(round(v)))
    assert task.run() and task.error is None
    assert seen.index("Collecting b") < seen.index(80) and 100 in seen
    assert "Successfully installed a b" in (tmp_path / "setup.log").read_text()
    bad = penv.Step("fails", [py, "-c", "print('ERROR offline: cannot reach the hub'); raise SystemExit(2)"])
    task = CommandsTask("demo", [bad])
    assert not task.run() and task.error == "fails failed: offline: cannot reach the hub"
    slow = penv.Step("slow", [py, "-c", "import time; print('start', flush=True); time.sleep(60)"])
    task = CommandsTask("demo", [slow])
    task.line.connect(lambda text: task.cancel())
    assert not task.run() and task.cancelled and task.error is None


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs Debian's /usr/bin/python3")
def test_zip_sets_up_its_own_environment_from_debian_python(tmp_path):
    """What a user's QGIS does on 'Set up Python environment', run by Debian's own Python from the ZIP's
    copy of the plugin: a PEP 668 system, so only a venv can take the packages (PyPI reached for real)."""
    out = tmp_path / "socioseg.zip"
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "build_zip.py"), "--out", str(out)], check=True,
                   capture_output=True, timeout=120)
    with zipfile.ZipFile(out) as z:
        z.extractall(tmp_path / "plugins")
    venv = tmp_path / "profile" / "socioseg" / "venv"
    code = f"""
import json, sys
sys.path.insert(0, {str(tmp_path / 'plugins')!r})
from socioseg.plugin import environment as env
assert env.PLUGIN_DIR.startswith({str(tmp_path)!r})
venv = {str(venv)!r}
base = env.base_python()
for step in env.setup_steps(base, venv):
    rc = env.run_streaming(step.argv, lambda line: None)
    assert rc == 0, (step.label, rc)
result = env.probe(env.venv_python(venv), env.LIGHT_MODULES)
if not result["missing"]:
    env.mark_ready(venv, ["light"])
print(json.dumps({{"base": base, "probe": result, "status": env.status(venv).state}}))
"""
    env_vars = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    r = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True, timeout=600, env=env_vars)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert os.path.realpath(res["base"]) == os.path.realpath("/usr/bin/python3")
    assert res["probe"]["missing"] == [], res["probe"]
    assert res["status"] == "ready"
    # the worker's own entry point runs from the ZIP's folder with the new environment
    info = subprocess.run([env.venv_python(str(venv)), "-m", "backend", "info"], cwd=tmp_path / "plugins" / "socioseg",
                          capture_output=True, text=True, timeout=120, env=env.clean_env())
    assert info.returncode == 0 and "socioseg backend" in info.stdout and "rasterio 1.4" in info.stdout, info.stderr
    # isolated from Debian's packages: pyproj is the wheel (Debian's 3.4 cannot find PROJ data in a venv)
    assert "pyproj 3.4" not in info.stdout


def test_diagnostics_of_a_bare_python_name_the_button_not_a_traceback(plugin_pkg, qgis_app):
    from socioseg.plugin.settings_dialog import diagnostics_text

    bare = "/usr/bin/python3"        # Debian's Python: no rasterio, shapely, ... (PEP 668 keeps it so)
    missing = env.probe(bare, env.LIGHT_MODULES)["missing"]
    if not missing:
        pytest.skip("this machine's /usr/bin/python3 has the backend's packages")
    text = diagnostics_text(bare)
    assert f"backend Python {bare}" in text and "Set up Python environment" in text
    assert "Traceback" not in text and "ModuleNotFoundError" not in text


def test_set_up_without_a_package_index_says_why(plugin_pkg, qgis_app, tmp_path, monkeypatch):
    """The real set-up task (venv from Debian's Python, then pip) with no reachable index: it fails within
    seconds with pip's own reason in one line, and the environment is not called ready."""
    from socioseg.plugin.setup_dialog import environment_task

    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)          # no local wheel folders or mirrors
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    data = str(tmp_path / "socioseg")
    task = environment_task(data, base="/usr/bin/python3")
    assert not task.run()
    assert task.error.startswith("Installing the backend's packages failed: the package index cannot be "
                                 "reached"), task.error
    assert "numpy" in task.error
    assert "\n" not in task.error and os.path.exists(os.path.join(data, "setup.log"))
    assert env.status(env.venv_dir(data)).state == "broken"
