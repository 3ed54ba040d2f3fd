"""The plugin's own Python environment for the backend: where it lives, how it is made, how it is checked.

No Qt and no QGIS at import time: the commands and checks are plain Python (tested without QGIS); the
QgsTask and the buttons are in setup_dialog.py.

Why a virtual environment in the plugin's DATA folder (<QGIS profile>/socioseg/venv):
* the plugin folder is replaced on every plugin update; the profile folder is not;
* Debian 12 and other PEP 668 systems refuse `pip install` into the system Python
  (externally-managed-environment), and `--user` installs leak into every Python of the user;
* the backend runs in its own process (see worker_client.py), so the venv never has to be importable
  inside QGIS, and torch never loads there.
It is made WITHOUT --system-site-packages: the worker must not see QGIS's Python packages (Debian's
numpy / pyproj 3.4, whose PROJ data cannot be found from a venv; OSGeo4W's GDAL-linked wheels on Windows),
and isolated wheels give the same stack on every OS. The price is a ~200 MB download once (LIGHT_SIZE).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIGHT_REQUIREMENTS = os.path.join(PLUGIN_DIR, "requirements-plugin.txt")
MODEL_REQUIREMENTS = os.path.join(PLUGIN_DIR, "requirements-models.txt")
READY = "socioseg-ready.json"       # written into the venv once the check after an install passed
SETUP_BUTTON = "Plugins > SocioSeg > Settings > Set up Python environment"
MODELS_BUTTON = "Plugins > SocioSeg > Settings > Install model packages"
# What the light stack must import (module -> pip name); the backend itself is imported too.
LIGHT_MODULES = {"numpy": "numpy", "rasterio": "rasterio", "affine": "affine", "shapely": "shapely",
                 "pyproj": "pyproj", "pyogrio": "pyogrio", "cv2": "opencv-python-headless", "scipy": "scipy",
                 "PIL": "pillow", "huggingface_hub": "huggingface_hub"}
MODEL_MODULES = {"torch": "torch", "torchvision": "torchvision", "transformers": "transformers",
                 "segment_anything": "segment-anything"}
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# PyTorch names its CUDA indexes by CUDA version; cu126 serves the current releases and drivers >= 560.
# Revisit when PyTorch drops it.
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu126"
# Sizes said before anything is installed, measured on Debian 12, Python 3.11, x86-64 (December 2026):
# requirements-plugin.txt's wheels came to 205 MB and the finished environment to 734 MB; the CPU model
# packages are torch 2.13.0+cpu (192 MB wheel, 699 MB unpacked), torchvision (7 MB, 19 MB), transformers
# (13 MB, 50 MB) and their small dependencies; PyPI's CUDA build with its NVIDIA libraries took 6.2 GB.
LIGHT_SIZE = "about 200 MB to download, about 730 MB on disk"
TORCH_CPU_SIZE = "about 230 MB to download, about 0.9 GB on disk"
TORCH_CUDA_SIZE = "about 3 GB to download, about 6 GB on disk"



def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Terminate a child process, and kill it if it has not ended after `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

def data_dir(base: str | None = None) -> str:
    """<QGIS profile>/socioseg: survives plugin updates (the plugin folder does not)."""
    if base is None:
        from qgis.core import QgsApplication   # only here: the rest of the module runs without QGIS

        base = QgsApplication.qgisSettingsDirPath()
    return os.path.join(base, "socioseg")


def venv_dir(data: str) -> str:
    return os.path.join(data, "venv")


def venv_python(venv: str, windows: bool = os.name == "nt") -> str:
    return os.path.join(venv, "Scripts", "python.exe") if windows else os.path.join(venv, "bin", "python")


def base_python(executable: str | None = None, prefix: str | None = None, base_executable: str | None = None,
                platform: str | None = None, exists=os.path.exists) -> str | None:
    """The real interpreter QGIS runs on, to make the venv from.

    Inside QGIS sys.executable is often the QGIS binary itself (qgis-bin.exe on Windows, QGIS.app's
    executable on macOS) or whatever "python3" is first on PATH (Linux); sys.base_prefix is reliable. Layouts: Linux packages /usr/bin/python3 (prefix /usr); OSGeo4W and the
    standalone Windows installer <prefix>/python3.exe or python.exe (prefix e.g. C:/OSGeo4W/apps/Python312);
    the macOS app bundle <prefix>/bin/python3 (prefix QGIS.app/Contents/Frameworks/Python.framework/...
    or QGIS.app/Contents/MacOS). Tested here on Debian 12 only; the others are from their layouts."""
    executable = sys.executable if executable is None else executable
    prefix = sys.base_prefix if prefix is None else prefix
    base_executable = getattr(sys, "_base_executable", "") if base_executable is None else base_executable
    platform = sys.platform if platform is None else platform
    version = f"{sys.version_info.major}.{sys.version_info.minor}"

    def is_python(path: str) -> bool:
        return bool(path) and os.path.basename(path).lower().startswith("python") and exists(path)

    if platform == "win32":
        names = [os.path.join(prefix, "python3.exe"), os.path.join(prefix, "python.exe")]
    else:
        names = [os.path.join(prefix, "bin", f"python{version}"), os.path.join(prefix, "bin", "python3"),
                 os.path.join(prefix, "bin", "python")]
    # The prefix's own interpreter first: an embedded Python (QGIS) derives sys.executable from a PATH
    # search for "python3", which can land on any other Python (pyenv shims were found this way here).
    for candidate in (*names, base_executable, executable):
        if is_python(candidate):
            return candidate
    found = shutil.which("python3") or shutil.which("python")
    return found or None


def clean_env(extra: dict | None = None) -> dict:
    """The environment for the venv's tools: QGIS's PYTHONHOME / PYTHONPATH would point another
    interpreter at QGIS's own library and packages."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV", "PIP_USER", "PYTHONSTARTUP")}
    env.update(PYTHONUNBUFFERED="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1")
    env.update(extra or {})
    return env


@dataclass
class Step:
    """One command of an installation, with its share of the progress bar."""
    label: str
    argv: list[str]
    weight: float = 1.0
    expected_packages: int = 0      # for a pip step: how many "Collecting" lines make 100 %


@dataclass
class TorchPlan:
    """Which torch build to install, and why (shown in the UI before installing)."""
    pip_args: list[str]
    description: str
    gpu: str | None = None
    size: str = "size not measured for this system"     # what the question before installing says


def nvidia_gpu(run=subprocess.run) -> str | None:
    """Name of the first NVIDIA GPU the driver reports, or None (no driver, no GPU)."""
    smi = shutil.which("nvidia-smi")
    if smi is None and os.name == "nt" and os.path.exists(r"C:\Windows\System32\nvidia-smi.exe"):
        smi = r"C:\Windows\System32\nvidia-smi.exe"    # the driver puts it there, not always on PATH
    if smi is None:
        return None
    try:
        r = run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in (r.stdout or "").splitlines() if line.strip()]
    return names[0] if r.returncode == 0 and names else None


def torch_plan(platform: str | None = None, machine: str | None = None, gpu: str | None = None) -> TorchPlan:
    """PyPI's Linux x86_64 torch is the CUDA build (about 3 GB with its NVIDIA libraries); its Windows
    torch is CPU-only; macOS gets the MPS build from PyPI. So: a CPU-only machine on Linux takes the
    small CPU build from PyTorch's index, an NVIDIA machine on Windows takes the CUDA build from there."""
    import platform as _platform

    platform = sys.platform if platform is None else platform
    machine = (_platform.machine() if machine is None else machine).lower()
    pkgs = ["torch", "torchvision"]
    if platform == "darwin":
        return TorchPlan(pkgs, "macOS build from PyPI (uses the Apple GPU through MPS where available)")
    if platform == "win32":
        if gpu:
            return TorchPlan([*pkgs, "--index-url", TORCH_CUDA_INDEX],
                             f"CUDA build for the NVIDIA GPU {gpu}", gpu, TORCH_CUDA_SIZE)
        return TorchPlan(pkgs, "CPU build (no NVIDIA GPU found; the model then takes minutes per stage)")
    if gpu or machine not in ("x86_64", "amd64"):
        if gpu:
            return TorchPlan(pkgs, f"CUDA build for the NVIDIA GPU {gpu}", gpu, TORCH_CUDA_SIZE)
        return TorchPlan(pkgs, f"PyPI build for {machine}", gpu)
    return TorchPlan([*pkgs, "--index-url", TORCH_CPU_INDEX],
                     "CPU build (no NVIDIA GPU found, so the small CPU build instead of the 3 GB CUDA one; the "
                     "model then takes minutes per stage)", None, TORCH_CPU_SIZE)


def _pip(python: str, *args: str) -> list[str]:
    # few retries and a short socket timeout: without a network pip would otherwise retry for minutes
    return [python, "-m", "pip", "install", "--progress-bar", "off", "--no-input", "--retries", "2",
            "--timeout", "30", *args]


def setup_steps(base: str, venv: str, requirements: str = LIGHT_REQUIREMENTS) -> list[Step]:
    """Create the venv (if needed) and install the light requirements into it."""
    py = venv_python(venv)
    steps = []
    if not os.path.exists(py):
        # a folder whose interpreter vanished (the system Python was upgraded or removed) is made afresh
        clear = ["--clear"] if os.path.isdir(venv) else []
        steps.append(Step("Creating the environment", [base, "-m", "venv", *clear, venv], 0.15))
    steps.append(Step("Installing the backend's packages", _pip(py, "-r", requirements), 0.85, 30))
    return steps


def model_steps(venv: str, plan: TorchPlan, requirements: str = MODEL_REQUIREMENTS) -> list[Step]:
    py = venv_python(venv)
    return [Step(f"Installing torch ({plan.description.split(' (')[0]})", _pip(py, *plan.pip_args), 0.6, 25),
            Step("Installing transformers and segment-anything", _pip(py, "-r", requirements), 0.4, 30)]


def pip_progress(line: str, seen: int, expected: int) -> tuple[int, float | None]:
    """(packages seen so far, fraction of the step or None) from one line of pip's output."""
    text = line.strip()
    if line.startswith(("Collecting ", "Processing ", "Requirement already satisfied")):  # one per package
        seen += 1
        return seen, min(0.8, 0.8 * seen / max(expected, 1))
    if text.startswith("Installing collected packages"):
        return seen, 0.85
    if text.startswith("Successfully installed"):
        return seen, 1.0
    return seen, None


OFFLINE_SIGNS = ("Failed to establish a new connection", "Name or service not known",
                 "Temporary failure in name resolution", "Network is unreachable", "No route to host")


def failure_reason(lines: list[str]) -> str | None:
    """The last error line of a failed command (pip's "ERROR: ..." or the backend's "ERROR ..."), said
    plainly when pip could not reach its package index."""
    reason = next((line[6:].strip() for line in reversed(lines) if line.startswith(("ERROR:", "ERROR "))), None)
    if reason and any(sign in line for line in lines for sign in OFFLINE_SIGNS):
        return f"the package index cannot be reached (offline, or a proxy is needed): {reason}"
    return reason


def probe_code(modules: dict[str, str]) -> str:
    """Python code that imports each module for real (a broken wheel fails here, not in find_spec) and
    the backend's worker, and prints {"missing": [pip names], "errors": {module: text}} as JSON."""
    return ("import importlib, json, sys\n"
            f"mods = {dict(modules)!r}\n"
            "missing, errors = [], {}\n"
            "for m, p in list(mods.items()) + [('backend.worker', 'the SocioSeg backend')]:\n"
            "    try:\n"
            "        importlib.import_module(m)\n"
            "    except Exception as exc:\n"
            "        missing.append(p); errors[m] = f'{type(exc).__name__}: {exc}'\n"
            "print(json.dumps({'missing': missing, 'errors': errors, 'python': sys.version.split()[0]}))\n")


def probe(python: str, modules: dict[str, str], timeout: float = 180, plugin_dir: str = PLUGIN_DIR) -> dict:
    """Run the import probe in `python` (cwd = the plugin folder, so `backend` is importable)."""
    try:
        r = subprocess.run([python, "-c", probe_code(modules)], cwd=plugin_dir, capture_output=True, text=True,
                           timeout=timeout, env=clean_env())
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as exc:
        return {"missing": None, "errors": {"python": f"{python} cannot run: {exc}"}}
    return out


def requirements_hash(*paths: str) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def mark_ready(venv: str, stacks: list[str]) -> None:
    """Remember what was installed and checked, and against which requirements (a plugin update that
    changes them asks for the set-up again)."""
    with open(os.path.join(venv, READY), "w", encoding="utf-8") as f:
        json.dump({"stacks": stacks, "light": requirements_hash(LIGHT_REQUIREMENTS),
                   "models": requirements_hash(MODEL_REQUIREMENTS)}, f)


def read_ready(venv: str) -> dict | None:
    try:
        with open(os.path.join(venv, READY), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@dataclass
class EnvStatus:
    state: str          # "missing" | "broken" | "outdated" | "ready"
    text: str
    models: bool = False


def status(venv: str) -> EnvStatus:
    """Quick (no subprocess) summary for the Settings dialog."""
    if not os.path.exists(venv_python(venv)):
        return EnvStatus("missing", f"not set up yet: press 'Set up Python environment' ({LIGHT_SIZE}; creates "
                                f"{venv})")
    ready = read_ready(venv)
    if not ready or "light" not in ready.get("stacks", []):
        return EnvStatus("broken", "set-up did not finish: press 'Set up Python environment' again")
    if ready.get("light") != requirements_hash(LIGHT_REQUIREMENTS):
        return EnvStatus("outdated", "this plugin version needs other packages: press 'Set up Python "
                                     "environment' to update")
    models = "models" in ready.get("stacks", [])
    return EnvStatus("ready", f"ready ({venv})" + ("; model packages installed" if models else
                                                  "; model packages not installed"), models)


def data_venv_python(data: str | None = None) -> str | None:
    """The data folder's venv interpreter when it exists (step 2 of the backend's Python resolution)."""
    try:
        py = venv_python(venv_dir(data if data is not None else data_dir()))
    except Exception:   # QGIS not initialised (scripts, some tests): no profile folder to look in
        return None
    return py if os.path.exists(py) else None


def run_streaming(argv: list[str], on_line, cancel=None, cwd: str | None = None, env: dict | None = None) -> int:
    """Run a command, passing each output line (stdout and stderr merged) to on_line; terminate it when
    cancel() turns true (returns -1 then)."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env or clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, encoding="utf-8", errors="replace")
    finished = follow_lines(proc, proc.stdout, lambda line: on_line(line.rstrip("\n")), cancel)
    rc = proc.wait() if finished else -1
    proc.stdout.close()
    return rc


def follow_lines(proc: subprocess.Popen, stream, on_line, cancel=None) -> bool:
    """Pass each line of `stream` (a pipe of `proc`) to on_line until it ends (True), or stop the
    process as soon as cancel() turns true (False). A thread reads the pipe, so cancel is checked
    every 0.2 s even while the process prints nothing."""
    import queue
    import threading

    lines: queue.Queue = queue.Queue()

    def drain():
        try:
            for line in stream:
                lines.put(line)
        except (OSError, ValueError):    # a pipe closed on cancel just stops
            pass
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    while True:
        if cancel is not None and cancel():
            stop_process(proc)
            return False
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            return True
        on_line(line)
