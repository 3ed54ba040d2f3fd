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
    assert len(glob.glob(os.path.join(CONFIG_DIR, "accelerate", "*.yaml"))) == 4
