"""The background work: capture into a scene folder, detect in the worker process; layers are added on
the main thread. Parameters in (`DetectParams`), a typed result out (`contract.SceneResult`)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field

from qgis.core import Qgis, QgsMessageLog, QgsRectangle, QgsTask

from ..backend.contract import TILES_START, SceneRequest, SceneResult, Throughput, TilePlan

TAG = "SocioSeg"
CAPTURE_SHARE = 0.2      # of the progress bar: rendering the layers; the rest is the worker's


@dataclass
class DetectParams:
    """Everything one run needs; the panel and the Processing algorithm fill it."""
    satellite_layer: object
    map_layers: list                 # one or more raster / vector layers read together as the map
    query: str
    task: str | None
    extent: QgsRectangle
    crs: object                      # QgsCoordinateReferenceSystem of the extent and the output
    resolution: float = 1.0          # metres per pixel
    reasoner: str = "mapreader"
    segmenter: str = "grabcut"
    device: str = "auto"
    generation: dict = field(default_factory=dict)     # reasoners.qwen.GenerationSettings fields
    tile_plan: TilePlan = field(default_factory=TilePlan)
    python: str = ""                 # the worker's interpreter; empty: see worker_client.worker_python
    # An openai: reasoner's options (contract.SERVER_KEYS) and the auth configuration of its API key;
    # None: the plugin's Settings (Processing and scripts leave them so).
    server: dict | None = None
    server_authcfg: str | None = None
    outline: str = "map"             # contract.OUTLINES


def log(message: str, level=Qgis.Info) -> None:
    QgsMessageLog.logMessage(message, TAG, level)


# CLI wording in backend messages, and the plugin control that does the same (the backend serves both).
CONTROLS = [(", a legend file with that class (--legend),", ","), (" (--legend)", ""),
            ("give a vector map,", "check a vector Map layer (e.g. an OpenStreetMap extract),"),
            ("--reasoner qwen", "Engine: SocioReasoner"), ("--task class", "Task level: class"),
            ("--task function", "Task level: function"), ("--task name", "Task level: name"),
            ("--max-tiles", "Settings > Max tiles"), ("--resolution", "Resolution"), ("--bbox", "Area"),
            ("--reasoner openai:URL, e.g. http://gpu-box:8000/v1", "Settings > Model server > URL"),
            ("its URL: --reasoner openai:http://gpu-box:8000/v1", "its URL: type it under Settings > Model server > URL"),
            ("e.g. --reasoner openai:", "Settings > Model server > URL, e.g. "),
            ("in the SOCIOSEG_API_KEY environment variable", "under Settings > Model server > API key"),
            ("--served-model", "Settings > Model server > Served model"),
            ("; --dump DIR keeps every answer", ""), ("--max-new-tokens", "Settings > Response budget (tokens)"),
            ("raise --request-timeout or lower --concurrency", "lower Settings > Model server > Requests in flight"),
            (" (--request-timeout)", ""),
            ("--concurrency", "Settings > Model server > Requests in flight"),
            ("--task", "Task level"), ("--reasoner", "Engine"),
            ("--segmenter", "Settings > Segmenter"), ("--device", "Settings > Device")]


def crs_problem(satellite_layer, map_layers: list) -> str | None:
    """A layer without a coordinate reference system cannot be placed: name it and the QGIS action that
    sets one (a map without CRS otherwise ends as 'no usable features' from the worker)."""
    for role, layer in [("Satellite layer", satellite_layer)] + [("Map layer", m) for m in map_layers]:
        if layer is not None and not layer.crs().isValid():
            return (f"The {role} '{layer.name()}' has no coordinate reference system (CRS): set it under "
                    "Layer Properties > Source (right-click the layer in the Layers panel), then Run again.")
    return None


def without_scene_folder(message: str, folder: str) -> str:
    """A worker message with the temporary scene folder's files said as what they hold: a temporary path
    means nothing to the user, and the folder is gone when they read it."""
    from ..backend import contract

    words = {contract.FEATURES_FILE: "the checked vector Map layers (as rendered for this Area)",
             contract.MAP_FILE: "the Map layers (as rendered for this Area)",
             contract.SATELLITE_FILE: "the Satellite layer (as rendered for this Area)"}
    for name, said in words.items():
        message = message.replace(os.path.join(folder, name), said)
    return message.replace(folder + os.sep, "").replace(folder, "the rendered layers")


def plugin_wording(message: str) -> str:
    """A backend message with command-line options replaced by the panel's controls."""
    for flag, control in CONTROLS:
        message = message.replace(flag, control)
    return message


def run_detection(params: DetectParams, progress=None, cancel=None, warn=None) -> SceneResult:
    """Capture in QGIS, detect in the worker process. `progress(fraction, text)`.
    Raises backend errors (InputError, Cancelled) and WorkerError. Shared by the task and Processing."""
    from ..backend.errors import InputError
    from .capture import capture_scene
    from .worker_client import run_worker, worker_python

    def report(frac, msg):
        if progress:
            progress(frac, msg)

    problem = crs_problem(params.satellite_layer, params.map_layers)
    if problem:
        raise InputError(problem)
    server, extra_env = {}, {}
    if params.reasoner.startswith("openai:"):      # before rendering: a missing key is said at once
        from .server_settings import key_env
        from .settings import PluginSettings

        s = PluginSettings.load()
        server = dict(params.server) if params.server is not None else s.server_options()
        extra_env = key_env(params.server_authcfg if params.server_authcfg is not None else s.server_authcfg)
    try:
        folder = tempfile.mkdtemp(prefix="socioseg-scene-")
    except OSError as exc:
        raise InputError(f"cannot make a folder in {tempfile.gettempdir()} for the rendered layers "
                         f"({exc.strerror or exc}): free space there or make it writable") from None
    try:
        report(0.0, "rendering the layers")
        cap = capture_scene(folder, params.satellite_layer, params.map_layers, params.extent, params.crs,
                            params.resolution, params.tile_plan,
                            lambda f: report(CAPTURE_SHARE * f, "rendering the layers"), cancel)
        request = SceneRequest(cap.grid, params.query, params.task, params.tile_plan, cap.tiles,
                               params.reasoner, params.segmenter, params.device, dict(params.generation),
                               cap.satellite, cap.map_image, cap.map_features, cap.map_masks_coverage,
                               server=server, outline=params.outline)
        request.write(folder)
        report(CAPTURE_SHARE, f"detecting in {len(cap.tiles)} tile(s)")
        clock = Throughput()

        def worker_progress(frac, done, total, text):
            rate = clock.update(done, total, time.monotonic()) if total and frac >= TILES_START else ""
            report(CAPTURE_SHARE + (1 - CAPTURE_SHARE) * frac, f"{rate} — {text}" if rate else text)

        return run_worker(worker_python(params.python), folder, worker_progress, cancel, warn, extra_env)
    except InputError as exc:
        raise InputError(without_scene_folder(str(exc), folder)) from None
    except OSError as exc:      # writing the scene: a full disk, a read-only temporary folder
        raise InputError(f"{exc}. The layers are rendered into {tempfile.gettempdir()} before detection: "
                         "free space there, or choose a smaller Area or a coarser Resolution") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class DetectTask(QgsTask):
    """Runs `run_detection` off the main thread; `on_finished(task)` runs on the main thread.
    Afterwards exactly one of `result`, `error`, `cancelled` tells how it ended."""

    def __init__(self, params: DetectParams, on_finished=None):
        super().__init__(f"SocioSeg: {params.query}", QgsTask.CanCancel)
        self.params = params
        self.on_finished = on_finished
        self.result: SceneResult | None = None
        self.error: str | None = None
        self.cancelled = False
        self.message = ""
        self.warnings: list[str] = []

    def _progress(self, frac: float, message: str) -> None:
        self.message = message
        self.setProgress(max(0.0, min(100.0, 100.0 * frac)))

    def run(self) -> bool:
        from ..backend.errors import Cancelled, SocioSegError
        from .worker_client import WorkerError

        try:
            self.result = run_detection(self.params, self._progress, self.isCanceled, self.warnings.append)
            return True
        except Cancelled:
            self.cancelled = True
        except SocioSegError as exc:
            self.error = plugin_wording(str(exc))
        except WorkerError as exc:
            self.error = f"{exc}. Check Settings > Python for the backend, and the Diagnostics."
            log(str(exc), Qgis.Critical)
        except Exception as exc:  # never let a failure escape into QGIS's task manager silently
            self.error = (f"internal error: {type(exc).__name__}: {exc}. The details are in the log "
                          f"panel ({TAG}); please attach them and the Diagnostics to a bug report.")
            log(traceback.format_exc(), Qgis.Critical)
        if self.isCanceled():
            self.cancelled, self.error = True, None     # whatever broke while stopping, the user cancelled
        return False

    def finished(self, ok: bool) -> None:
        if not ok and self.result is None and self.error is None:
            # cancelled while still queued: run() never ran, so nothing else says how it ended
            self.cancelled = True
        if self.error:
            log(self.error, Qgis.Warning)
        if self.on_finished:
            self.on_finished(self)
