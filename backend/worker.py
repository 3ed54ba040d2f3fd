"""`python -m backend run-scene DIR`: the QGIS plugin's worker process.

QGIS renders the layers into a scene folder (backend/contract.py describes it); this process, with its
own Python packages, runs the detection and writes the result. Keeping the backend out of QGIS's
process avoids two copies of GDAL / GEOS / PROJ (QGIS's and the wheels') in one process, and keeps
torch out of QGIS. Messages on stdout follow the contract's line format; a problem the user can fix
is one ERROR line and exit code 2.
"""
from __future__ import annotations

import logging
import sys
import time

import numpy as np

from . import contract
from .errors import InputError, SocioSegError


def _read_rgba(path: str, grid, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(H x W x 3 RGB, H x W alpha > 0) of a GeoTIFF written on `grid`; every failure names the file.
    (Whole-file reading: the tile windows are read by the pipeline once it streams.)"""
    import rasterio

    try:
        with rasterio.open(path) as src:
            if (src.width, src.height) != (grid.width, grid.height) or src.count not in (3, 4):
                raise contract.RequestError(
                    f"the {what} image {path} is {src.width} x {src.height} px with {src.count} bands, "
                    f"not the request's {grid.width} x {grid.height} RGB(A) grid: run again")
            data = src.read()
    except rasterio.errors.RasterioIOError as exc:
        raise contract.RequestError(f"cannot read the {what} image {path} (truncated?): {exc}; run again") from None
    rgb = np.ascontiguousarray(np.moveaxis(data[:3], 0, -1))
    alpha = data[3] > 0 if data.shape[0] == 4 else np.ones(rgb.shape[:2], bool)
    return rgb, alpha


def load_scene_folder(folder: str, req: contract.SceneRequest):
    """The request's files as the pipeline's Scene (the grid, both images, the valid mask, the features)."""
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    from .geo.grid import Grid
    from .geo.vectormap import VectorMap
    from .pipeline.detect import Scene

    try:
        crs = CRS.from_wkt(req.grid.crs_wkt)
    except CRSError as exc:
        raise contract.RequestError(f"the scene request's grid CRS is not a valid WKT CRS ({exc}): "
                                    "set a valid project CRS in QGIS (Project > Properties > CRS)") from None
    grid = Grid(crs, Affine(*req.grid.transform), req.grid.width, req.grid.height)
    sat, valid = _read_rgba(req.path(folder, "satellite"), grid, "satellite")
    if not valid.any():
        raise InputError("the satellite layer has no pixels in this area: choose another Area or Satellite layer")
    map_rgb, map_alpha = _read_rgba(req.path(folder, "map_image"), grid, "map")
    if req.map_masks_coverage:
        valid &= map_alpha
        if not valid.any():
            raise InputError("the map layers have no pixels where the satellite layer has: choose map layers "
                             "that cover the Area")
    vmap = VectorMap.read(req.path(folder, "map_features"), crs) if req.map_features else None
    return Scene(grid, sat, map_rgb, valid, req.tiles, vmap)


def generation_settings(values: dict):
    """The request's generation dict as GenerationSettings; an unknown field is named, not ignored."""
    from dataclasses import fields

    from .reasoners.qwen import GenerationSettings

    known = {f.name for f in fields(GenerationSettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise contract.RequestError(f"unknown generation setting(s) {', '.join(unknown)}: the plugin is newer "
                                    "than its backend; update both")
    try:
        return GenerationSettings(**values)
    except TypeError as exc:
        raise contract.RequestError(f"bad generation settings {values}: {exc}") from None


def inferred_task(query: str, task: str | None) -> str | None:
    """The task level the query is read as (the map reader's interpretation), for the output table."""
    from .pipeline.query import resolve_query

    if task:
        return task
    try:
        return resolve_query(query, None).kind
    except InputError:
        return None


class _Warnings(logging.Handler):
    """Collects the backend's warnings for the result and prints them off the progress line."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        text = record.getMessage()
        if text not in self.messages:
            self.messages.append(text)
            print(contract.warning_line(text), flush=True)


def run_scene(folder: str, req: contract.SceneRequest | None = None) -> contract.SceneResult:
    from .engines import build_reasoner, build_segmenter, parse_reasoner, parse_segmenter
    from .pipeline.detect import detect

    started = time.monotonic()
    req = req or contract.SceneRequest.read(folder)
    parse_reasoner(req.reasoner), parse_segmenter(req.segmenter)     # cheap checks before reading rasters
    generation = generation_settings(req.generation)
    total = len(req.tiles)
    scene = load_scene_folder(folder, req)

    def progress(frac, msg):
        start = contract.TILES_START
        print(contract.progress_line(start + (1 - start) * frac, min(total, int(frac * total + 1e-9)), total, msg),
              flush=True)

    print(contract.progress_line(0.02, 0, total, "loading engines"), flush=True)
    reasoner = build_reasoner(req.reasoner, req.device, generation)
    segmenter = build_segmenter(req.segmenter, req.device)
    progress(0.0, "engines loaded")          # the tile clock starts here, not before the model loads
    handler = _Warnings()
    logging.getLogger("backend").addHandler(handler)
    try:
        det = detect(scene, req.query, reasoner, segmenter, task=req.task, progress=progress)
    finally:
        logging.getLogger("backend").removeHandler(handler)
    task = inferred_task(req.query, req.task)
    entities = []
    for e in det.entities:
        attrs = dict(e.attrs)
        attrs["task"] = attrs.get("task") or task or ""
        entities.append(contract.EntityRecord(e.geometry.wkt, attrs))
    result = contract.SceneResult(entities, total, task, handler.messages, round(time.monotonic() - started, 2))
    result.write(folder)
    return result


def main(folder: str) -> int:
    try:
        result = run_scene(folder)
    except SocioSegError as exc:
        print(contract.error_line(str(exc)), flush=True)
        return 2
    print(contract.done_line(len(result.entities)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
