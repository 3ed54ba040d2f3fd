"""The loop from "my city" to "a model scored on my city", on real OpenStreetMap data (Porto) with the
self-test's tiny models: build a dataset, SFT then GRPO a few steps on it, evaluate on its test split,
score the baselines, and detect with the trained model on an area it never saw.

The tiny VLM is built here unfitted (seconds). The session's fitted one (`tiny_models`, minutes to fit)
would not do more: it answers in the released format only on the sample town it was fitted to, and on
Porto its answers have no <answer> block either (checked by hand). So the loop is tested for what tiny
models can show: every command runs on the city's data and the trained model's own output."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT

PORTO = os.path.join(ROOT, "..", "shared", "realdata", "porto")
pytestmark = pytest.mark.skipif(not os.path.isdir(PORTO), reason="the real Porto scene is not on this machine")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from backend.selftest.tiny import save_models
    return save_models(str(tmp_path_factory.mktemp("loop_models")))


def test_build_train_evaluate_detect_on_porto(tiny, tmp_path, capsys):
    from training.dataset import main as dataset_main
    from training.evaluate import main as evaluate_main
    from training.baselines import main as baselines_main
    from training.grpo import main as grpo_main
    from training.sft import main as sft_main
    from backend.cli import main as backend_main

    data = tmp_path / "porto"
    # 256 m tiles at 1 m/px keep the tiny models quick; the layout is the released one at any size
    assert dataset_main(["--satellite", f"{PORTO}/satellite.tif", "--osm", f"{PORTO}/extract.osm.pbf",
                         "--resolution", "1", "--tile-size", "256", "--per-level", "2", "--out", str(data)]) == 0
    meta = json.loads((data / "dataset.json").read_text())
    assert all(sum(meta["counts"]["samples"][s].values()) > 0 for s in ("train", "val", "test"))

    model = tiny["reasoner"].split(":", 1)[1]
    sft = tmp_path / "sft"
    assert sft_main(["--model", model, "--segmenter", "grabcut", "--data", str(data), "--limit", "2",
                     "--max-steps", "1", "--device", "cpu", "--output", str(sft),
                     "--gradient-accumulation-steps", "1"]) == 0
    grpo = tmp_path / "grpo"
    assert grpo_main(["--model", str(sft / "final"), "--segmenter", "grabcut", "--data", str(data),
                      "--limit", "2", "--num-generations", "2", "--max-steps", "1", "--eval-steps", "0",
                      "--max-completion-length", "160", "--device", "cpu", "--output", str(grpo)]) == 0
    assert (grpo / "adapter").is_dir() and (grpo / "final").is_dir()     # LoRA adapter and merged model

    out = tmp_path / "eval.json"
    # the LoRA adapter loads onto its base model (equal to final/, which merges it)
    assert evaluate_main(["--data", str(data), "--split", "test", "--reasoner", f"qwen:{grpo / 'adapter'}",
                          "--segmenter", "grabcut", "--device", "cpu", "--max-new-tokens", "256",
                          "--limit", "3", "--seed", "0", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["all"]["samples"] == 3
    assert set(metrics) - {"all"} <= {"name", "class", "function"}
    for m in metrics.values():
        assert all(0.0 <= m[k] <= 1.0 for k in ("cIoU", "gIoU", "F1"))

    table = tmp_path / "baselines.json"
    assert baselines_main(["--dataset", str(data), "--trained", f"qwen:{grpo / 'final'}", "--device", "cpu",
                           "--max-new-tokens", "256", "--limit", "3", "--out", str(table)]) == 0
    rows = json.loads(table.read_text())["models"]
    assert list(rows)[0] == "default (map reader + GrabCut)" and rows[f"trained {grpo / 'final'}"]
    assert all(r["metrics"]["all"]["samples"] == 3 for r in rows.values())

    # a test-split tile: an area of the city the model never trained on
    name, test_tile = next((k, t) for k, t in meta["tiles"].items() if t["split"] == "test" and t["state"] == "used")
    found, dump = tmp_path / "found.geojson", tmp_path / "dump"
    capsys.readouterr()
    rc = backend_main(["detect", "--satellite", f"{PORTO}/satellite.tif", "--map", f"{PORTO}/extract.osm.pbf",
                       "--query", "school", "--task", "class", "--reasoner", f"qwen:{grpo}",   # RUN = RUN/final
                       "--segmenter", "grabcut", "--device", "cpu", "--max-new-tokens", "256", "--seed", "0",
                       "--resolution", "1", "--tile-size", "256", "--bbox", *map(str, test_tile["bounds"]),
                       "--out", str(found), "--dump", str(dump)])
    # the trained model ran on that area: the image it saw is the dataset's image of the tile (at the
    # model's input size), and it answered
    from backend.pipeline.stages import resize_rgb
    sample = next(d for d in (data / "test").iterdir()
                  if json.loads((d / "question.json").read_text())["tile"] == name)
    seen = np.asarray(Image.open(dump / "tile_0_0" / "satellite.png").convert("RGB"))
    assert np.array_equal(seen, resize_rgb(np.asarray(Image.open(sample / "sat.png")), *seen.shape[:2]))
    assert (dump / "tile_0_0" / "stage1_response.txt").read_text(encoding="utf-8").strip()
    # a tiny model's answer is no <answer> block, which detection reports (exit 2) instead of an empty file
    assert rc == 2 and not found.exists()
    assert "got a usable answer from the model" in capsys.readouterr().err
