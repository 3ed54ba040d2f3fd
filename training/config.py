"""YAML defaults overridable by flags, shared by the GRPO and SFT entry points."""
from __future__ import annotations

import argparse
import os

import yaml

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def load_config(argv, default_yaml: str, prog: str, description: str) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=os.path.join(CONFIG_DIR, default_yaml))
    known, _ = pre.parse_known_args(argv)
    with open(known.config, encoding="utf-8") as f:
        defaults = yaml.safe_load(f) or {}
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--config", default=known.config, help="YAML file of defaults")
    for key, value in defaults.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            ap.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes", "on"), default=value,
                            metavar="true|false")
        elif isinstance(value, list):
            ap.add_argument(flag, nargs="+", default=value)
        elif value is None:
            ap.add_argument(flag, default=None)
        else:
            ap.add_argument(flag, type=type(value), default=value)
    return ap.parse_args(argv)


def load_policy(args):
    """(device, bf16?, processor, model) of the model to train, on the chosen device's precision."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from backend.device import resolve_device
    from backend.hub import load_pretrained

    device = resolve_device(args.device)
    use_bf16 = device.startswith("cuda") if str(args.bf16) == "auto" else str(args.bf16).lower() == "true"
    hint = "--model /path/to/Qwen2.5-VL-3B-Instruct"
    processor = load_pretrained(AutoProcessor, args.model, "model to train", hint)
    model = load_pretrained(AutoModelForImageTextToText, args.model, "model to train", hint,
                            dtype=torch.bfloat16 if use_bf16 else torch.float32)
    return device, use_bf16, processor, model


def lora_config(args):
    """LoRA on the language model's projections (the vision tower stays as it is); None for full tuning."""
    if not args.lora:
        return None
    from peft import LoraConfig

    targets = "|".join(args.lora_targets)
    return LoraConfig(r=int(args.lora_r), lora_alpha=int(args.lora_alpha), lora_dropout=float(args.lora_dropout),
                      task_type="CAUSAL_LM", target_modules=rf"^(?!.*visual).*\.({targets})$")


def run_cli(argv, yaml_name: str, prog: str, description: str, build, train) -> int:
    """Parse, build (errors the user can fix exit 2 with one line), train, save the final model."""
    import logging
    import sys

    from backend.errors import SocioSegError

    args = load_config(argv, yaml_name, prog, description)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        trainer, extra = build(args)
    except (SocioSegError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    train(trainer, args)
    from .grpo import save_final
    final = save_final(trainer, args.output)
    print(f"trained on {len(extra)} examples; wrote {final} (use it with --reasoner qwen:{final})")
    return 0
