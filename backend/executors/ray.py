"""`--executor ray`: the tiles of a run as tasks on the workers of a Ray cluster.

Each worker is an actor that opens the scene from its paths (`SceneSource`: a shared folder or object
storage every node can read) and loads the engines once; a task is a batch of tiles in, tile result
files out (written into the run's tile folder, which every worker can write: a shared folder). The
driver plans, hands out batches in row order, reads the files back as they come and merges them in the
band (its memory does not grow with the area), exactly as the local executor does.

A worker that dies is restarted and its task run again (Ray's actor restarts and task retries); a run
stopped and started again with --resume reads the finished tile files and computes only the rest.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from ..errors import InputError, SocioSegError
from ..pipeline.detect import Detection, EngineFacts, RunPlan, RunSettings, Scene, SceneSource, plan, run_tiles
from ..pipeline.resume import read_tile, write_tile
from ..pipeline.stages import CancelCheck, Progress, SegmenterSession, check_cancel

log = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Engines that need an accelerator where one is there: a worker asks Ray for a GPU for them.
GPU_KINDS = {"qwen", "sam2", "sam"}


@dataclass(frozen=True)
class EngineSpecs:
    """How every worker builds the engines (the CLI's --reasoner/--segmenter/--device and settings).
    `reasoner` "openai:URL1,URL2,..." is a pool of model servers: worker i talks to URL i mod n."""
    reasoner: str
    segmenter: str
    device: str = "auto"
    generation: object = None
    server: dict | None = None

    def __post_init__(self):
        # Model folders, checkpoints and legends given as relative paths: workers run in another folder.
        for field in ("reasoner", "segmenter"):
            kind, *args = getattr(self, field).split(":")
            if kind != "openai":
                args = [os.path.abspath(a) if a and os.path.exists(a) else a for a in args]
                object.__setattr__(self, field, ":".join([kind, *args]))

    def urls(self) -> list[str]:
        kind, _, rest = self.reasoner.partition(":")
        return [u.strip() for u in rest.split(",") if u.strip()] if kind == "openai" else []

    def for_worker(self, index: int) -> "EngineSpecs":
        urls = self.urls()
        if len(urls) <= 1:
            return self
        return EngineSpecs(f"openai:{urls[index % len(urls)]}", self.segmenter, self.device, self.generation,
                           self.server)

    def build(self):
        from ..engines import build_reasoner, build_segmenter

        return (build_reasoner(self.reasoner, self.device, self.generation, self.server),
                build_segmenter(self.segmenter, self.device))

    def needs_gpu(self) -> bool:
        kinds = {self.reasoner.partition(":")[0], self.segmenter.partition(":")[0]}
        return self.device != "cpu" and bool(kinds & GPU_KINDS)


class TileWorker:
    """One worker process: the scene opened and the engines loaded once, then batch after batch."""

    def __init__(self, source: SceneSource, engines: EngineSpecs, settings: RunSettings):
        self.scene = source.open()
        self.reasoner, self.segmenter = engines.build()
        self.settings = settings
        self.session = SegmenterSession(self.segmenter)
        self.facts = EngineFacts.of(self.reasoner, self.segmenter, self.scene, settings)   # prepares the reasoner

    def engine_facts(self) -> EngineFacts:
        return self.facts

    def pid(self) -> int:
        return os.getpid()

    def run(self, tiles) -> list[str]:
        """Tile result files of `tiles` in the run's tile folder; returns their paths."""
        done = run_tiles(self.scene, list(tiles), self.settings, self.reasoner, self.session)
        return [write_tile(self.settings.tiles_dir, rec) for rec, _ in done]


def connect(address: str | None, workers: int):
    """Ray on `address` ("auto", "HOST:PORT" or "ray://HOST:PORT" for a cluster) or, with None, a Ray
    started here for this run with `workers` CPUs. Workers import this backend from the path it has
    here: on a cluster, every node needs it at the same path (a shared folder) or installed."""
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray needs Ray: pip install 'ray[default]' (or use --executor local)") from None
    if ray.is_initialized():
        return ray
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}}
    try:
        if address:
            ray.init(address=address, runtime_env=env, logging_level=logging.WARNING, log_to_driver=True)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, runtime_env=env, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        auth = ("; a cluster started by `ray start` uses token authentication (Ray's default): set "
                "RAY_AUTH_MODE=token here (the token is read from ~/.ray/auth_token or RAY_AUTH_TOKEN)"
                if address and not os.environ.get("RAY_AUTH_MODE") else "")
        raise InputError(f"cannot reach the Ray cluster at {address} ({str(exc).splitlines()[0]}): start it with "
                         f"`ray start --head` or check --ray-address{auth}") from None
    return ray


def _unwrap(exc: Exception) -> Exception:
    """A worker's own error (a bad input, a model that does not load) as raised there."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, SocioSegError) else exc


class RayExecutor:
    """`workers` actors (default: the cluster's CPUs, one per GPU where the engines use one);
    `in_flight` batches queued per worker keep it busy while the driver merges."""

    def __init__(self, engines: EngineSpecs, address: str | None = None, workers: int | None = None,
                 max_retries: int = 3, in_flight: int = 2):
        self.engines, self.address, self.workers = engines, address, workers
        self.max_retries, self.in_flight = max_retries, in_flight
        self.actors: list = []

    def run(self, scene: Scene, settings: RunSettings, progress: Progress | None = None,
            cancel: CancelCheck | None = None) -> Detection:
        if scene.source is None:
            raise InputError("--executor ray needs inputs given as files (a scene from load_scene)")
        if not settings.tiles_dir:
            raise InputError("--executor ray needs a tile folder every worker can write (RunSettings.tiles_dir)")
        if settings.keep_tiles:
            raise InputError("keep_tiles holds every tile's full result in memory: use the local executor")
        ray = connect(self.address, self.workers or 2)
        self.actors = self._start(ray, scene.source, settings)
        try:
            # Every worker ready before the first batch: one that cannot open the inputs or load the
            # models says so now, and the progress line's rate is not diluted by start-up.
            facts = ray.get([a.engine_facts.remote() for a in self.actors])[0]
        except Exception as exc:     # a worker's own refusal (query, legend, model) reaches the user as is
            self.shutdown()
            raise _unwrap(exc) from None
        run = plan(scene, settings, facts, progress)
        try:
            self._execute(ray, run, progress, cancel)
        except BaseException:
            run.abandon()
            self.shutdown()
            raise
        self.shutdown()
        if progress:
            progress(1.0, "merging tiles")
        return run.finish()

    def _start(self, ray, source: SceneSource, settings: RunSettings) -> list:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if self.engines.needs_gpu() else 0
        n = self.workers or (gpus or max(1, int(resources.get("CPU", 1))))
        actor = ray.remote(TileWorker).options(
            max_restarts=-1, max_task_retries=self.max_retries, num_cpus=1, num_gpus=1 if gpus else 0)
        # The tile list travels in the plan on the driver only; workers get the grid and the paths.
        bare = SceneSource(source.satellite, source.map, source.grid)
        return [actor.remote(bare, self.engines.for_worker(i), settings) for i in range(n)]

    def _execute(self, ray, run: RunPlan, progress: Progress | None, cancel: CancelCheck | None) -> None:
        size = max(1, run.settings.batch_size)
        queue = [run.todo[i:i + size] for i in range(0, len(run.todo), size)]
        queue.reverse()                         # pop() from the end: row-major order
        pending: dict = {}                      # ObjectRef -> (actor index, tiles)
        load = [0] * len(self.actors)
        n = max(run.total, 1)
        started = time.perf_counter()

        def submit():
            while queue:
                i = min(range(len(self.actors)), key=load.__getitem__)
                if load[i] >= self.in_flight:
                    return
                tiles = queue.pop()
                pending[self.actors[i].run.remote(tiles)] = (i, tiles)
                load[i] += 1

        submit()
        while pending:
            check_cancel(cancel)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                i, tiles = pending.pop(ref)
                load[i] -= 1
                try:
                    paths = ray.get(ref)
                except Exception as exc:
                    raise _unwrap(exc) from None
                for tile, path in zip(tiles, paths):
                    rec = read_tile(path, tile)
                    if rec is None:             # damaged on the way (a full shared disk): compute it again
                        queue.append([tile])
                        continue
                    run.add(rec, saved=True)
                if progress:
                    rate = (run.done - run.resumed) / max(time.perf_counter() - started, 1e-9)
                    progress(run.done / n, f"{tiles[-1].id} done ({run.done}/{n}) on {len(self.actors)} Ray workers"
                             + (f", {rate:.2f} tiles/s" if rate else ""))
            submit()

    def shutdown(self) -> None:
        try:
            import ray
        except ImportError:
            return
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:      # already gone
                pass
        self.actors = []
