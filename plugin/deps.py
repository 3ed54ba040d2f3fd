"""Which Python packages the engines need, and what to tell the user when the backend's Python lacks them."""
from __future__ import annotations

from .environment import MODELS_BUTTON, PLUGIN_DIR, SETUP_BUTTON, base_python

__all__ = ["PLUGIN_DIR", "BASE_MODULES", "VLM_MODULES", "SAM_MODULES", "python_executable", "explain_missing"]

BASE_MODULES = {"numpy": "numpy", "rasterio": "rasterio", "affine": "affine", "shapely": "shapely",
                "pyproj": "pyproj", "pyogrio": "pyogrio", "cv2": "opencv-python-headless",
                "scipy": "scipy", "PIL": "pillow"}
VLM_MODULES = {"torch": "torch", "torchvision": "torchvision", "transformers": "transformers"}
SAM_MODULES = {"segment_anything": "segment-anything"}
MODEL_PACKAGES = set(VLM_MODULES.values()) | set(SAM_MODULES.values())


def python_executable() -> str:
    """The Python that QGIS runs on (inside QGIS, sys.executable can be the qgis binary itself)."""
    return base_python() or "python3"


def explain_missing(packages: list[str], what: str, python: str | None = None) -> str:
    """One message that names the button that fixes it (and the manual alternative)."""
    python = python or python_executable()
    model_only = bool(packages) and set(packages) <= MODEL_PACKAGES
    button = MODELS_BUTTON if model_only else SETUP_BUTTON
    does = ("installs torch (the CPU or CUDA build this machine needs), transformers and segment-anything into "
            "the plugin's environment" if model_only else
            "makes the plugin's own Python environment and installs them (a few minutes, once)")
    return (f"{what} needs Python packages that the backend's Python ({python}) cannot import: "
            f"{', '.join(packages)}. Press {button}: it {does}. Or set "
            "Settings > Python for the backend to an interpreter that has them.")
