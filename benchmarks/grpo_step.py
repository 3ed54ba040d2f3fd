"""Seconds per GRPO optimiser step and peak GPU memory, with a policy of Qwen2.5-VL-3B's shape.

    .venv/bin/python benchmarks/grpo_step.py --steps 2                 # 1 GPU, LoRA defaults, 3B shape
    .venv/bin/python benchmarks/grpo_step.py --steps 2 --full          # full fine-tuning, vision trained
    .venv/bin/python benchmarks/grpo_step.py --shape tiny --device cpu --steps 1   # a check of the script
    .venv/bin/python benchmarks/grpo_step.py --device cpu --smoke [--layers 4] [--full]   # 3B shape on a CPU

The policy has Qwen2.5-VL-3B-Instruct's published configuration with random weights (nothing is
downloaded; the self-test's small tokenizer stands in, the embedding keeps the real 151,936 rows), the
segmenter is the self-test's tiny SAM 2 (`--segmenter large`: SAM 2 hiera-large's shape), the data are
synthetic 768-px SocioSeg tiles. `--smoke` runs it anywhere: one step, 2 generations of 4 tokens, 112 px
images; on a CPU the bfloat16 weights multiply in float32 one layer at a time (no bf16 units here).
Random weights rarely emit an end-of-turn token, so every completion runs to --max-completion-length:
a worst case for generation. Prints one JSON line: card, seconds per step, peak GPU memory (CUDA) and peak resident memory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SMOKE = {"steps": 1, "num_generations": 2, "max_completion_length": 4, "max_pixels": 112 * 112}


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_segmenter(kind: str, folder: str) -> str:
    """The segmenter's engine spec: the self-test's tiny SAM 2, or SAM 2 hiera-large's shape (random)."""
    import torch
    from transformers import Sam2ImageProcessor, Sam2Model, Sam2Processor

    from backend.selftest import real_shape
    from backend.selftest.tiny import build_tiny_sam2

    path = os.path.join(folder, "sam2")
    if kind == "large":
        torch.manual_seed(0)
        model, proc = Sam2Model(real_shape.sam2_large_config()).eval(), Sam2Processor(image_processor=Sam2ImageProcessor())
    else:
        model, proc = build_tiny_sam2()
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return f"sam2:{path}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["3b", "tiny"], default="3b")
    ap.add_argument("--layers", type=int, default=None, help="3B only: text layers at the real widths "
                    "(a code-path check where all 36 do not fit); default 36")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="full fine-tuning (the released recipe) instead of LoRA")
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--max-completion-length", type=int, default=2048)
    ap.add_argument("--max-pixels", type=int, default=None, help="image budget (default: the released 768*768)")
    ap.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                    help="policy weights; auto: bfloat16 on CUDA and for the 3B shape on CPU")
    ap.add_argument("--segmenter", choices=["tiny", "large"], default="tiny",
                    help="SAM 2: the self-test's tiny one, or hiera-large's shape (random weights)")
    ap.add_argument("--gradient-checkpointing", choices=["auto", "true", "false"], default="auto",
                    help="auto: on for CUDA")
    ap.add_argument("--smoke", action="store_true", help="real shape on any machine: 1 step, 2 generations, "
                    "4 tokens, 112 px images, SAM 2 large")
    ap.add_argument("--use-vllm", action="store_true")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
        args.segmenter = "large"

    import torch
    from transformers import TrainerCallback

    from backend.selftest.real_shape import fp32_matmuls_on_cpu, save_qwen
    from backend.synth.sample import write_socioseg
    from training.config import GRPOOptions, parse
    from training.grpo import build

    cuda = args.device.startswith("cuda")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(args.dtype) or (
        torch.bfloat16 if cuda or args.shape == "3b" else torch.float32)
    bf16 = dtype == torch.bfloat16
    if bf16 and not cuda:
        fp32_matmuls_on_cpu()
    ckpt = args.gradient_checkpointing == "true" or (args.gradient_checkpointing == "auto" and cuda)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        policy = save_qwen(os.path.join(tmp, "policy"), args.shape, dtype=dtype, layers=args.layers)
        segmenter = save_segmenter(args.segmenter, tmp)
        write_socioseg(os.path.join(tmp, "data"), max(args.steps, 1), "train", seed=11)
        flags = ["--model", policy, "--segmenter", segmenter,
                 "--data", os.path.join(tmp, "data"), "--output", os.path.join(tmp, "run"),
                 "--device", args.device, "--max-steps", str(args.steps), "--eval-steps", "0",
                 "--save-steps", str(10 ** 6), "--num-generations", str(args.num_generations),
                 "--max-completion-length", str(args.max_completion_length),
                 "--bf16", "true" if bf16 else "false", "--gradient-checkpointing", "true" if ckpt else "false"]
        if args.max_pixels:
            flags += ["--max-pixels", str(args.max_pixels), "--min-pixels", str(min(3136, args.max_pixels))]
        if args.full:
            flags += ["--lora", "false"]
        if args.use_vllm:
            flags += ["--use-vllm"]
        options = parse(GRPOOptions, flags, "grpo_step", "")
        trainer, _ = build(options)
        setup_s = time.perf_counter() - t0
        rss_setup = peak_rss_mb()
        times = []

        class Clock(TrainerCallback):
            def on_step_begin(self, *a, **k):
                self.t = time.perf_counter()

            def on_step_end(self, *a, **k):
                times.append(time.perf_counter() - self.t)

        trainer.add_callback(Clock())
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        logged = [e for e in trainer.state.log_history if any(k.startswith("seconds/") for k in e)]
        last = logged[-1] if logged else {}
        phases = {k: round(v, 2) for k, v in last.items() if k.startswith("seconds/")}
        result = {
            "card": torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)", "shape": args.shape,
            "text_layers": args.layers or (36 if args.shape == "3b" else 2), "dtype": str(dtype).split(".")[-1],
            "mode": "full" if args.full else "lora", "rollouts": "vllm" if args.use_vllm else "transformers",
            "segmenter": "sam2-hiera-large shape" if args.segmenter == "large" else "tiny sam2",
            "num_generations": args.num_generations, "max_completion_length": args.max_completion_length,
            "max_pixels": args.max_pixels or options.max_pixels, "gradient_checkpointing": ckpt,
            "setup_s": round(setup_s, 1), "seconds_per_step": [round(x, 2) for x in times],
            "last_step_phases_s": phases, "loss": last.get("loss"),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else None,
            "peak_rss_gib": round(peak_rss_mb() / 1024, 2), "rss_after_setup_gib": round(rss_setup / 1024, 2)}
        print(json.dumps(result))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
