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

from . import contract
from .errors import InputError, SocioSegError


def _open_on_grid(path: str, grid, what: str, use_mask: bool = True, own_lattice: bool = False):
    """A GeoTIFF written on `grid` (RGB, or RGBA with alpha 0 = no data), opened for reading tile
    windows (backend/geo/window.py); every failure names the file. With `own_lattice`, a georeferenced
    file on its own pixels (an XYZ map captured at its tiles' pixels in Web Mercator) is read onto the
    grid here, as the CLI reads any map file."""
    import rasterio
    from rasterio.enums import Resampling

    from .geo.window import GridRaster

    def error(exc):
        return contract.RequestError(f"cannot read the {what} image {path} (truncated?): {exc}; run again")

    try:
        with rasterio.open(path) as src:
            elsewhere = own_lattice and src.crs is not None and (src.crs != grid.crs or src.transform != grid.transform)
            if (not elsewhere and (src.width, src.height) != (grid.width, grid.height)) or src.count not in (3, 4):
                raise contract.RequestError(
                    f"the {what} image {path} is {src.width} x {src.height} px with {src.count} bands, "
                    f"not the request's {grid.width} x {grid.height} RGB(A) grid: run again")
    except rasterio.errors.RasterioIOError as exc:
        raise error(exc) from None
    return GridRaster(path, grid, Resampling.nearest, use_mask=use_mask, fourth_is_alpha=True, error=error)


def load_scene_folder(folder: str, req: contract.SceneRequest):
    """The request's files as the pipeline's Scene (the grid, both images read tile by tile when the
    tiles run, the features)."""
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    from .geo.grid import Grid
    from .geo.vectormap import VectorMap
    from .geo.window import any_valid_both
    from .pipeline.detect import Scene
    from .pipeline.resume import file_identity

    try:
        crs = CRS.from_wkt(req.grid.crs_wkt)
    except CRSError as exc:
        raise contract.RequestError(f"the scene request's grid CRS is not a valid WKT CRS ({exc}): "
                                    "set a valid project CRS in QGIS (Project > Properties > CRS)") from None
    grid = Grid(crs, Affine(*req.grid.transform), req.grid.width, req.grid.height)
    sat_path, map_path = req.path(folder, "satellite"), req.path(folder, "map_image")
    sat = _open_on_grid(sat_path, grid, "satellite")
    try:
        if not sat.any_valid():
            raise InputError("the satellite layer has no pixels in this area: choose another Area or Satellite layer")
        map_src = _open_on_grid(map_path, grid, "map", use_mask=req.map_masks_coverage, own_lattice=True)
        if req.map_masks_coverage and not any_valid_both(sat, map_src):
            map_src.close()
            raise InputError("the map layers have no pixels where the satellite layer has: choose map layers "
                             "that cover the Area")
    except BaseException:
        sat.close()
        raise
    vmap = VectorMap.read(req.path(folder, "map_features"), crs) if req.map_features else None
    return Scene(grid, None, None, None, req.tiles, vmap, (sat, map_src, req.map_masks_coverage),
                 {"satellite": file_identity(sat_path), "map": file_identity(map_path)})


def check_result_writable(folder: str) -> None:
    """result.json can be written: found now, not after all the work."""
    import os

    from .output.atomic import check_writable

    path = os.path.join(folder, contract.RESULT_FILE)
    if os.path.isdir(path):
        raise contract.RequestError(f"the scene folder {folder} holds a folder named {contract.RESULT_FILE} where "
                                    "the worker writes its result: remove it and run again")
    check_writable(path, "scene folder")


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
    from .pipeline.stages import PipelineOptions, answered_summary, no_answers_message

    from .preflight import check_query

    started = time.monotonic()
    req = req or contract.SceneRequest.read(folder)
    req.query = check_query(req.query, "the query")
    check_result_writable(folder)
    parse_reasoner(req.reasoner), parse_segmenter(req.segmenter)     # cheap checks before reading rasters
    generation = generation_settings(req.generation)
    total = len(req.tiles)
    scene = load_scene_folder(folder, req)

    def progress(frac, msg):
        start = contract.TILES_START
        print(contract.progress_line(start + (1 - start) * frac, min(total, int(frac * total + 1e-9)), total, msg),
              flush=True)

    print(contract.progress_line(0.02, 0, total, "loading engines"), flush=True)
    reasoner = build_reasoner(req.reasoner, req.device, generation, req.server or None)
    segmenter = build_segmenter(req.segmenter, req.device)
    progress(0.0, "engines loaded")          # the tile clock starts here, not before the model loads
    handler = _Warnings()
    logging.getLogger("backend").addHandler(handler)
    try:
        det = detect(scene, req.query, reasoner, segmenter, task=req.task, progress=progress,
                     options=PipelineOptions(outline=req.outline))
        if det.asked and not det.answered:     # an empty result would be a wrong success
            raise InputError(no_answers_message(det.asked, det.unanswered_notes, generation.max_new_tokens))
        partial = answered_summary(det.asked, det.answered)
        if partial:
            logging.getLogger("backend").warning("only %s: the others got no usable answer from the model "
                                                 "(their area is left empty)", partial)
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
