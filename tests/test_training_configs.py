"""The shipped training configurations: the released recipe's structure and the accelerate launch files."""
import glob
import os

import pytest

from training.config import CONFIG_DIR, ConfigError, GRPOOptions, parse


def test_released_recipe_matches_the_release():
    o = parse(GRPOOptions, ["--config", os.path.join(CONFIG_DIR, "released.yaml"), "--output", "/nonexistent/r"],
              "t", "t")
    assert (o.lora, o.freeze_vision, o.lr(), o.weight_decay, o.beta, o.epsilon) == (False, False, 1e-6, 0.01, 0.005, 0.2)
    assert (o.num_generations, o.rollout_prompts, o.mini_batch_size, o.stage_passes) == (8, 128, 16, True)
    assert (o.temperature, o.top_p, o.top_k, o.max_completion_length) == (0.99, 0.99, 100, 2048)
    # two data-parallel ranks, as the released actor: 2 sequences per device x 4 accumulation x 2 ranks
    # per update, 1,024 sequences per stage -> 64 updates per stage, stage 1 first
    p = o.plan(2)
    assert p == {"per_device_train_batch_size": 1, "steps_per_generation": 512, "gradient_accumulation_steps": 4}
    updates_per_stage = p["steps_per_generation"] // 2 // p["gradient_accumulation_steps"]
    assert updates_per_stage == 64
    assert o.plan(8)["gradient_accumulation_steps"] == 1
    with pytest.raises(ConfigError, match="multiple of 32"):
        o.plan(16)                               # 16 processes: use --mini-batch-size 32
    o.mini_batch_size = 32
    assert o.plan(16)["steps_per_generation"] == 64


def test_default_is_one_update_per_rollout_batch_on_one_gpu():
    o = parse(GRPOOptions, ["--output", "/nonexistent/r"], "t", "t")
    assert o.lora and o.lr() == 1e-5 and not o.stage_passes
    assert o.plan(1) == {"per_device_train_batch_size": 8, "steps_per_generation": 1,
                         "gradient_accumulation_steps": 1}


@pytest.mark.parametrize("name, kind, stage", [("1gpu", "NO", None), ("ddp", "MULTI_GPU", None),
                                               ("zero2", "DEEPSPEED", 2), ("zero3", "DEEPSPEED", 3)])
def test_accelerate_configs_load(name, kind, stage):
    from accelerate.commands.config.config_args import load_config_from_file
    cfg = load_config_from_file(os.path.join(CONFIG_DIR, "accelerate", f"{name}.yaml"))
    assert str(cfg.distributed_type).split(".")[-1] == kind
    assert str(cfg.mixed_precision).split(".")[-1].lower() == "bf16"
    if stage:
        assert cfg.deepspeed_config["zero_stage"] == stage
    names = {os.path.basename(f)[:-5] for f in glob.glob(os.path.join(CONFIG_DIR, "accelerate", "*.yaml"))}
    assert {"1gpu", "ddp", "zero2", "zero3"} <= names


def released_lr(update: int, train_samples: int = 8380, epochs: int = 10, lr: float = 1e-6) -> float:
    """The released learning rate at an optimiser update, read from the released code independently:
    the data loader drops the last partial batch of 128 prompts; RLVRConfig.set_max_steps makes the
    actor's schedule max_steps x 128 x 8 x ppo_epochs(1) // (2 per device x 4 accumulation); the
    Megatron strategy divides it by the 2 data-parallel ranks; MegatronLRScheduler is linear from lr to
    min_lr 0, no warm-up, and gives min_lr past its length."""
    length = (train_samples // 128) * epochs * (128 * 8 * 1 // (2 * 4)) // 2
    return 0.0 if update > length else lr * (1 - update / length)


def _lambda(options):
    import torch
    from transformers import get_scheduler

    sched = options.lr_schedule()
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=options.lr())
    s = get_scheduler(sched["lr_scheduler_type"], opt, num_warmup_steps=0, num_training_steps=options.max_steps,
                      scheduler_specific_kwargs=sched.get("lr_scheduler_kwargs"))
    return lambda k: options.lr() * s.lr_lambdas[0](k)


def test_released_yaml_has_the_released_learning_rate_schedule():
    o = parse(GRPOOptions, ["--config", os.path.join(CONFIG_DIR, "released.yaml"), "--output", "/nonexistent/r"],
              "t", "t")
    lr = _lambda(o)
    # each rollout batch runs 2 passes x 64 updates; 650 rollout batches in the released 10 epochs
    run = 650 * 2 * 64
    for k in (0, 1, 1000, 20800, 32000, 41599, 41600, 41601, 60000, run - 1):
        assert lr(k) == pytest.approx(released_lr(k), abs=1e-15), k
    assert released_lr(run // 2) == 0.0 < released_lr(run // 2 - 1)          # 0 halfway through
    assert lr(o.max_steps) == pytest.approx(2.3e-7, abs=1e-9)


def test_released_fixed_decays_over_the_whole_run_and_is_released_otherwise():
    from dataclasses import asdict
    released = parse(GRPOOptions, ["--config", os.path.join(CONFIG_DIR, "released.yaml"),
                                   "--output", "/nonexistent/r"], "t", "t")
    fixed = parse(GRPOOptions, ["--config", os.path.join(CONFIG_DIR, "released-fixed.yaml"),
                                "--output", "/nonexistent/r"], "t", "t")
    assert fixed.lr_decay_steps is None
    assert {k: v for k, v in asdict(fixed).items() if k != "lr_decay_steps"} == \
        {k: v for k, v in asdict(released).items() if k != "lr_decay_steps"}
    lr = _lambda(fixed)
    assert lr(0) == 1e-6 and lr(16000) == pytest.approx(0.5e-6) and lr(31999) > 0 and lr(32000) == 0


def test_lr_decay_steps_must_be_positive():
    with pytest.raises(ConfigError, match="--lr-decay-steps must be at least 1"):
        parse(GRPOOptions, ["--output", "/nonexistent/r", "--lr-decay-steps", "0"], "t", "t")
