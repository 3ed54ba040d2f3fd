"""`python -m training.sft`: the paper's SFT baseline through trl's SFTTrainer.

Each sample gives two prompt-completion examples in the released model's two formats, with no chain
of thought: stage 1 answers the ground-truth boxes; stage 2 (the images rendered from those boxes and
the segmenter's masks, exactly as at inference) answers each box with `points` random interior points.
"""
from __future__ import annotations

import logging
import sys

import numpy as np

from backend.pipeline.prompts import Item, format_answer, parse_answer, stage1_prompt

from .config import load_policy, lora_config, run_cli
from .data import SocioSegData, gt_boxes, model_view

log = logging.getLogger("training.sft")


def random_interior_points(mask: np.ndarray, box, n: int, rng) -> list[tuple[float, float]]:
    """`n` random mask pixels strictly inside `box` (the box centre when the mask has none there)."""
    x1, y1, x2, y2 = box
    ys, xs = np.nonzero(mask)
    keep = (xs > x1) & (xs < x2) & (ys > y1) & (ys < y2)
    xs, ys = xs[keep], ys[keep]
    if len(xs) == 0:
        return [((x1 + x2) / 2, (y1 + y2) / 2)] * n
    pick = rng.choice(len(xs), size=n, replace=len(xs) < n)
    return [(float(xs[i]), float(ys[i])) for i in pick]


def examples_for(sample, chat, segmenter, n_points: int, rng) -> list[dict]:
    from PIL import Image

    from backend.pipeline.stages import stage2_inputs

    map_m, sat_m, gt = model_view(sample, chat)
    boxes = gt_boxes(gt)
    answer1 = format_answer([Item(tuple(b)) for b in boxes], with_points=False)
    text1 = f"<answer>{answer1}</answer>"
    segmenter.set_image(sat_m)
    a1 = parse_answer(text1, sat_m.shape[1], sat_m.shape[0])
    _, _, map_r, sat_r, p2 = stage2_inputs(sample.query, map_m, sat_m, a1, segmenter)
    items2 = [Item(tuple(b), random_interior_points(gt, b, n_points, rng)) for b in boxes]
    text2 = f"<answer>{format_answer(items2, with_points=True)}</answer>"

    def example(images, prompt, completion):
        return {"images": [Image.fromarray(i) for i in images],
                "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                        {"type": "text", "text": prompt}]}],
                "completion": [{"role": "assistant", "content": [{"type": "text", "text": completion}]}]}

    return [example((map_m, sat_m), stage1_prompt(sample.query), text1), example((map_r, sat_r), p2, text2)]


def build(args):
    import datasets
    from trl import SFTConfig, SFTTrainer

    from backend.engines import build_segmenter
    from backend.reasoners.qwen import QwenChat

    device, use_bf16, processor, model = load_policy(args)
    chat = QwenChat(processor, int(args.min_pixels), int(args.max_pixels))
    segmenter = build_segmenter(args.segmenter, device)
    data = SocioSegData(args.data, args.split, int(args.limit) if args.limit else None)
    rng = np.random.default_rng(int(args.seed))
    rows = [ex for s in data.samples() for ex in examples_for(s, chat, segmenter, int(args.points), rng)]
    if not rows:
        raise RuntimeError(f"no readable sample in split {args.split!r} of {args.data!r}")
    if data.skipped:
        log.warning("%d corrupt or incomplete samples skipped", len(data.skipped))
    config = SFTConfig(
        output_dir=args.output, num_train_epochs=float(args.epochs), max_steps=int(args.max_steps),
        per_device_train_batch_size=int(args.batch_size),
        gradient_accumulation_steps=int(args.gradient_accumulation_steps),
        learning_rate=float(args.learning_rate), weight_decay=float(args.weight_decay),
        save_steps=int(args.save_steps), logging_steps=int(args.logging_steps), seed=int(args.seed),
        bf16=use_bf16, use_cpu=device == "cpu", report_to=["tensorboard"], completion_only_loss=True,
        max_length=None, remove_unused_columns=False)
    peft_config = lora_config(args)
    trainer = SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=processor, peft_config=peft_config)
    return trainer, rows


def main(argv=None) -> int:
    return run_cli(argv, "sft.yaml", "python -m training.sft", __doc__, build,
                   lambda trainer, args: trainer.train())


if __name__ == "__main__":
    sys.exit(main())
