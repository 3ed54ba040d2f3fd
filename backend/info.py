"""`python -m backend info`: one block with everything a bug report needs."""
from __future__ import annotations

import importlib
import os
import platform
import sys

from . import __version__


def _version(mod: str) -> str:
    try:
        return getattr(importlib.import_module(mod), "__version__", "installed")
    except Exception as exc:  # a broken install is exactly what this block must show
        return f"missing ({type(exc).__name__}: {exc})"


def _hf_cache() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
        return HF_HUB_CACHE
    except Exception:
        return os.path.expanduser("~/.cache/huggingface/hub")


def _cached(repo_id: str) -> str:
    folder = os.path.join(_hf_cache(), "models--" + repo_id.replace("/", "--"))
    return "present" if os.path.isdir(folder) else "not downloaded"


def diagnostics() -> str:
    from .reasoners.qwen import BASE_VLM, DEFAULT_VLM
    from .segmenters.sam2 import DEFAULT_SAM2

    lines = [f"socioseg backend {__version__}",
             f"python {sys.version.split()[0]} ({sys.executable})",
             f"platform {platform.platform()}"]
    for mod in ("numpy", "torch", "torchvision", "transformers", "segment_anything", "trl", "peft",
                "rasterio", "shapely", "pyproj", "pyogrio", "cv2", "scipy", "PIL"):
        lines.append(f"{mod} {_version(mod)}")
    try:
        import torch
        cuda = torch.cuda.is_available()
        dev = f"cuda ({torch.cuda.get_device_name(0)})" if cuda else "cpu"
        if not cuda and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            dev = "mps"
        lines.append(f"device auto -> {dev}")
    except Exception as exc:
        lines.append(f"device unknown (torch: {exc})")
    try:
        import rasterio
        lines.append(f"gdal {rasterio.__gdal_version__}")
    except Exception:
        pass
    lines.append(f"hugging face cache {_hf_cache()} (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')})")
    for ref in (DEFAULT_VLM, BASE_VLM, DEFAULT_SAM2):
        lines.append(f"model {ref}: {_cached(ref)}")
    lines.append("default engines: reasoner mapreader, segmenter grabcut (no weights needed)")
    return "\n".join(lines)
