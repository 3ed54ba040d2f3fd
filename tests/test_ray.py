"""--executor ray on a real local Ray cluster (`ray start --head` on 127.0.0.1 with 2 CPUs, stopped at the end):
the default engine on the real Porto scene and the tiny VLM + SAM 2 give the local executor's places; a
worker killed mid-run is retried; a run stopped and resumed gives the same output; the CLI connects to
the cluster by address."""
import os
import signal
import socket
import subprocess
import sys

import pytest

from backend.errors import Cancelled
from backend.pipeline.detect import RunSettings, detect, load_scene
from helpers import ROOT

ray = pytest.importorskip("ray")
from backend.executors.ray import EngineSpecs, RayExecutor  # noqa: E402

PORTO = os.path.join(ROOT, "..", "shared", "realdata", "porto")
needs_porto = pytest.mark.skipif(not os.path.isdir(PORTO), reason=f"no real scene at {PORTO}")
# About 380 x 380 m of central Porto (Cordoaria, Clérigos) at 1 m: 9 tiles of 160 px.
PORTO_BBOX = (-8.6165, 41.1445, -8.6120, 41.1480)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start --head` on this machine: the GCS on 127.0.0.1, 2 CPUs (two worker processes), a small
    object store; `ray stop` at the end. Token authentication (Ray's default for `ray start`) is off: a
    driver reads RAY_AUTH_MODE when Ray is imported, before this fixture runs, and the cluster listens on
    this machine only (the README says how to join a token cluster: RAY_AUTH_MODE=token)."""
    if ray.is_initialized():
        ray.shutdown()
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = str(tmp_path_factory.mktemp("ray"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--num-cpus", "2", "--include-dashboard", "false", "--temp-dir", temp,
                    "--object-store-memory", str(80 * 2 ** 20), "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=180)
    address = f"127.0.0.1:{port}"
    try:
        ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": ROOT}}, logging_level="WARNING")
        assert ray.cluster_resources().get("CPU") == 2
        yield address
    finally:
        ray.shutdown()
        subprocess.run([ray_bin, "stop"], env=env, capture_output=True, timeout=180)


def _porto():
    return load_scene(os.path.join(PORTO, "satellite.tif"), os.path.join(PORTO, "map_carto.tif"),
                      bbox=PORTO_BBOX, bbox_crs="EPSG:4326", tile_size=160, overlap=24)


def _same(a, b):
    assert len(a.entities) == len(b.entities) > 0
    for x, y in zip(a.entities, b.entities):
        assert x.geometry.equals_exact(y.geometry, 0)
        assert {k: v for k, v in x.attrs.items() if k != "created"} == \
               {k: v for k, v in y.attrs.items() if k != "created"}


@pytest.fixture(scope="module")
def porto_local():
    from backend.engines import build_reasoner, build_segmenter

    scene = _porto()
    assert len(scene.tiles) >= 6
    return detect(scene, "parks", build_reasoner("mapreader"), build_segmenter("grabcut"))


@needs_porto
def test_default_engine_on_porto_equals_the_local_run_with_a_worker_killed(cluster, porto_local, tmp_path):
    """Two workers; once the first tile is back, the other worker (with batches queued) is killed: Ray
    starts it again, runs its tasks again, and the places equal the local run's."""
    ex = RayExecutor(EngineSpecs("mapreader", "grabcut"), workers=2)
    killed, seen = [], []

    def kill_one(frac, msg):
        seen.append((frac, msg))
        if not killed and "done" in msg:
            pid = ray.get(ex.actors[1].pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    out = ex.run(_porto(), RunSettings("parks", tiles_dir=str(tmp_path / "t")), progress=kill_one)
    assert killed
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    _same(out, porto_local)
    assert seen[-1] == (1.0, "merging tiles") and any("on 2 Ray workers" in m for _, m in seen)


@needs_porto
def test_a_stopped_run_resumes_to_the_same_output(cluster, porto_local, tmp_path):
    tiles = str(tmp_path / "t")

    def finished():
        return len([f for f in os.listdir(tiles) if f.endswith(".npz")]) if os.path.isdir(tiles) else 0

    with pytest.raises(Cancelled):
        RayExecutor(EngineSpecs("mapreader", "grabcut"), workers=2).run(
            _porto(), RunSettings("parks", tiles_dir=tiles), cancel=lambda: finished() >= 3)
    kept = finished()
    assert 3 <= kept < len(_porto().tiles)
    out = RayExecutor(EngineSpecs("mapreader", "grabcut"), workers=2).run(
        _porto(), RunSettings("parks", tiles_dir=tiles, resume=True))
    assert out.resumed >= 3
    _same(out, porto_local)


def test_the_tiny_vlm_and_sam2_on_ray_equal_the_local_run(cluster, tiny_models, tmp_path):
    """The tiny VLM is fitted to answer on the self-test's sample tile (at the sample's edge: nothing
    beside it has both inputs): that tile on a worker of the cluster, the model loaded there."""
    from backend.engines import build_reasoner, build_segmenter
    from backend.reasoners.qwen import GenerationSettings
    from backend.selftest.run import QUERY, sample_scene

    from backend.pipeline.stages import PipelineOptions

    g = GenerationSettings(do_sample=False)
    # The tiny model's stage-2 answer may not parse (it is fitted for seconds): keep its stage-1 mask,
    # so that places come from both models either way.
    settings = RunSettings(QUERY, options=PipelineOptions(keep_coarse_on_failure=True))
    local = detect(sample_scene(), settings, build_reasoner(tiny_models["reasoner"], "cpu", g),
                   build_segmenter(tiny_models["sam2"], "cpu"))
    out = RayExecutor(EngineSpecs(tiny_models["reasoner"], tiny_models["sam2"], "cpu", g), workers=2).run(
        sample_scene(), RunSettings(QUERY, options=settings.options, tiles_dir=str(tmp_path / "t")))
    assert out.entities and out.entities[0].attrs["reasoner"].startswith("qwen:")
    assert out.entities[0].attrs["segmenter"].startswith("sam2:")
    assert (out.asked, out.answered) == (local.asked, local.answered) == (1, local.answered)
    _same(out, local)


@needs_porto
def test_the_cli_runs_on_the_cluster_by_address(cluster, porto_local, tmp_path):
    """A second driver process joins the running cluster (--ray-address) and writes GeoParquet; its
    inputs and legend are given relative to its own folder."""
    from backend.output.geoparquet import read_geoparquet

    out = tmp_path / "parks.parquet"
    rel = os.path.relpath(PORTO, ROOT)      # relative paths: the workers run in another folder
    cmd = [sys.executable, "-m", "backend", "detect", "--satellite", os.path.join(rel, "satellite.tif"),
           "--map", os.path.join(rel, "map_carto.tif"), "--query", "parks", "--out", str(out),
           "--bbox", *map(str, PORTO_BBOX), "--bbox-crs", "EPSG:4326", "--tile-size", "160", "--overlap", "24",
           "--executor", "ray", "--ray-address", cluster,
           "--reasoner", "mapreader:" + os.path.relpath(os.path.join(ROOT, "resources", "legends", "osm_carto.json"), ROOT)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    geoms, attrs, _ = read_geoparquet(str(out))
    assert len(geoms) == len(porto_local.entities)
    for g, e in zip(geoms, porto_local.entities):
        assert g.equals(e.geometry)         # written as a one-part MultiPolygon
    assert attrs["name"] == [e.attrs["name"] for e in porto_local.entities]
    assert not os.path.exists(str(out) + ".tiles")
