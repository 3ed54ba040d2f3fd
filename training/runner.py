"""What the training entry points share: parse and check, load the policy, LoRA, save the final model.

Errors the user can fix exit with status 2 and one line naming the option; they are found before a
model is loaded (training.config) or, for data, before any file is written.
"""
from __future__ import annotations

import logging
import sys

from backend.errors import SocioSegError
from backend.logsetup import setup_logging

from .config import ConfigError, clear_run_folder, parse

log = logging.getLogger("training")


def load_policy(options):
    """(device, bf16?, processor, model) of the model to train, on the chosen device's precision."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from backend.device import resolve_device
    from backend.hub import load_pretrained

    from transformers import set_seed

    # Seeded before anything random is drawn (LoRA's initial A matrices come next): every process of
    # a multi-process run, and a rerun, starts from the same adapter.
    set_seed(options.seed)
    device = resolve_device(options.device)
    use_bf16 = device.startswith("cuda") if options.bf16 == "auto" else options.bf16 == "true"
    hint = "--model /path/to/Qwen2.5-VL-3B-Instruct"
    processor = load_pretrained(AutoProcessor, options.model, "model to train", hint)
    model = load_pretrained(AutoModelForImageTextToText, options.model, "model to train", hint,
                            dtype=torch.bfloat16 if use_bf16 else torch.float32)
    if not options.lora and options.freeze_vision:
        for name, p in model.named_parameters():
            if "visual" in name:
                p.requires_grad_(False)
    return device, use_bf16, processor, model


def lora_config(options):
    """LoRA on the language model's projections (the vision tower stays as it is); None for full tuning."""
    if not options.lora:
        return None
    from peft import LoraConfig

    targets = "|".join(options.lora_targets)
    return LoraConfig(r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout,
                      task_type="CAUSAL_LM", target_modules=rf"^(?!.*visual).*\.({targets})$")


def save_final(trainer, output: str) -> str:
    """A model folder the backend and the plugin load directly (`--reasoner qwen:<output>/final`).
    `Trainer.save_model` gathers sharded weights (DeepSpeed, FSDP) and writes on the main process;
    LoRA runs also keep `adapter/` and merge it into `final/`."""
    import os

    final = os.path.join(output, "final")
    trainer.processing_class.tokenizer.padding_side = "right"
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        trainer.save_model(os.path.join(output, "adapter"))
        if trainer.accelerator.is_main_process:
            model.merge_and_unload().save_pretrained(final)
            trainer.processing_class.save_pretrained(final)
    else:
        trainer.save_model(final)
    return final


def error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run_cli(argv, option_class, prog: str, description: str, build, train) -> int:
    """Parse and check (exit 2 on a mistake), build the trainer, train, save the final model."""
    setup_logging(logging.INFO, "%(levelname)s %(name)s: %(message)s")
    try:
        options = parse(option_class, argv, prog, description)
    except ConfigError as exc:
        return error(str(exc))
    except SystemExit as exc:         # argparse: --help (0) or a bad flag value (2, usage printed)
        return int(exc.code or 0)
    try:
        trainer, rows = build(options)
    except (SocioSegError, RuntimeError) as exc:
        return error(str(exc))
    if options.overwrite:
        clear_run_folder(options.output)
    train(trainer, options)
    final = save_final(trainer, options.output)
    if trainer.accelerator.is_main_process:
        print(f"trained on {len(rows)} examples; wrote {final} (use it with --reasoner qwen:{final})")
    return 0
