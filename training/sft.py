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

from .config import SFTOptions
from .data import SocioSegData, gt_boxes, model_view
from .runner import load_policy, lora_config, run_cli

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


def build(options: SFTOptions):
    """(trainer, examples) from checked options: the data is read before the models are loaded."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from backend.engines import build_segmenter
    from backend.reasoners.qwen import QwenChat

    data = SocioSegData(options.data, options.split, options.limit)
    if not any(data.get(i) is not None for i in range(len(data))):
        raise RuntimeError(f"no readable sample in split {options.split!r} of {options.data!r}; check --data "
                           "and --split")
    device, use_bf16, processor, model = load_policy(options)
    chat = QwenChat(processor, options.min_pixels, options.max_pixels)
    segmenter = build_segmenter(options.segmenter, device)
    rng = np.random.default_rng(options.seed)
    rows = [ex for s in data.samples() for ex in examples_for(s, chat, segmenter, options.points, rng)]
    if data.skipped:
        log.warning("%d corrupt or incomplete samples skipped", len(data.skipped))
    config = SFTConfig(
        output_dir=options.output, num_train_epochs=options.epochs,
        max_steps=options.max_steps if options.max_steps is not None else -1,
        per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        learning_rate=options.lr(), weight_decay=options.weight_decay,
        save_steps=options.save_steps, logging_steps=options.logging_steps, seed=options.seed,
        bf16=use_bf16, use_cpu=device == "cpu", report_to=["tensorboard"], completion_only_loss=True,
        gradient_checkpointing=options.gradient_checkpointing, max_length=None, remove_unused_columns=False)
    trainer = SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=processor, peft_config=lora_config(options))
    return trainer, rows


def train(trainer, options: SFTOptions) -> None:
    trainer.train(resume_from_checkpoint=True if options.resume == "last" else options.resume)


def main(argv=None) -> int:
    return run_cli(argv, SFTOptions, "python -m training.sft", __doc__, build, train)


if __name__ == "__main__":
    sys.exit(main())
