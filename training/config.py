"""Typed options of the training entry points and their cheap checks.

Parsed by trl's `TrlParser` (a `transformers.HfArgumentParser`): the dataclass defaults (the 1-GPU LoRA
set-up), then a YAML file given with `--config` (keys are the option names; `training/configs/
released.yaml` is the released recipe), then flags. `python -m training.grpo --help` lists every option
with its help and default. Nothing here imports torch or the trainers, so `--help` and every check
below run before a model is loaded.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field, fields
from typing import Literal, Optional, Union, get_args, get_origin, get_type_hints

from backend.errors import SocioSegError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RUN_ARTEFACTS = ("final", "adapter", "checkpoint-*")


class ConfigError(SocioSegError):
    """A bad option or config file: one line naming the option and the fix (exit status 2)."""


def opt(default, help: str, **meta):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class CommonOptions:
    """Options shared by GRPO and SFT: what to train, on what, where to."""
    model: str = opt("Qwen/Qwen2.5-VL-3B-Instruct", "Base model to train: a Hugging Face id or a local folder.")
    segmenter: str = opt("sam2:facebook/sam2-hiera-large",
                         "Frozen segmenter (engine spec as in the backend), used between the stages.")
    data: str = opt("vvangfaye/SocioSeg", "SocioSeg: a folder in the raw layout, parquet file(s), or a hub id.")
    split: str = opt("train", "Split to train on.")
    output: str = opt("runs/grpo", "Run folder: checkpoints, TensorBoard logs, final/ (the merged model).")
    overwrite: bool = opt(False, "Replace the run already in --output (its final/, adapter/ and checkpoints).")
    resume: Optional[str] = opt(None, "Continue a run: a checkpoint folder, or 'last' for the newest in --output.")
    learning_rate: Optional[float] = opt(None, "AdamW learning rate; unset: 1e-6 for full fine-tuning, "
                                                 "1e-5 with LoRA.")
    weight_decay: float = opt(0.01, "AdamW weight decay.")
    gradient_checkpointing: bool = opt(False, "Recompute activations in the backward pass (less memory).")
    min_pixels: int = opt(3136, "Smallest image area the processor resizes to (released inference: 56*56).")
    max_pixels: int = opt(589824, "Largest image area (released: 768*768, so a 768 tile becomes 756 x 756).")
    lora: bool = opt(True, "Train LoRA adapters on the language model (false: full fine-tuning).")
    lora_r: int = opt(16, "LoRA rank.")
    lora_alpha: int = opt(32, "LoRA alpha.")
    lora_dropout: float = opt(0.05, "LoRA dropout.")
    lora_targets: list[str] = opt(LORA_TARGETS, "Language-model projections that get LoRA adapters.")
    freeze_vision: bool = opt(False, "Full fine-tuning only: keep the vision tower frozen (released: trained).")
    save_steps: int = opt(50, "Checkpoint every N optimiser steps.")
    logging_steps: int = opt(1, "Log every N optimiser steps.")
    seed: int = opt(0, "Random seed.")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N.")
    bf16: Literal["auto", "true", "false"] = opt("auto", "bfloat16 weights and maths; auto: on CUDA.")
    limit: Optional[int] = opt(None, "Use only the first N samples of the split.")

    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else (1e-5 if self.lora else 1e-6)

    def check(self) -> None:
        """Everything that can be checked without loading a model or reading images."""
        _check_types(self)
        positive(self, "max_steps", "lora_r", "lora_alpha", "save_steps", "logging_steps", "min_pixels",
                 "max_pixels", "limit")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"--learning-rate must be positive, not {self.learning_rate}")
        if self.min_pixels > self.max_pixels:
            raise ConfigError("--min-pixels must not exceed --max-pixels")
        if self.lora and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
            # final/ merges the adapter into the base weights, which ZeRO-3 holds sharded
            raise ConfigError("--lora with DeepSpeed ZeRO-3: use --lora false (full fine-tuning) or the "
                              "ZeRO-2 / DDP launch configs")
        check_run_folder(self.output, self.overwrite, self.resume)


def positive(options, *names: str) -> None:
    for name in names:
        value = getattr(options, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, not {value}")


def _check_types(options) -> None:
    """YAML values reach the dataclass untouched when they are not strings: check them."""
    hints = get_type_hints(type(options))
    for f in fields(options):
        value, kind = getattr(options, f.name), hints[f.name]
        allowed = get_args(kind) if get_origin(kind) is Union else (kind,)
        if value is None and type(None) in allowed:
            continue
        base = [a for a in allowed if a is not type(None)][0]
        ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
              float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str)}.get(base)
        if get_origin(base) is list:
            ok = lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)  # noqa: E731
        elif get_origin(base) is Literal:
            ok = lambda v: v in get_args(base)  # noqa: E731
        if ok is not None and not ok(value):
            raise ConfigError(f"--{f.name.replace('_', '-')}: {value!r} is not a valid "
                              f"{getattr(base, '__name__', str(base))} (check the flag or the --config file)")


def checkpoints(output: str) -> list[str]:
    """checkpoint-N folders of a run, oldest first."""
    found = [p for p in glob.glob(os.path.join(output, "checkpoint-*")) if re.search(r"checkpoint-\d+$", p)]
    return sorted(found, key=lambda p: int(p.rsplit("-", 1)[1]))


def check_run_folder(output: str, overwrite: bool, resume: str | None) -> None:
    """A new run never silently replaces an earlier one: --resume continues it, --overwrite replaces it."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise ConfigError(f"--output {output} is a file; give a folder for the run")
    if resume is not None:
        if overwrite:
            raise ConfigError("--resume and --overwrite exclude each other: continue the run or replace it")
        if resume == "last":
            if not checkpoints(output):
                raise ConfigError(f"--resume last: no checkpoint-N folder in {output}; start without --resume, "
                                  "or give the run folder that holds the checkpoints as --output")
        elif not os.path.isfile(os.path.join(resume, "trainer_state.json")):
            raise ConfigError(f"--resume {resume}: not a checkpoint folder (no trainer_state.json); give a "
                              "checkpoint-N folder or 'last'")
        return
    existing = [p for pattern in RUN_ARTEFACTS for p in glob.glob(os.path.join(output, pattern))]
    if existing and not overwrite:
        names = ", ".join(sorted(os.path.basename(p) for p in existing)[:4])
        raise ConfigError(f"--output {output} already holds a run ({names}); pass --resume last to continue "
                          "it, --overwrite to replace it, or choose another --output")


def clear_run_folder(output: str) -> None:
    """--overwrite: remove the earlier run's model folders and checkpoints (nothing else in the folder)."""
    import shutil

    for pattern in RUN_ARTEFACTS:
        for path in glob.glob(os.path.join(output, pattern)):
            shutil.rmtree(path)


def parse(option_class, argv, prog: str, description: str):
    """Options from defaults, `--config FILE` and flags; ConfigError for a bad config file or value.
    argparse itself answers a bad flag or flag value (exit status 2 with usage)."""
    import yaml
    from trl import TrlParser

    import sys

    argv = list(argv) if argv is not None else sys.argv[1:]
    parser = TrlParser([option_class], prog=prog, description=description)
    parser.add_argument("--config", help="YAML file of option values (names as in this list, underscores); "
                                         "flags override it. training/configs/released.yaml is the released "
                                         "GRPO recipe.")
    if "--config" in argv:
        i = argv.index("--config")
        path = argv[i + 1] if i + 1 < len(argv) else ""
        if not os.path.isfile(path):
            raise ConfigError(f"--config {path or '(missing value)'}: no such file")
        try:
            with open(path, encoding="utf-8") as f:
                content = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(content, dict):
            raise ConfigError(f"--config {path}: must hold a mapping of option: value")
        known = {f.name for f in fields(option_class)}
        unknown = sorted(set(content) - known - {"env"})
        if unknown:
            raise ConfigError(f"--config {path}: unknown option(s) {', '.join(unknown)}; see --help")
    try:
        options = parser.parse_args_and_config(argv)[0]    # [1]: the namespace holding --config
    except ValueError as exc:     # TrlParser's own checks
        raise ConfigError(str(exc)) from None
    options.check()
    return options


@dataclass
class GRPOOptions(CommonOptions):
    """`python -m training.grpo`. Defaults: one GPU, LoRA, the released sampling and loss settings."""
    val_split: Optional[str] = opt("val", "Held-out split for validation gIoU / cIoU (unset: none).")
    max_steps: int = opt(250, "Optimiser steps (>= 1).")
    lr_decay_steps: Optional[int] = opt(None, "Optimiser steps over which the learning rate falls linearly to 0, "
                                              "after which it stays 0; unset: --max-steps (trl's linear "
                                              "schedule). released.yaml sets the released schedule's length.")
    num_generations: int = opt(8, "GRPO group size G: stage-1 rollouts per prompt (>= 2), each followed by "
                                  "one stage-2 rollout.")
    rollout_prompts: int = opt(1, "Prompts per rollout batch, over all processes (released: 128).")
    micro_batch_size: Optional[int] = opt(None, "Rollout rows per process per forward/backward pass; each row "
                                                "brings one sequence of a stage. Unset: the whole batch at once.")
    mini_batch_size: Optional[int] = opt(None, "Sequences per optimiser update, over all processes (released: "
                                               "16). Unset: one update per rollout batch.")
    stage_passes: bool = opt(False, "Update on the stage-1 sequences, then on the stage-2 sequences, in "
                                    "separate optimiser passes over mini-batches (released). Needs "
                                    "--mini-batch-size.")
    generation_batch: int = opt(8, "Prompts per model.generate call when rollouts run in transformers.")
    beta: float = opt(0.005, "KL coefficient against the frozen reference (k3 estimator).")
    epsilon: float = opt(0.2, "Policy-ratio clip.")
    temperature: float = opt(0.99, "Rollout sampling temperature (released: 0.99).")
    top_p: float = opt(0.99, "Rollout top-p.")
    top_k: int = opt(100, "Rollout top-k (0: off).")
    max_completion_length: int = opt(2048, "Response budget in tokens, per stage.")
    reward_variant: Literal["code", "paper"] = opt("code", "code: the released training code's rewards; "
                                                           "paper: the paper's text (format gate, IoU count).")
    eval_steps: int = opt(50, "Validation every N optimiser steps (0: off).")
    eval_samples: int = opt(64, "Validation samples.")
    use_vllm: bool = opt(False, "Generate rollouts with vLLM through trl (needs a CUDA GPU and `pip install "
                                "vllm`); the segmenter and the render still run between the stages.")
    vllm_mode: Literal["colocate", "server"] = opt("colocate", "vLLM in the training processes, or a "
                                                               "`trl vllm-serve` server.")
    vllm_server_host: str = opt("127.0.0.1", "Server mode: host of `trl vllm-serve`.")
    vllm_server_port: int = opt(8000, "Server mode: port of `trl vllm-serve`.")
    vllm_gpu_memory_utilization: float = opt(0.3, "Colocate mode: share of GPU memory vLLM may take.")

    def check(self) -> None:
        super().check()
        positive(self, "rollout_prompts", "micro_batch_size", "mini_batch_size", "generation_batch",
                 "eval_samples", "max_completion_length", "lr_decay_steps")
        if self.num_generations < 2:
            raise ConfigError(f"--num-generations must be at least 2, not {self.num_generations}: GRPO "
                              "compares the rollouts of one prompt with each other")
        if self.eval_steps < 0:
            raise ConfigError("--eval-steps must be 0 (off) or more")
        if not self.temperature > 0:
            raise ConfigError("--temperature must be positive: GRPO samples its rollouts")
        if self.stage_passes and self.mini_batch_size is None:
            raise ConfigError("--stage-passes needs --mini-batch-size (sequences per optimiser update)")
        if self.use_vllm:
            check_vllm()

    def lr_schedule(self) -> dict:
        """trl's (transformers') scheduler settings: linear decay to 0 over --max-steps, or over
        --lr-decay-steps and then 0 (the warmup-stable-decay schedule with no warmup and no stable part,
        the shape of the released Megatron linear schedule: lr x (1 - step / length), 0 past it)."""
        if self.lr_decay_steps is None:
            return {"lr_scheduler_type": "linear"}
        return {"lr_scheduler_type": "warmup_stable_decay",
                "lr_scheduler_kwargs": {"num_stable_steps": 0, "num_decay_steps": self.lr_decay_steps,
                                        "decay_type": "linear", "min_lr_ratio": 0.0}}

    def plan(self, processes: int) -> dict:
        """trl's batch settings for this many processes. A rollout row (one prompt sample) yields two
        sequences, so every micro-batch trains 2 x rows sequences: of both stages, or of one stage
        with --stage-passes (the stage-1 micro-batches first)."""
        G = self.num_generations
        if self.rollout_prompts % processes:
            raise ConfigError(f"--rollout-prompts {self.rollout_prompts} must be a multiple of the "
                              f"{processes} processes (each process scores whole groups)")
        rows = self.rollout_prompts * G // processes
        micro = self.micro_batch_size or rows
        if rows % micro:
            raise ConfigError(f"--micro-batch-size {micro} must divide the {rows} rollouts per process "
                              "(--rollout-prompts x --num-generations / processes)")
        steps = rows // micro                       # micro-batches per rollout batch and per process
        if self.mini_batch_size is None:
            accumulation = steps
        else:
            per_micro = 2 * micro * processes
            if self.mini_batch_size % per_micro:
                raise ConfigError(f"--mini-batch-size {self.mini_batch_size} must be a multiple of {per_micro} "
                                  "(2 sequences per rollout row x --micro-batch-size x processes)")
            accumulation = self.mini_batch_size // per_micro
        per_pass = steps // 2 if self.stage_passes else steps
        if (self.stage_passes and steps % 2) or per_pass % accumulation:
            raise ConfigError(f"--mini-batch-size {self.mini_batch_size} must divide the "
                              f"{2 * rows * processes // (2 if self.stage_passes else 1)} sequences of "
                              f"{'each stage' if self.stage_passes else 'a rollout batch'}; with "
                              "--stage-passes the rollout rows per process must be an even number of "
                              "micro-batches")
        return {"per_device_train_batch_size": micro, "steps_per_generation": steps,
                "gradient_accumulation_steps": accumulation}


@dataclass
class SFTOptions(CommonOptions):
    """`python -m training.sft`: the paper's SFT baseline (GT boxes + random interior points)."""
    output: str = opt("runs/sft", "Run folder: checkpoints, TensorBoard logs, final/ (the merged model).")
    segmenter: str = opt("sam2:facebook/sam2-hiera-large", "Segmenter that renders the stage-2 inputs, as "
                                                           "at inference.")
    epochs: float = opt(1.0, "Passes over the data (when --max-steps is unset).")
    max_steps: Optional[int] = opt(None, "Optimiser steps (>= 1); unset: --epochs decides.")
    batch_size: int = opt(1, "Examples per device per micro-batch.")
    gradient_accumulation_steps: int = opt(8, "Micro-batches per optimiser step.")
    points: int = opt(3, "Random interior points per box in the stage-2 targets (paper: 3).")
    save_steps: int = opt(500, "Checkpoint every N optimiser steps.")
    logging_steps: int = opt(10, "Log every N optimiser steps.")

    def check(self) -> None:
        super().check()
        positive(self, "batch_size", "gradient_accumulation_steps", "points")
        if not self.epochs > 0:
            raise ConfigError("--epochs must be positive")


def check_vllm() -> None:
    """vLLM rollouts need the package and a CUDA GPU: say so before anything is loaded."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("--use-vllm: vLLM is not installed (pip install vllm, on a machine with a CUDA "
                          "GPU); without the flag rollouts run in transformers")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--use-vllm: vLLM needs a CUDA GPU and none is visible; run without --use-vllm")
