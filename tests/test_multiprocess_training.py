"""Multi-process training for real: `accelerate launch` with two CPU processes (gloo, DDP) runs
`training.grpo` and `training.sft` on tiny models of the real classes.

What is checked: both ranks run (the data is sharded: each SFT rank sees half the tokens), the steps
complete, the final model is written once, and the SFT loss agrees with one process on the same 4
examples per step to within the difference of averaging the loss per rank rather than over all tokens.
NOT checked (not yet true here): identical GRPO rollouts and rewards to a one-process run; the two
runs draw their samples from different random streams.
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
    return {"model": str(root / "vlm"), "segmenter": f"sam2:{root / 'sam2'}", "data": str(root / "data")}


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
