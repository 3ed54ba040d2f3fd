"""A PNG a person checks at a glance: satellite and map side by side, detected outlines on both."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ..errors import InputError
from ..pipeline.render import draw_outlines, side_by_side
from .atomic import check_writable, commit, staging, write_failure

MAX_WIDTH = 2400


def preview_format(path: str) -> str:
    """The image format Pillow writes for `path`'s extension, or a clear error (checked before any work)."""
    ext = os.path.splitext(path)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise InputError(f"--preview {path}: cannot tell the image format from {ext or 'no extension'!r}; "
                         "use .png (or .jpg)")
    return fmt


def check_preview(path: str, overwrite: bool) -> None:
    preview_format(path)
    check_writable(path, "--preview")
    if os.path.lexists(path) and not overwrite:
        raise InputError(f"{path} exists; pass --overwrite to replace it or choose another --preview")


def write_preview(path: str, satellite: np.ndarray, map_image: np.ndarray, mask: np.ndarray,
                  truth: np.ndarray | None = None, overwrite: bool = True) -> str:
    """Write the preview atomically: a temporary file, checked by reading it back, then renamed."""
    fmt = preview_format(path)
    if os.path.lexists(path) and not overwrite:
        raise InputError(f"{path} exists; pass --overwrite to replace it or choose another --preview")
    sat = draw_outlines(satellite, mask, (255, 255, 0), 3)
    mp = draw_outlines(map_image, mask, (230, 0, 180), 3)
    if truth is not None:
        sat = draw_outlines(sat, truth, (0, 200, 255), 1)
    img = Image.fromarray(side_by_side(sat, mp))
    if img.width > MAX_WIDTH:
        img = img.resize((MAX_WIDTH, round(img.height * MAX_WIDTH / img.width)), Image.LANCZOS)
    if fmt == "JPEG":
        img = img.convert("RGB")
    with staging(path, "--preview") as tmp:
        tmp_path = os.path.join(tmp, os.path.basename(path))
        try:
            img.save(tmp_path, format=fmt)
            with Image.open(tmp_path) as back:
                back.load()    # a full disk can leave a truncated image behind a successful save
        except (OSError, ValueError) as exc:
            raise write_failure(path, "--preview", exc) from None
        commit({tmp_path: os.path.abspath(path)}, [os.path.abspath(path)] if os.path.lexists(path) else [],
               path, "--preview")
    return path
