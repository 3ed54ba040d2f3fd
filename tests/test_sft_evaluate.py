"""SFT targets and smoke run; evaluation of a split by model and from saved masks."""
import json
import os

import numpy as np
import pytest

from backend.pipeline.prompts import parse_answer, stage2_prompt


def test_sft_targets_are_gt_boxes_and_three_inside_points(tiny_models, town_socioseg):
    from backend.engines import build_segmenter
    from backend.reasoners.qwen import QwenChat
    from backend.selftest.tiny import build_tiny_vlm
    from training.data import SocioSegData, gt_boxes, model_view
    from training.rewards import answer_text, stage2_rewards
    from training.sft import examples_for

    _, proc = build_tiny_vlm()
    chat = QwenChat(proc)
    sample = SocioSegData(town_socioseg, "train").get(0)
    ex1, ex2 = examples_for(sample, chat, build_segmenter(tiny_models["sam2"], "cpu"), 3, np.random.default_rng(0))
    _, _, gt = model_view(sample, chat)
    t1 = ex1["completion"][0]["content"][0]["text"]
    t2 = ex2["completion"][0]["content"][0]["text"]
    assert "<think>" not in t1 and "<think>" not in t2
    a1 = parse_answer(t1, gt.shape[1], gt.shape[0])
    assert [list(it.box) for it in a1.items] == gt_boxes(gt)
    assert ex2["prompt"][0]["content"][2]["text"] == stage2_prompt("school", a1.raw)
    a2 = parse_answer(t2, gt.shape[1], gt.shape[0])
    assert all(len(it.points) == 3 for it in a2.items)
    assert stage2_rewards(t2, answer_text(t1), gt, gt)["format"] == 1.0   # boxes repeated, points inside
    for it in a2.items:
        for x, y in it.points:
            assert gt[int(y), int(x)]


def test_sft_smoke_run_writes_a_loadable_model(tiny_models, town_socioseg, tmp_path):
    from backend.engines import build_reasoner
    from training.sft import main
    out = tmp_path / "sft"
    assert main(["--model", tiny_models["reasoner"].split(":", 1)[1], "--segmenter", "grabcut",
                 "--data", town_socioseg, "--max-steps", "2", "--device", "cpu", "--output", str(out),
                 "--gradient-accumulation-steps", "1"]) == 0
    assert build_reasoner(f"qwen:{out / 'final'}", "cpu").name.endswith("final")


def test_evaluate_runs_the_default_and_scores_saved_masks(tmp_path, capsys):
    from backend.synth.sample import write_socioseg
    from training.evaluate import main
    write_socioseg(str(tmp_path / "data"), 4, "test", seed=3)
    out, pred = tmp_path / "eval.json", tmp_path / "pred"
    assert main(["--data", str(tmp_path / "data"), "--out", str(out), "--save", str(pred)]) == 0
    res = json.loads(out.read_text())
    levels = set(res["metrics"]) - {"all"}
    assert levels and levels <= {"name", "class", "function"}
    assert res["metrics"]["all"]["samples"] == 4
    assert sorted(p for p in os.listdir(pred) if p.endswith(".png")) == sorted(
        f"{d}.png" for d in os.listdir(tmp_path / "data" / "test"))
    # scoring the saved masks gives the same numbers
    out2 = tmp_path / "eval2.json"
    assert main(["--data", str(tmp_path / "data"), "--out", str(out2), "--predictions", str(pred)]) == 0
    res2 = json.loads(out2.read_text())
    for k in ("gIoU", "cIoU", "F1"):
        assert abs(res2["metrics"]["all"][k] - res["metrics"]["all"][k]) < 1e-9
    # a missing prediction counts as empty and is listed
    os.remove(pred / sorted(p for p in os.listdir(pred) if p.endswith(".png"))[0])
    assert main(["--data", str(tmp_path / "data"), "--out", str(out2), "--predictions", str(pred)]) == 0
    assert len(json.loads(out2.read_text())["missing_predictions"]) == 1


def test_evaluate_json_is_strict_and_lists_what_was_skipped(tmp_path):
    from backend.synth.sample import write_socioseg
    from training.evaluate import main
    write_socioseg(str(tmp_path / "data"), 2, "test", seed=4)
    bad = sorted((tmp_path / "data" / "test").iterdir())[0]
    (bad / "map.png").write_bytes(b"broken")
    out = tmp_path / "eval.json"
    assert main(["--data", str(tmp_path / "data"), "--out", str(out)]) == 0
    res = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert res["metrics"]["all"]["samples"] == 1 and list(res["skipped"]) == [bad.name]
