"""Multi-process training for real: `accelerate launch` with two CPU processes (gloo, DDP) runs
`training.grpo` and `training.sft` on tiny models of the real classes.

What is checked: both ranks run (the data is sharded: each SFT rank sees half the tokens), the steps
complete, the final model is written once, and the SFT loss agrees with one process on the same 4
examples per step to within the difference of averaging the loss per rank rather than over all tokens.
GRPO with the released sampling draws its rollouts from each rank's own random stream, so its
rewards are compared with one process under top-k 1 (every rollout the most likely answer, whatever
the stream): two samples that score differently, one on each rank, give the one-process run's rewards
(the loss is zero in both then: identical rollouts of a group have no advantage, so the loss's equality
is not the point; the rewards gathered from both ranks are).
"""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from helpers import ROOT

CONFIG = os.path.join(ROOT, "training", "configs", "accelerate", "cpu2.yaml")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An unfitted tiny VLM and SAM 2 (seconds to build), and a split of two copies of one sample."""
    from backend.selftest.tiny import build_tiny_sam2, build_tiny_vlm
    from backend.synth.sample import write_socioseg

    root = tmp_path_factory.mktemp("mp")
    vlm, proc = build_tiny_vlm(0)
    vlm.save_pretrained(root / "vlm")
    proc.save_pretrained(root / "vlm")
    sam2, sproc = build_tiny_sam2(0)
    sam2.save_pretrained(root / "sam2")
    sproc.save_pretrained(root / "sam2")
    write_socioseg(str(root / "one"), 1, "train", seed=11)
    (sample,) = os.listdir(root / "one" / "train")
    for name in ("a", "b"):
        shutil.copytree(root / "one" / "train" / sample, root / "data" / "train" / name)
    write_socioseg(str(root / "two"), 2, "train", seed=12)      # two different samples
    return {"model": str(root / "vlm"), "segmenter": f"sam2:{root / 'sam2'}", "data": str(root / "data"),
            "two_samples": str(root / "two")}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(module: str, flags: list[str], processes: int, timeout: int = 600) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=ROOT)
    if processes == 1:
        cmd = [sys.executable, "-m", module, *flags]
    else:
        accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
        cmd = [accelerate, "launch", "--config_file", CONFIG, "--main_process_port", str(_port()),
               "-m", module, *flags]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]


def _history(output: str, step: int) -> list[dict]:
    with open(os.path.join(output, f"checkpoint-{step}", "trainer_state.json"), encoding="utf-8") as f:
        return [e for e in json.load(f)["log_history"] if "loss" in e]


def test_accelerate_config_is_two_cpu_processes():
    import yaml

    with open(CONFIG, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    assert cfg["distributed_type"] == "MULTI_CPU" and cfg["num_processes"] == 2 and cfg["use_cpu"] is True


def test_grpo_two_processes(setup, tmp_path):
    out = str(tmp_path / "two")
    _run("training.grpo", ["--model", setup["model"], "--segmenter", setup["segmenter"], "--data", setup["data"],
                           "--num-generations", "2", "--max-completion-length", "8", "--max-steps", "1",
                           "--save-steps", "1", "--eval-steps", "0", "--device", "cpu", "--seed", "0",
                           "--rollout-prompts", "2", "--output", out], 2)
    (h,) = _history(out, 1)
    assert h["loss"] == h["loss"] and "stage2/reward_total" in h and "mask_iou" in h
    assert os.path.isfile(os.path.join(out, "final", "config.json"))


def test_sft_two_processes_shard_the_data_and_agree_with_one(setup, tmp_path):
    common = ["--model", setup["model"], "--segmenter", setup["segmenter"], "--data", setup["data"],
              "--max-steps", "1", "--save-steps", "1", "--logging-steps", "1", "--gradient-accumulation-steps",
              "1", "--device", "cpu", "--seed", "0", "--learning-rate", "1e-3"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _run("training.sft", [*common, "--batch-size", "4", "--output", one], 1)
    _run("training.sft", [*common, "--batch-size", "2", "--output", two], 2)
    (a,), (b,) = _history(one, 1), _history(two, 1)
    assert b["num_tokens"] == a["num_tokens"] / 2          # rank 0 saw half of the step's examples
    assert b["loss"] == pytest.approx(a["loss"], rel=0.05)
    assert os.path.isfile(os.path.join(two, "final", "config.json"))


def test_grpo_two_processes_score_as_one_when_rollouts_do_not_depend_on_the_stream(tiny_models, town_socioseg,
                                                                                   tmp_path):
    """The self-test's fitted tiny VLM (it answers in the released format on the sample tile) on two
    samples that score differently: the sample tile, and the same tile mirrored (its answer then misses)."""
    import numpy as np
    from PIL import Image

    data = tmp_path / "data" / "train"
    shutil.copytree(os.path.join(town_socioseg, "train", "town_0"), data / "a")
    shutil.copytree(os.path.join(town_socioseg, "train", "town_0"), data / "b")
    for name in ("map.png", "sat.png", "mask.png"):
        Image.fromarray(np.asarray(Image.open(data / "b" / name))[:, ::-1].copy()).save(data / "b" / name)
    common = ["--model", tiny_models["reasoner"].split(":", 1)[1], "--segmenter", tiny_models["sam2"],
              "--data", str(tmp_path / "data"), "--num-generations", "2", "--max-completion-length", "160",
              "--max-steps", "1", "--save-steps", "1", "--eval-steps", "0", "--device", "cpu", "--seed", "0",
              "--rollout-prompts", "2", "--top-k", "1"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _run("training.grpo", [*common, "--output", one], 1)
    _run("training.grpo", [*common, "--output", two], 2)
    (a,), (b,) = _history(one, 1), _history(two, 1)
    scored = lambda h: sorted(k for k in h if ("reward" in k or k == "mask_iou") and not k.startswith("seconds"))
    rewards = scored(a)
    assert rewards == scored(b) and len(rewards) >= 4, rewards
    assert a["stage1/reward_format"] > 0 and 0 < a["mask_iou"] < 1, a     # the fitted answers parse; one sample misses
    for k in rewards:
        assert b[k] == pytest.approx(a[k], abs=1e-6), (k, a[k], b[k])
    assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
