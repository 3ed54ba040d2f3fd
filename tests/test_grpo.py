"""Two-stage GRPO on the tiny fitted Qwen2.5-VL and tiny SAM 2 (CPU)."""
import numpy as np
import pytest
import torch

from backend.pipeline.prompts import parse_answer
from helpers import ScriptedReasoner

G = 4


@pytest.fixture(scope="module")
def trainer(tiny_models, town_socioseg, tmp_path_factory):
    from training.config import GRPOOptions, parse
    from training.grpo import build

    options = parse(GRPOOptions, ["--model", tiny_models["reasoner"].split(":", 1)[1],
                                  "--segmenter", tiny_models["sam2"], "--data", town_socioseg,
                                  "--num-generations", str(G), "--device", "cpu",
                                  "--output", str(tmp_path_factory.mktemp("grpo")),
                                  "--max-completion-length", "160", "--temperature", "1.2", "--eval-steps", "0"],
                    "test", "test")
    # 1.2: at lower temperatures the fitted tiny model repeats its stage-1 answer, and a group whose
    # rewards are all equal has zero advantages (nothing to check)
    torch.manual_seed(3)
    tr, _ = build(options)
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
    from training.rewards import group_advantages, released_totals
    (ro,) = trainer.last_rollouts
    assert len(ro.stage1) == G and len(ro.stage2) == G
    assert batch["completion_ids"].shape[0] == 2 * G and batch["image_grid_thw"].shape[0] == 4 * G
    want = np.concatenate([group_advantages(released_totals([s.rewards for s in ro.stage1]), G),
                           group_advantages(released_totals([s.rewards for s in ro.stage2]), G)])
    assert np.allclose(batch["advantages"].numpy(), want)
    assert batch["advantages"].max() > 0 and batch["advantages"].min() < 0   # the sampled group varies


def _raw_logit_logps(trainer, out, adapter=True):
    """log_softmax of the model's own logits (no temperature), at the completion tokens."""
    n = out["completion_ids"].size(1)
    kw = dict(input_ids=torch.cat([out["prompt_ids"], out["completion_ids"]], 1),
              attention_mask=torch.cat([out["prompt_mask"], out["completion_mask"]], 1),
              pixel_values=out["pixel_values"], image_grid_thw=out["image_grid_thw"])
    if out.get("mm_token_type_ids") is not None:
        kw["mm_token_type_ids"] = out["mm_token_type_ids"]
    with torch.no_grad():
        if adapter:
            logits = trainer.model(**kw).logits
        else:
            with trainer.model.disable_adapter():
                logits = trainer.model(**kw).logits
    logits = logits[:, -n - 1:-1].float()
    return logits, torch.log_softmax(logits, -1).gather(-1, out["completion_ids"].unsqueeze(-1)).squeeze(-1)


def test_loss_logps_come_from_the_raw_logits_as_released(trainer, batch):
    """The released trainer's policy, old and reference log-probs are log_softmax of the raw logits;
    trl's would be divided by the sampling temperature (1.2 here) first."""
    mask = batch["completion_mask"].bool()
    logits, raw = _raw_logit_logps(trainer, batch)
    assert (_logps(trainer, batch) - raw)[mask].abs().max() < 1e-4                  # policy
    assert (trainer._logps(batch, reference=False) - raw)[mask].abs().max() < 1e-4  # old (ratio denominator)
    _, raw_ref = _raw_logit_logps(trainer, batch, adapter=False)
    assert (batch["ref_per_token_logps"] - raw_ref)[mask].abs().max() < 1e-4       # reference
    # the rollouts were sampled at the temperature; the loss does not see it
    scaled = torch.log_softmax(logits / 1.2, -1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    assert (batch["sampling_per_token_logps"] - scaled)[mask].abs().max() < 1e-3
    assert (raw - scaled)[mask].abs().max() > 1e-2


def test_the_kl_term_is_not_weighted_by_the_importance_ratio(trainer):
    assert trainer.args.use_bias_correction_kl is False and trainer.beta == 0.005


def test_stage2_prompts_and_images_are_the_inference_ones(trainer, batch, tiny_models):
    from affine import Affine

    from backend.pipeline.stages import PipelineOptions, make_view, run_tile
    from training.data import gt_boxes, model_view
    from training.rewards import stage1_rewards
    (ro,) = trainer.last_rollouts
    sample = trainer.socio_data.get(0)
    checked = 0
    for s1, s2 in zip(ro.stage1, ro.stage2):
        # rewards against the ORIGINAL-resolution ground truth, as released
        assert s1.rewards == stage1_rewards(s1.text, gt_boxes(sample.mask))
        if not parse_answer(s1.text, *s1.images[0].shape[1::-1], tolerant=False).items:
            continue
        scripted = ScriptedReasoner(s1.text)
        view = make_view(sample.map_image, sample.sat_image, "school", scripted, transform=Affine.identity())
        r = run_tile(view, scripted, trainer.segmenter, PipelineOptions(tolerant_parsing=False))
        assert r.prompts[1] == s2.prompt_text
        assert np.array_equal(r.images["map_rendered.png"], s2.images[0])
        assert np.array_equal(r.images["satellite_rendered.png"], s2.images[1])
        checked += 1
    assert checked >= 1
    map_m, sat_m, _ = model_view(sample, trainer.chat)
    assert np.array_equal(ro.stage1[0].images[0], map_m)


def test_stage_passes_put_each_stage_in_its_own_updates(trainer, batch, monkeypatch):
    """--stage-passes: micro-batches of stage-1 sequences first, then stage-2 ones, none mixed (the
    rollout batch of the `batch` fixture, re-sliced for 4 micro-batches per rollout)."""
    tok = trainer.processing_class.tokenizer
    monkeypatch.setattr(trainer, "_generate_and_score_completions", lambda inputs: dict(batch))
    monkeypatch.setattr(trainer.options, "stage_passes", True)
    monkeypatch.setattr(trainer.args, "steps_per_generation", 4)
    monkeypatch.setattr(trainer, "_buffered_inputs", None)
    trainer.model.train()
    stages, seen = [], []
    for step in range(4):
        monkeypatch.setattr(trainer, "_step", step)
        part = trainer._prepare_inputs([{"index": 0, "prompt": "school"}] * G)
        assert part["completion_ids"].shape[0] == 2 and part["image_grid_thw"].shape[0] == 4
        texts = tok.batch_decode(part["prompt_ids"], skip_special_tokens=True)
        stages.append({2 if "have been rendered" in t else 1 for t in texts})
        seen += part["advantages"].tolist()
    assert stages == [{1}, {1}, {2}, {2}]
    assert sorted(seen) == sorted(batch["advantages"].tolist())      # every sequence once


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
    # Completions share most tokens (sampled groups often repeat a completion), so one step cannot raise
    # every positive one; it must raise the advantage-weighted log-likelihood, and positives more than
    # negatives.
    assert (adv * gain).sum() > 0
    assert gain[adv > 0].mean() > gain[adv < 0].mean()
    assert any(not torch.equal(p, lora[n]) for n, p in model.named_parameters() if n in lora)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)
    assert torch.allclose(_logps(trainer, batch, adapter=False), ref_before, atol=1e-6)   # reference frozen


def test_smoke_command_and_the_backend_loads_its_result(tiny_models, town_socioseg, tmp_path):
    from backend.engines import build_reasoner
    from training.grpo import main
    out = tmp_path / "run"
    common = ["--model", tiny_models["reasoner"].split(":", 1)[1], "--segmenter", tiny_models["sam2"],
              "--data", town_socioseg, "--num-generations", "2", "--device", "cpu", "--output", str(out),
              "--max-completion-length", "160"]
    assert main(common + ["--max-steps", "2", "--eval-steps", "2", "--eval-samples", "1", "--save-steps", "1"]) == 0
    assert (out / "checkpoint-2").is_dir() and (out / "adapter").is_dir()
    assert any(p.name.startswith("events.out.tfevents") for p in out.rglob("*"))
    r = build_reasoner(f"qwen:{out / 'final'}", "cpu")
    assert r.model.__class__.__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert main(common + ["--max-steps", "3", "--eval-steps", "0", "--resume", "last"]) == 0
    assert (out / "checkpoint-3").is_dir()


def test_released_recipe_structure(tiny_models, town_socioseg, tmp_path):
    """--config released.yaml: full fine-tuning with the vision tower trained, two stage passes per
    rollout batch (run end to end on the tiny models with the batch sizes scaled down)."""
    import json

    from training.config import CONFIG_DIR, GRPOOptions, parse
    from training.grpo import build, main
    out = tmp_path / "released"
    argv = ["--config", f"{CONFIG_DIR}/released.yaml", "--model", tiny_models["reasoner"].split(":", 1)[1],
            "--segmenter", tiny_models["sam2"], "--data", town_socioseg, "--device", "cpu", "--bf16", "false",
            "--gradient-checkpointing", "false", "--output", str(out), "--num-generations", "2",
            "--rollout-prompts", "1", "--micro-batch-size", "1", "--mini-batch-size", "2",
            "--max-completion-length", "48", "--eval-steps", "0", "--save-steps", "100"]
    options = parse(GRPOOptions, argv + ["--max-steps", "2"], "test", "test")
    assert (options.lora, options.learning_rate, options.weight_decay, options.beta, options.epsilon,
            options.stage_passes) == (False, 1e-6, 0.01, 0.005, 0.2, True)
    assert options.plan(1) == {"per_device_train_batch_size": 1, "steps_per_generation": 2,
                               "gradient_accumulation_steps": 1}
    trainer, _ = build(options)
    visual = [p.requires_grad for n, p in trainer.model.named_parameters() if "visual" in n]
    assert visual and all(visual) and all(p.requires_grad for p in trainer.model.parameters())
    # the released schedule reaches the trainer: 1e-6 falling to 0 at update 41,600, then 0
    trainer.create_optimizer_and_scheduler(num_training_steps=options.max_steps)
    rate = trainer.lr_scheduler.lr_lambdas[0]
    assert (rate(0), rate(20800), rate(41600), rate(50000)) == (1.0, 0.5, 0.0, 0.0)
    del trainer
    # one rollout batch: a stage-1 update, then a stage-2 update, then the full model as final/
    assert main(argv + ["--max-steps", "2", "--save-steps", "2"]) == 0
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert (out / "final" / "config.json").is_file() and not (out / "adapter").exists()


def test_missing_data_is_a_clear_error(tiny_models, tmp_path, capsys):
    from training.grpo import main
    rc = main(["--model", tiny_models["reasoner"].split(":", 1)[1], "--segmenter", "grabcut",
               "--data", str(tmp_path / "nothing"), "--device", "cpu", "--output", str(tmp_path / "o")])
    assert rc == 2 and "cannot load SocioSeg" in capsys.readouterr().err
