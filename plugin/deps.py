"""Which Python packages the engines need, what is missing inside this QGIS, and the command to fix it."""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_MODULES = {"numpy": "numpy", "rasterio": "rasterio", "affine": "affine", "shapely": "shapely",
                "pyproj": "pyproj", "pyogrio": "pyogrio", "cv2": "opencv-python-headless",
                "scipy": "scipy", "PIL": "pillow"}
VLM_MODULES = {"torch": "torch", "torchvision": "torchvision", "transformers": "transformers"}
SAM_MODULES = {"segment_anything": "segment-anything"}


def missing(modules: dict[str, str]) -> list[str]:
    """Pip names of the modules that cannot be found (checked without importing them)."""
    out = []
    for mod, pip_name in modules.items():
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(pip_name)
    return out


def python_executable() -> str:
    """The Python that QGIS runs (inside QGIS, sys.executable can be the qgis binary itself)."""
    exe = sys.executable or ""
    if os.path.basename(exe).lower().startswith("python"):
        return exe
    candidate = os.path.join(sys.exec_prefix, "bin", "python3")
    if os.path.exists(candidate):
        return candidate
    candidate = os.path.join(sys.exec_prefix, "python.exe")
    if os.path.exists(candidate):
        return candidate
    return shutil.which("python3") or "python3"


def install_command(packages: list[str], python: str | None = None) -> str:
    if packages and set(packages) <= set(BASE_MODULES.values()):
        target = f'-r "{os.path.join(PLUGIN_DIR, "requirements-plugin.txt")}"'
    else:
        target = " ".join(packages)
    return f'"{python or python_executable()}" -m pip install --user {target}'


def explain_missing(packages: list[str], what: str, python: str | None = None) -> str:
    python = python or python_executable()
    return (f"{what} needs Python packages that {python} cannot import: {', '.join(packages)}.\n\n"
            f"Install them, then run again:\n\n{install_command(packages, python)}\n\n"
            "Or point Plugins > SocioSeg > Settings > 'Python for the backend' at an environment that has "
            "them (the repository's scripts/setup.sh makes one in .venv).")
