"""The background work: capture, both stages over every tile, merge; layers are added on the main thread."""
from __future__ import annotations

import traceback
from dataclasses import dataclass

from qgis.core import Qgis, QgsMessageLog, QgsRectangle, QgsTask

TAG = "SocioSeg"


@dataclass
class DetectParams:
    """Everything one run needs; the panel and the Processing algorithm fill it."""
    satellite_layer: object
    map_layer: object
    query: str
    task: str | None
    extent: QgsRectangle
    crs: object                      # QgsCoordinateReferenceSystem of the extent and the output
    resolution: float = 1.0
    reasoner: str = "mapreader"
    segmenter: str = "grabcut"
    device: str = "auto"
    max_new_tokens: int = 2048
    tile_size: int = 768
    overlap: int = 128
    max_tiles: int = 256
    python: str = ""                 # the worker's interpreter; empty: see worker_client.worker_python


def log(message: str, level=Qgis.Info) -> None:
    QgsMessageLog.logMessage(message, TAG, level)


def run_detection(params: DetectParams, progress=None, cancel=None) -> dict:
    """Capture in QGIS, detect in the worker process; returns {"entities": [{"wkt", "attrs"}], ...}.
    Raises backend errors (InputError, Cancelled) and WorkerError. Shared by the task and Processing."""
    from .capture import capture_scene
    from .worker_client import run_worker, worker_python

    def report(frac, msg):
        if progress:
            progress(frac, msg)

    report(0.0, "capturing layers")
    scene = capture_scene(params.satellite_layer, params.map_layer, params.extent, params.crs,
                          params.resolution, params.tile_size, params.overlap, params.max_tiles)
    request = {"crs_wkt": scene.crs_wkt, "transform": list(scene.transform), "query": params.query,
               "task": params.task, "reasoner": params.reasoner, "segmenter": params.segmenter,
               "device": params.device, "max_new_tokens": params.max_new_tokens,
               "tile_size": params.tile_size, "overlap": params.overlap, "max_tiles": params.max_tiles,
               "features": scene.features}
    report(0.05, f"detecting in {len(scene.tiles)} tile(s)")
    return run_worker(worker_python(params.python), scene.satellite, scene.map_image, scene.valid, request,
                      lambda f, m: report(0.05 + 0.95 * f, m), cancel)


class DetectTask(QgsTask):
    """Runs `run_detection` off the main thread; `on_finished(task)` runs on the main thread."""

    def __init__(self, params: DetectParams, on_finished=None):
        super().__init__(f"SocioSeg: {params.query}", QgsTask.CanCancel)
        self.params = params
        self.on_finished = on_finished
        self.detection = None
        self.error: str | None = None
        self.cancelled = False
        self.message = ""

    def _progress(self, frac: float, message: str) -> None:
        self.message = message
        self.setProgress(max(0.0, min(100.0, 100.0 * frac)))

    def run(self) -> bool:
        from ..backend.errors import Cancelled, SocioSegError
        from .worker_client import WorkerError

        try:
            self.detection = run_detection(self.params, self._progress, self.isCanceled)
            return True
        except Cancelled:
            self.cancelled = True
        except SocioSegError as exc:
            self.error = str(exc)
        except WorkerError as exc:
            self.error = f"{exc}. Check Settings > Python for the backend, and the Diagnostics."
            log(str(exc), Qgis.Critical)
        except Exception as exc:  # never let a failure escape into QGIS's task manager silently
            self.error = (f"internal error: {type(exc).__name__}: {exc}. The details are in the log "
                          f"panel ({TAG}); please attach them and the Diagnostics to a bug report.")
            log(traceback.format_exc(), Qgis.Critical)
        return False

    def finished(self, ok: bool) -> None:
        if self.error:
            log(self.error, Qgis.Warning)
        if self.on_finished:
            self.on_finished(self)
