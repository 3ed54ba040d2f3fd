"""Running the backend in its own Python process and reading its progress, result and errors.

QGIS's process already holds its own GDAL, GEOS and PROJ; the wheels of rasterio, shapely and pyproj
bring other copies, and mixing them in one process gives empty rasters or crashes. The worker process
(`python -m backend run-scene`) has only its own copies, and torch never loads into QGIS. The folder,
the request, the result and the message lines are defined once, in backend/contract.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from .deps import PLUGIN_DIR, python_executable
from .environment import follow_lines


def worker_python(configured: str = "") -> str:
    """The configured interpreter, else the environment the plugin set up in its data folder (Settings >
    Set up Python environment), else the plugin folder's .venv (developers), else QGIS's own Python."""
    from .environment import data_venv_python

    if configured:
        return configured
    if data_venv_python():
        return data_venv_python()
    for candidate in (os.path.join(PLUGIN_DIR, ".venv", "bin", "python"),
                      os.path.join(PLUGIN_DIR, ".venv", "Scripts", "python.exe")):
        if os.path.exists(candidate):
            return candidate
    return python_executable()


def worker_env(python: str, extra: dict | None = None) -> dict:
    """QGIS's environment for the backend's Python, plus `extra` (the model server's API key: passed this
    way only, never written into the scene folder)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra or {}))
    if os.path.realpath(python) != os.path.realpath(sys.executable or ""):
        env.pop("PYTHONHOME", None)   # QGIS's own Python home would break another interpreter
    return env


class WorkerError(RuntimeError):
    """The worker died without a user-level error message (a bug or a broken installation)."""


def run_worker(python: str, folder: str, progress=None, cancel=None, warn=None, extra_env: dict | None = None):
    """Run the worker on a scene folder (backend/contract.py), stream its messages; returns its
    SceneResult. `progress(fraction, done, total, text)`; `warn(text)` for each warning; `extra_env`
    is added to its environment (see worker_env).

    Raises InputError for problems the user can fix, Cancelled when `cancel()` turns true (the worker
    is terminated), WorkerError otherwise."""
    from ..backend import contract
    from ..backend.errors import Cancelled, InputError

    try:
        proc = subprocess.Popen([python, "-m", "backend", "run-scene", folder], cwd=PLUGIN_DIR,
                                env=worker_env(python, extra_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, encoding="utf-8", errors="replace")
    except OSError as exc:
        raise WorkerError(f"cannot start the backend's Python {python!r}: {exc}") from None
    stderr: list[str] = []
    err_reader = threading.Thread(target=_drain, args=(proc.stderr, stderr.append), daemon=True)
    err_reader.start()
    errors: list[str] = []

    def on_line(line: str) -> None:
        msg = contract.parse_line(line)
        if msg is None:
            return
        if msg.kind == "PROGRESS" and progress is not None:
            progress(msg.fraction, msg.done, msg.total, msg.text)
        elif msg.kind == "WARNING" and warn is not None:
            warn(msg.text)
        elif msg.kind == "ERROR":
            errors.append(msg.text)

    if not follow_lines(proc, proc.stdout, on_line, cancel):
        _close(proc)
        raise Cancelled("cancelled by the user")
    error = errors[-1] if errors else None
    rc = proc.wait()
    err_reader.join(timeout=5)
    _close(proc)
    if rc == 2 and error:
        raise InputError(error)
    if rc != 0:
        tail = "".join(stderr)[-2000:].strip()
        missing = missing_module(tail)
        if missing:       # a Python without the environment (qgis_process, a fresh profile): the set-up advice
            from .deps import explain_missing
            raise InputError(explain_missing([missing], "SocioSeg", python))
        raise WorkerError(f"the backend worker ({python}) exited with code {rc}: {tail or 'no output'}")
    return contract.SceneResult.read(folder)


def missing_module(stderr: str) -> str | None:
    """The pip name of the package whose import failed in the worker's traceback, or None."""
    import re

    from .deps import BASE_MODULES, SAM_MODULES, VLM_MODULES

    found = re.findall(r"ModuleNotFoundError: No module named '([^'.]+)", stderr)
    if not found:
        return None
    return {**BASE_MODULES, **VLM_MODULES, **SAM_MODULES}.get(found[-1], found[-1])


def _drain(stream, put) -> None:
    """Copy a pipe's lines to `put`; a pipe closed on cancel just stops."""
    try:
        for line in stream:
            put(line)
    except (OSError, ValueError):
        pass


def _close(proc) -> None:
    for stream in (proc.stdout, proc.stderr):
        try:
            stream.close()
        except OSError:
            pass


def missing_in_worker(python: str, modules: dict[str, str] | None = None) -> list[str] | None:
    """Pip names of `modules` (default: the backend's base packages) the worker Python lacks; None if
    it cannot be run at all."""
    from .deps import BASE_MODULES

    code = ("import importlib.util, json; mods = %r\n"
            "print(json.dumps([p for m, p in mods.items() if importlib.util.find_spec(m) is None]))"
            % (modules or BASE_MODULES))
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60,
                           env=worker_env(python))
        return json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None
