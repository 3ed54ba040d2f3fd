"""Model files: are the vision-language model and the segmenter here, and how to download them.

No Qt and no QGIS: the Settings dialog shows `model_status` and runs `download_command` in the backend's
Python (huggingface_hub lives there), reading its lines through backend/contract.py.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

from ..backend.hub import WEIGHT_PATTERNS, looks_local    # standard library only: safe inside QGIS

MARKER = ".socioseg-download.json"        # written by `python -m backend download` when every file is in


def models_dir(data: str) -> str:
    return os.path.join(data, "models")


def is_hub_id(ref: str) -> bool:
    return bool(ref) and "/" in ref and not looks_local(ref)


def folder_for(ref: str, models: str) -> str:
    """Where the download of hub id `ref` goes: <models>/<name>."""
    return os.path.join(models, ref.rstrip("/").split("/")[-1])


def segmenter_model(spec: str) -> tuple[str, str | None]:
    """(kind, model reference) of a segmenter spec: grabcut has none, sam2 and sam3 an id or folder, sam a
    file."""
    kind, _, rest = (spec or "grabcut").strip().partition(":")
    kind = kind.lower()
    if kind == "sam":
        return kind, rest.partition(":")[2] or None
    if kind == "sam2":
        from ..backend.segmenters.sam2 import DEFAULT_SAM2    # numpy at most: safe inside QGIS

        return kind, rest or DEFAULT_SAM2
    if kind == "sam3":
        from ..backend.segmenters.sam3 import DEFAULT_SAM3    # numpy at most: safe inside QGIS

        return kind, rest or DEFAULT_SAM3
    return kind, None


def complete_folder(path: str) -> str | None:
    """None when `path` holds a usable model, else what is missing (one short phrase)."""
    if not os.path.isdir(path):
        return "not downloaded"
    if os.path.isdir(os.path.join(path, ".partial")) and os.listdir(os.path.join(path, ".partial")):
        return "download not finished (press Download to resume)"
    marker = os.path.join(path, MARKER)
    if os.path.exists(marker):
        try:
            with open(marker, encoding="utf-8") as f:
                files = json.load(f)["files"]
        except (OSError, ValueError, KeyError):
            return "download record unreadable (press Download again)"
        lost = [f for f in files if not os.path.exists(os.path.join(path, f))]
        return f"{len(lost)} file(s) missing, e.g. {lost[0]}" if lost else None
    if not os.path.exists(os.path.join(path, "config.json")):
        return "no config.json in the folder"
    index = glob.glob(os.path.join(path, "*.index.json"))
    if index:
        try:
            with open(index[0], encoding="utf-8") as f:
                shards = set(json.load(f)["weight_map"].values())
        except (OSError, ValueError, KeyError):
            return f"unreadable {os.path.basename(index[0])}"
        lost = sorted(s for s in shards if not os.path.exists(os.path.join(path, s)))
        return f"weight shard {lost[0]} missing" if lost else None
    if not any(glob.glob(os.path.join(glob.escape(path), w)) for w in WEIGHT_PATTERNS):
        return "no weight files in the folder"
    return None


def _hf_cache_snapshot(ref: str) -> str | None:
    home = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub")
    for snap in sorted(glob.glob(os.path.join(home, "models--" + ref.replace("/", "--"), "snapshots", "*"))):
        if complete_folder(snap) is None:
            return snap
    return None


@dataclass
class ModelStatus:
    present: bool
    path: str | None        # where it is (or will be downloaded to)
    text: str               # one line for the Settings dialog
    downloadable: bool      # a hub id the Download button can fetch
    problem: str = ""       # what is missing, when not present


def model_status(ref: str | None, models: str, what: str) -> ModelStatus:
    if not ref:
        return ModelStatus(True, None, f"{what}: none needed", False)
    path = os.path.expanduser(ref)
    if not is_hub_id(ref):
        if os.path.isfile(path):          # a SAM checkpoint file
            return ModelStatus(True, path, f"{what}: present ({path})", False)
        problem = complete_folder(path) if os.path.exists(path) else "no such file or folder"
        return ModelStatus(problem is None, path, f"{what}: " + ("present" if problem is None else problem)
                           + f" ({path})", False, problem or "")
    local = folder_for(ref, models)
    problem = complete_folder(local)
    if problem is None:
        return ModelStatus(True, local, f"{what}: downloaded ({local})", True)
    cached = _hf_cache_snapshot(ref)
    if cached:
        return ModelStatus(True, cached, f"{what}: in the Hugging Face cache ({cached})", True)
    return ModelStatus(False, local, f"{what}: {problem} (Download puts it in models/{os.path.basename(local)})",
                       True, problem)


def download_command(python: str, ref: str, dest: str, size_only: bool = False) -> list[str]:
    return [python, "-m", "backend", "download", ref, "--dest", dest, *(["--size-only"] if size_only else [])]


def parse_size(lines: list[str]) -> tuple[int, int] | None:
    """(bytes, files) from the SIZE line of `python -m backend download --size-only`."""
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "SIZE":
            return int(parts[1]), int(parts[2])
    return None


def human_size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"



def missing_models_reason(vlm: str, segmenter_spec: str, models: str) -> str | None:
    """Why the vision-language engine would stall or fail for want of weights (transformers would try
    the hub for minutes on an offline machine), naming the button; None when both are present."""
    for what, ref in (("vision-language model", vlm), ("segmenter", segmenter_model(segmenter_spec)[1])):
        status = model_status(ref, models, what)
        if not status.present:
            fix = (f"press Download beside '{what.capitalize()}' in Plugins > SocioSeg > Settings"
                   if status.downloadable else f"correct '{what.capitalize()}' in Plugins > SocioSeg > Settings")
            return f"The {what} {ref} is not here ({status.problem}): {fix}."
    return None
