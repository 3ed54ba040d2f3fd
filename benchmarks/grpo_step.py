"""Seconds per GRPO optimiser step and peak GPU memory, with a policy of Qwen2.5-VL-3B's shape.

    .venv/bin/python benchmarks/grpo_step.py --steps 2                 # 1 GPU, LoRA defaults, 3B shape
    .venv/bin/python benchmarks/grpo_step.py --steps 2 --full          # full fine-tuning, vision trained
    .venv/bin/python benchmarks/grpo_step.py --shape tiny --device cpu --steps 1   # a check of the script

The policy has Qwen2.5-VL-3B-Instruct's configuration with random weights (nothing is downloaded; the
self-test's small tokenizer stands in, the embedding keeps the real 151,936 rows), the segmenter is the
self-test's tiny SAM 2 (its cost is not what is measured), the data are synthetic 768-px SocioSeg tiles.
Random weights rarely emit an end-of-turn token, so every completion runs to --max-completion-length:
a worst case for generation. Prints one JSON line: card, seconds per step, peak GPU memory.
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

SHAPES = {
    # Qwen2.5-VL-3B-Instruct's config.json (text and vision towers)
    "3b": dict(text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                         num_key_value_heads=2, vocab_size=151936, mrope_section=[16, 24, 24], rope_theta=1e6),
               vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           fullatt_block_indexes=[7, 15, 23, 31])),
    "tiny": dict(text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=None, mrope_section=[2, 3, 3], rope_theta=1e4),
                 vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                             fullatt_block_indexes=[1])),
}


def save_policy(folder: str, shape: str, device: str) -> str:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from backend.selftest.tiny import build_tiny_vlm

    tiny, processor = build_tiny_vlm()
    s = SHAPES[shape]
    t = dict(s["text"])
    section, theta = t.pop("mrope_section"), t.pop("rope_theta")
    t["vocab_size"] = t["vocab_size"] or tiny.config.text_config.vocab_size
    tc = tiny.config
    cfg = Qwen2_5_VLConfig(
        text_config=dict(**t, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": theta, "mrope_section": section},
                         eos_token_id=tc.text_config.eos_token_id, pad_token_id=tc.text_config.pad_token_id,
                         bos_token_id=tc.text_config.bos_token_id),
        vision_config=s["vision"], image_token_id=tc.image_token_id, video_token_id=tc.video_token_id,
        vision_start_token_id=tc.vision_start_token_id, vision_end_token_id=tc.vision_end_token_id,
        tie_word_embeddings=True)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(cfg).to(dtype)
    model.generation_config = tiny.generation_config
    path = os.path.join(folder, "policy")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    del model
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="3b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="full fine-tuning (the released recipe) instead of LoRA")
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--max-completion-length", type=int, default=2048)
    ap.add_argument("--use-vllm", action="store_true")
    args = ap.parse_args(argv)

    import torch
    from transformers import TrainerCallback

    from backend.selftest.tiny import build_tiny_sam2
    from backend.synth.sample import write_socioseg
    from training.config import GRPOOptions, parse
    from training.grpo import build

    with tempfile.TemporaryDirectory() as tmp:
        policy = save_policy(tmp, args.shape, args.device)
        sam2, sam2_proc = build_tiny_sam2()
        sam2.save_pretrained(os.path.join(tmp, "sam2"))
        sam2_proc.save_pretrained(os.path.join(tmp, "sam2"))
        write_socioseg(os.path.join(tmp, "data"), max(args.steps, 1), "train", seed=11)
        cuda = args.device.startswith("cuda")
        flags = ["--model", policy, "--segmenter", f"sam2:{os.path.join(tmp, 'sam2')}",
                 "--data", os.path.join(tmp, "data"), "--output", os.path.join(tmp, "run"),
                 "--device", args.device, "--max-steps", str(args.steps), "--eval-steps", "0",
                 "--save-steps", str(10 ** 6), "--num-generations", str(args.num_generations),
                 "--max-completion-length", str(args.max_completion_length),
                 "--bf16", "true" if cuda else "false", "--gradient-checkpointing", "true" if cuda else "false"]
        if args.full:
            flags += ["--lora", "false"]
        if args.use_vllm:
            flags += ["--use-vllm"]
        options = parse(GRPOOptions, flags, "grpo_step", "")
        trainer, _ = build(options)
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
        phases = {k: round(v, 2) for k, v in (logged[-1] if logged else {}).items() if k.startswith("seconds/")}
        print(json.dumps({
            "card": torch.cuda.get_device_name() if cuda else "cpu", "shape": args.shape,
            "mode": "full" if args.full else "lora", "rollouts": "vllm" if args.use_vllm else "transformers",
            "num_generations": args.num_generations, "max_completion_length": args.max_completion_length,
            "seconds_per_step": [round(x, 2) for x in times], "last_step_phases_s": phases,
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
