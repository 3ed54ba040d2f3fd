"""The model-server reasoner against a REAL server on 127.0.0.1: `transformers serve` serving the
self-test's tiny Qwen2.5-VL, started and stopped here. No mock server."""
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from backend.engines import build_reasoner
from backend.errors import InputError
from backend.pipeline.stages import make_view, run_batch, run_tile
from backend.reasoners.openai_server import OpenAIReasoner, ServerSettings, sampling_params
from backend.reasoners.qwen import GenerationSettings
from backend.segmenters.grabcut import GrabCutSegmenter

GREEDY = GenerationSettings(max_new_tokens=400, do_sample=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    model_dir = tiny_models["reasoner"].split(":", 1)[1]
    port = _free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "transformers")
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "w")
    proc = subprocess.Popen([exe, "serve", model_dir, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {proc.returncode}: see {log.name}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("transformers serve did not come up in 120 s")
        yield url + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _view(tiny_models, reasoner, tile_id="tile"):
    scene = tiny_models["scene"]
    t = scene.tiles[0]
    sat, map_rgb, _ = scene.read(t)
    return make_view(map_rgb, sat, "school", reasoner, transform=scene.grid.window_transform(t.x0, t.y0),
                     crs=scene.grid.crs, tile_id=tile_id)


def test_server_and_in_process_paths_give_the_same_result(server, tiny_models):
    remote = OpenAIReasoner(ServerSettings(server), GREEDY)
    local = build_reasoner(tiny_models["reasoner"], "cpu", GREEDY)
    assert remote.model == tiny_models["reasoner"].split(":", 1)[1]       # discovered from /v1/models
    a = run_tile(_view(tiny_models, remote), remote, GrabCutSegmenter())
    b = run_tile(_view(tiny_models, local), local, GrabCutSegmenter())
    assert a.stage1.ok and a.responses == b.responses and a.prompts == b.prompts
    assert np.array_equal(a.coarse_mask, b.coarse_mask) and a.coarse_mask.any()
    assert np.array_equal(a.final_mask, b.final_mask) and a.refined == b.refined
    assert a.generation["server"] == server and a.generation["do_sample"] is False


def test_concurrent_requests_equal_one_at_a_time(server, tiny_models):
    remote = OpenAIReasoner(ServerSettings(server, concurrency=3), GREEDY)
    views = [_view(tiny_models, remote, f"t{i}") for i in range(3)]
    batch = run_batch(views, remote, GrabCutSegmenter())
    one = run_tile(views[0], remote, GrabCutSegmenter())
    assert all(r.responses == one.responses for r in batch)


def test_engine_spec_reaches_the_server(server):
    r = build_reasoner(f"openai:{server}", generation=GREEDY, server={"concurrency": 2})
    assert isinstance(r, OpenAIReasoner) and r.concurrency == 2 and r.name.startswith(f"openai:{server}#")


def test_an_unreachable_server_is_named_at_once():
    port = _free_port()
    with pytest.raises(InputError, match=f"cannot reach the model server at http://127.0.0.1:{port}/v1"):
        OpenAIReasoner(ServerSettings(f"http://127.0.0.1:{port}/v1"))
    with pytest.raises(InputError, match="http:// or https://"):
        OpenAIReasoner(ServerSettings("gpu-box:8000"))


def test_requests_carry_the_released_sampling():
    p = sampling_params(GenerationSettings(seed=3))
    assert (p["temperature"], p["top_p"], p["max_tokens"], p["seed"]) == (1.0, 0.8, 2048, 3)
    assert p["extra_body"]["top_k"] == 100 and p["extra_body"]["repetition_penalty"] == 1.0
    assert '"top_k": 100' in p["extra_body"]["generation_config"]
    assert sampling_params(GenerationSettings(do_sample=False))["temperature"] == 0.0
