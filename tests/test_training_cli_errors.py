"""Mistakes in the training and evaluation commands: exit status 2, one message naming the option, and no
file created or changed. Each case is caught before a model is loaded (the model path does not exist)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

NO_MODEL = "/nonexistent/model"


def _sample(root, sid, corrupt=False):
    d = root / sid
    d.mkdir(parents=True)
    for name in ("map.png", "sat.png"):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(d / name)
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(d / "mask.png")
    (d / "question.json").write_text(json.dumps({"problem": "school"}))
    if corrupt:
        (d / "sat.png").write_bytes(b"not a png")


@pytest.fixture()
def place(tmp_path):
    """A data folder with a good train split and an all-corrupt `bad` split, an earlier run, configs."""
    data = tmp_path / "data"
    _sample(data / "train", "a")
    _sample(data / "bad", "x", corrupt=True)
    _sample(data / "bad", "y", corrupt=True)
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    (run / "checkpoint-1").mkdir()
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "broken.yaml").write_text("lora: [1\n")
    (tmp_path / "unknown.yaml").write_text("max_stepz: 3\n")
    (tmp_path / "typed.yaml").write_text("max_steps: [3]\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "preds").mkdir()
    return tmp_path


def _tree(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        out[dirpath] = None
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[p] = fh.read()
    return out


GRPO = ["--model", NO_MODEL, "--segmenter", "grabcut", "--device", "cpu"]
CASES = [
    # (command, arguments ({t} = the temporary folder), message)
    ("grpo", ["--data", "{t}/data", "--output", "{t}/new", "--num-generations", "1"],
     "--num-generations must be at least 2"),
    ("grpo", ["--data", "{t}/data", "--output", "{t}/new", "--max-steps", "0"], "--max-steps must be at least 1"),
    ("grpo", ["--data", "{t}/data", "--output", "{t}/new", "--lora", "ture"], "argument --lora: Truthy value"),
    ("grpo", ["--data", "{t}/data", "--output", "{t}/empty_run", "--resume", "last"], "no checkpoint-N folder"),
    ("grpo", ["--data", "{t}/data", "--output", "{t}/new", "--resume", "{t}/empty_run"], "not a checkpoint"),
    ("grpo", ["--data", "{t}/data", "--output", "{t}/run"], "already holds a run (checkpoint-1, final)"),
    ("grpo", ["--data", "{t}/data", "--output", "{t}/run", "--resume", "last", "--overwrite"],
     "exclude each other"),
    ("grpo", ["--config", "{t}/missing.yaml", "--data", "{t}/data"], "--config {t}/missing.yaml: no such file"),
    ("grpo", ["--config", "{t}/broken.yaml"], "not valid YAML"),
    ("grpo", ["--config", "{t}/unknown.yaml"], "unknown option(s) max_stepz"),
    ("grpo", ["--config", "{t}/typed.yaml", "--output", "{t}/new"], "--max-steps: [3] is not a valid int"),
    ("grpo", ["--config", "{t}/list.yaml"], "must hold a mapping"),
    ("grpo", ["--data", "{t}/data", "--output", "{t}/new", "--use-vllm"], "--use-vllm: vLLM"),
    ("grpo", ["--data", "{t}/data", "--output", "{t}/new", "--stage-passes"], "--stage-passes needs --mini-batch"),
    ("grpo", ["--data", "{t}/data", "--output", "{t}/new", "--rollout-prompts", "3", "--micro-batch-size", "5"],
     "--micro-batch-size 5 must divide"),
    ("grpo", ["--data", "{t}/data", "--output", "{t}/new", "--micro-batch-size", "1", "--mini-batch-size", "3"],
     "--mini-batch-size 3 must be a multiple of 2"),
    ("grpo", ["--data", "{t}/data", "--output", "{t}/new", "--temperature", "0"], "--temperature must be positive"),
    ("grpo", ["--data", "{t}/nothing", "--output", "{t}/new"], "cannot load SocioSeg split"),
    ("grpo", ["--data", "{t}/data", "--split", "bad", "--output", "{t}/new"], "no readable sample in split 'bad'"),
    ("sft", ["--data", "{t}/data", "--output", "{t}/new", "--max-steps", "0"], "--max-steps must be at least 1"),
    ("sft", ["--data", "{t}/data", "--output", "{t}/new", "--lora", "ture"], "argument --lora: Truthy value"),
    ("sft", ["--data", "{t}/data", "--output", "{t}/run"], "already holds a run"),
    ("sft", ["--data", "{t}/data", "--split", "bad", "--output", "{t}/new"], "no readable sample in split 'bad'"),
    ("evaluate", ["--data", "{t}/data", "--split", "train", "--out", "{t}/e.json", "--predictions", "{t}/nope"],
     "--predictions {t}/nope: no such folder"),
    ("evaluate", ["--data", "{t}/data", "--split", "bad", "--out", "{t}/e.json"], "nothing to score"),
    ("evaluate", ["--data", "{t}/data", "--split", "bad", "--out", "{t}/e.json", "--predictions", "{t}/preds"],
     "nothing to score"),
    ("evaluate", ["--data", "{t}/data", "--split", "train", "--out", "{t}/preds"], "--out {t}/preds is a folder"),
]


@pytest.mark.parametrize("command, args, message", CASES, ids=[f"{c}:{m[:30]}" for c, _, m in CASES])
def test_mistakes_exit_2_with_a_message_and_change_nothing(command, args, message, place, capsys):
    import importlib
    import importlib.util

    if "--use-vllm" in args:
        import torch
        if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
            pytest.skip("vLLM and a GPU are present here: --use-vllm is no mistake")
    main = importlib.import_module(f"training.{command}").main
    t = str(place)
    argv = [a.format(t=t) for a in args] + (GRPO if command in ("grpo", "sft") else [])
    before = _tree(place)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.format(t=t) in err
    assert "Traceback" not in err
    assert _tree(place) == before


def test_help_documents_every_option_with_its_default(capsys):
    from dataclasses import fields

    from training.config import GRPOOptions
    from training.grpo import main
    assert main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for f in fields(GRPOOptions):
        assert f"--{f.name}" in out
    assert out.count("(default:") >= len(fields(GRPOOptions))
    assert "--config CONFIG" in out
