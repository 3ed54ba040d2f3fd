"""Two-stage GRPO on the tiny fitted Qwen2.5-VL and tiny SAM 2 (CPU)."""
import numpy as np
import pytest
import torch

from backend.pipeline.prompts import parse_answer
from helpers import ScriptedReasoner

G = 4


@pytest.fixture(scope="module")
def trainer(tiny_models, town_socioseg, tmp_path_factory):
    from training.config import load_config
    from training.grpo import build

    args = load_config(["--model", tiny_models["reasoner"].split(":", 1)[1], "--segmenter", tiny_models["sam2"],
                        "--data", town_socioseg, "--num-generations", str(G), "--device", "cpu",
                        "--output", str(tmp_path_factory.mktemp("grpo")), "--max-completion-length", "160",
                        "--temperature", "0.7", "--eval-steps", "0"], "grpo.yaml", "test", "test")
    torch.manual_seed(3)
    tr, _ = build(args)
    return tr


@pytest.fixture(scope="module")
def batch(trainer):
    torch.manual_seed(5)
    return trainer._generate_and_score_completions([{"index": 0, "prompt": "school"}] * G)


def _logps(trainer, out, adapter=True):
    kw = dict(input_ids=torch.cat([out["prompt_ids"], out["completion_ids"]], 1),
              attention_mask=torch.cat([out["prompt_mask"], out["completion_mask"]], 1),
              logits_to_keep=out["completion_ids"].size(1), pixel_values=out["pixel_values"],
              image_grid_thw=out["image_grid_thw"], num_images=out["num_images"],
              mm_token_type_ids=out.get("mm_token_type_ids"))
    with torch.no_grad():
        if adapter:
            return trainer._get_per_token_logps_and_entropies(trainer.model, **kw)[0]
        with trainer.model.disable_adapter():
            return trainer._get_per_token_logps_and_entropies(trainer.model, **kw)[0]


def test_batch_holds_both_stages_with_group_advantages(trainer, batch):
    from training.rewards import group_advantages
    (ro,) = trainer.last_rollouts
    assert len(ro.stage1) == G and len(ro.stage2) == G
    assert batch["completion_ids"].shape[0] == 2 * G and batch["image_grid_thw"].shape[0] == 4 * G
    want = np.concatenate([group_advantages([s.rewards["total"] for s in ro.stage1], G),
                           group_advantages([s.rewards["total"] for s in ro.stage2], G)])
    assert np.allclose(batch["advantages"].numpy(), want)
    assert batch["advantages"].max() > 0 and batch["advantages"].min() < 0   # the sampled group varies


def test_loss_logps_match_the_sampling_logps(trainer, batch):
    mask = batch["completion_mask"].bool()
    lp = _logps(trainer, batch)
    assert (lp - batch["sampling_per_token_logps"])[mask].abs().max() < 1e-3


def test_stage2_prompts_and_images_are_the_inference_ones(trainer, batch, tiny_models):
    from affine import Affine
    from rasterio.crs import CRS

    from backend.geo.grid import Tile
    from backend.pipeline.stages import run_tile
    from training.data import model_view
    (ro,) = trainer.last_rollouts
    sample = trainer.socio_data.get(0)
    h, w = sample.sat_image.shape[:2]
    checked = 0
    for s1, s2 in zip(ro.stage1, ro.stage2):
        if not parse_answer(s1.text, *s1.images[0].shape[1::-1]).ok:
            continue
        r = run_tile(Tile(0, 0, 0, 0, w, h), sample.sat_image, sample.map_image, Affine.identity(),
                     CRS.from_epsg(3857), "school", None, ScriptedReasoner(s1.text), trainer.segmenter)
        assert r.prompts[1] == s2.prompt_text
        assert np.array_equal(r.images["map_rendered.png"], s2.images[0])
        assert np.array_equal(r.images["satellite_rendered.png"], s2.images[1])
        checked += 1
    assert checked >= 1
    map_m, sat_m, _ = model_view(sample, trainer.chat)
    assert np.array_equal(ro.stage1[0].images[0], map_m)


def test_one_step_moves_lora_only_and_favours_positive_advantages(trainer, batch):
    model = trainer.model
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    mask = batch["completion_mask"].float()
    adv = batch["advantages"]
    before = (_logps(trainer, batch) * mask).sum(1) / mask.sum(1)
    ref_before = _logps(trainer, batch, adapter=False)
    assert torch.allclose(ref_before, batch["ref_per_token_logps"], atol=1e-5)
    # a small plain gradient step: to first order it must raise the advantage-weighted log-likelihood
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    trainer.current_gradient_accumulation_steps = 1     # set by trainer.train(); this step is by hand
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    opt.step()
    opt.zero_grad()
    after = (_logps(trainer, batch) * mask).sum(1) / mask.sum(1)
    gain = after - before
    print("log-prob change per sequence", gain.tolist(), "advantages", adv.tolist())
    # Completions share most tokens, so one step cannot raise every positive one; it must raise the
    # advantage-weighted log-likelihood, most positive completions, and positives more than negatives.
    assert (adv * gain).sum() > 0
    assert (gain[adv > 0] > 0).float().mean() > 0.5
    assert gain[adv > 0].mean() > gain[adv < 0].mean()
    assert any(not torch.equal(p, lora[n]) for n, p in model.named_parameters() if n in lora)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)
    assert torch.allclose(_logps(trainer, batch, adapter=False), ref_before, atol=1e-6)   # reference frozen


def test_smoke_command_and_the_backend_loads_its_result(tiny_models, town_socioseg, tmp_path):
    from backend.engines import build_reasoner
    from training.grpo import main
    out = tmp_path / "run"
    rc = main(["--model", tiny_models["reasoner"].split(":", 1)[1], "--segmenter", tiny_models["sam2"],
               "--data", town_socioseg, "--max-steps", "2", "--num-generations", "2", "--device", "cpu",
               "--output", str(out), "--max-completion-length", "160", "--eval-steps", "2",
               "--eval-samples", "1", "--save-steps", "1"])
    assert rc == 0
    assert (out / "checkpoint-2").is_dir() and (out / "adapter").is_dir()
    assert any(p.name.startswith("events.out.tfevents") for p in out.rglob("*"))
    r = build_reasoner(f"qwen:{out / 'final'}", "cpu")
    assert r.model.__class__.__name__ == "Qwen2_5_VLForConditionalGeneration"
    rc = main(["--model", tiny_models["reasoner"].split(":", 1)[1], "--segmenter", tiny_models["sam2"],
               "--data", town_socioseg, "--max-steps", "3", "--num-generations", "2", "--device", "cpu",
               "--output", str(out), "--max-completion-length", "160", "--eval-steps", "0", "--resume", "last"])
    assert rc == 0 and (out / "checkpoint-3").is_dir()


def test_missing_data_is_a_clear_error(tiny_models, tmp_path, capsys):
    from training.grpo import main
    rc = main(["--model", tiny_models["reasoner"].split(":", 1)[1], "--segmenter", "grabcut",
               "--data", str(tmp_path / "nothing"), "--device", "cpu", "--output", str(tmp_path / "o")])
    assert rc == 2 and "cannot load SocioSeg" in capsys.readouterr().err
