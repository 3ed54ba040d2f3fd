"""`python -m training.grpo`: two-stage GRPO of a Qwen2.5-VL reasoner with trl (+ peft LoRA).

Each prompt gets G stage-1 rollouts; each goes through the frozen segmenter and the render step, then
gets one stage-2 rollout in a fresh conversation (exactly the backend's inference path). Stage-1 and
stage-2 sequences are both trained, each with its own group-normalised advantage, with trl's clipped
GRPO loss and a KL penalty to the frozen reference.
"""
from __future__ import annotations

import logging
import os
import sys
import time

import numpy as np
import torch

from backend.pipeline.prompts import MAX_PIXELS, MIN_PIXELS

from .config import load_policy, lora_config, run_cli
from .data import SocioSegData, gt_boxes, model_view
from .rewards import group_advantages
from .rollout import two_stage_rollout

log = logging.getLogger("training.grpo")


def _pad(seqs, value, left: bool):
    n = max(len(s) for s in seqs)
    out = torch.full((len(seqs), n), value, dtype=seqs[0].dtype)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        if left:
            out[i, n - len(s):], mask[i, n - len(s):] = s, 1
        else:
            out[i, :len(s)], mask[i, :len(s)] = s, 1
    return out, mask


def make_trainer_class():
    from trl import GRPOTrainer

    class TwoStageGRPOTrainer(GRPOTrainer):
        """GRPOTrainer whose rollouts are SocioReasoner's two stages (see module docstring)."""

        def __init__(self, *args, socio_data: SocioSegData, segmenter, reward_variant: str = "code",
                     min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS, **kwargs):
            super().__init__(*args, **kwargs)
            from backend.reasoners.qwen import QwenChat

            self.socio_data = socio_data
            self.segmenter = segmenter
            self.reward_variant = reward_variant
            self.chat = QwenChat(self.processing_class, min_pixels, max_pixels)
            self.processing_class.tokenizer.padding_side = "left"
            self.last_rollouts = []

        def _gen_kwargs(self) -> dict:
            return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                    "top_k": self.top_k or None, "max_new_tokens": self.max_completion_length,
                    "pad_token_id": self.processing_class.tokenizer.pad_token_id}

        def _generate_and_score_completions(self, inputs):
            device = self.accelerator.device
            mode = "train" if self.model.training else "eval"
            G = self.num_generations
            model = self.accelerator.unwrap_model(self.model)
            seqs, adv, rollouts = [], [], []
            indices = [int(x["index"]) for x in inputs]
            groups = [indices[i] for i in range(0, len(indices), G)]
            for idx in groups:
                sample = self.socio_data.get(idx)
                if sample is None:
                    raise RuntimeError(f"sample {idx} became unreadable during training")
                map_m, sat_m, gt = model_view(sample, self.chat)
                ro = two_stage_rollout(model, self.chat, self.segmenter, sample.query, map_m, sat_m, gt,
                                       gt_boxes(gt), G, self._gen_kwargs(), self.eos_token_ids, self.reward_variant)
                rollouts.append(ro)
                for stage in (ro.stage1, ro.stage2):
                    seqs += stage
                    adv += list(group_advantages([s.rewards["total"] for s in stage], G))
            self.last_rollouts = rollouts
            pad_id = self.processing_class.tokenizer.pad_token_id
            prompt_ids, prompt_mask = _pad([s.prompt_ids for s in seqs], pad_id, left=True)
            completion_ids, completion_mask = _pad([s.completion_ids for s in seqs], pad_id, left=False)
            sampling, _ = _pad([s.sampling_logps.float() for s in seqs], 0.0, left=False)
            out = {
                "prompt_ids": prompt_ids.to(device), "prompt_mask": prompt_mask.to(device),
                "completion_ids": completion_ids.to(device), "completion_mask": completion_mask.to(device),
                "advantages": torch.tensor(adv, dtype=torch.float32, device=device),
                "pixel_values": torch.cat([s.pixel_values for s in seqs]).to(device),
                "image_grid_thw": torch.cat([s.image_grid_thw for s in seqs]).to(device),
                "num_images": [2] * len(seqs),
                "sampling_per_token_logps": sampling.to(device),
                "num_items_in_batch": completion_mask.sum().to(device),
            }
            if seqs[0].mm_token_type_ids is not None:
                mm, _ = _pad([s.mm_token_type_ids for s in seqs], 0, left=True)
                out["mm_token_type_ids"] = torch.cat([mm, torch.zeros_like(completion_ids)], dim=1).to(device)
            if self.beta != 0.0:
                out["ref_per_token_logps"] = self._reference_logps(out)
            self._log_rollouts(mode, rollouts)
            return out

        def _reference_logps(self, batch):
            from trl.trainer.grpo_trainer import use_adapter

            kwargs = dict(
                input_ids=torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1),
                attention_mask=torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1),
                logits_to_keep=batch["completion_ids"].size(1), pixel_values=batch["pixel_values"],
                image_grid_thw=batch["image_grid_thw"], num_images=batch["num_images"],
                mm_token_type_ids=batch.get("mm_token_type_ids"))
            with torch.no_grad():
                if self.ref_model is not None:
                    return self._get_per_token_logps_and_entropies(self.ref_model, **kwargs)[0]
                model = self.accelerator.unwrap_model(self.model)
                with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
                    return self._get_per_token_logps_and_entropies(self.model, **kwargs)[0]

        def _log_rollouts(self, mode, rollouts):
            m = self._metrics[mode]
            for stage in (1, 2):
                seqs = [s for ro in rollouts for s in (ro.stage1 if stage == 1 else ro.stage2)]
                for key in ("format", "accuracy", "length", "total"):
                    m[f"stage{stage}/reward_{key}"].append(float(np.mean([s.rewards[key] for s in seqs])))
                m[f"stage{stage}/completion_length"].append(float(np.mean([len(s.completion_ids) for s in seqs])))
            m["mask_iou"].append(float(np.mean([v for ro in rollouts for v in ro.mask_ious])))
            for key in rollouts[0].seconds:
                m[f"seconds/{key}"].append(float(sum(ro.seconds[key] for ro in rollouts)))

    return TwoStageGRPOTrainer


def validation_callback(trainer_ref, data: SocioSegData, segmenter, every: int):
    """Greedy gIoU / cIoU on the held-out split every `every` steps, logged with the training metrics."""
    from transformers import TrainerCallback

    class Validate(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if every <= 0 or state.global_step % every != 0 or len(data) == 0:
                return
            from backend.reasoners.qwen import GenerationSettings, QwenReasoner

            from .evaluate import evaluate
            tr = trainer_ref()
            model = tr.accelerator.unwrap_model(tr.model)
            was_training = model.training
            model.eval()
            tr.processing_class.tokenizer.padding_side = "left"
            reasoner = QwenReasoner.from_loaded(model, tr.processing_class,
                                                GenerationSettings(tr.max_completion_length),
                                                tr.chat.min_pixels, tr.chat.max_pixels)
            t = time.perf_counter()
            summary = evaluate(data, reasoner, segmenter)["metrics"]["all"]
            if was_training:
                model.train()
            tr.log({"val/gIoU": summary["gIoU"], "val/cIoU": summary["cIoU"], "val/F1": summary["F1"],
                    "val/seconds": time.perf_counter() - t})

    return Validate()


def build(args):
    """(trainer, train data) from parsed arguments; nothing is trained yet."""
    import datasets
    from trl import GRPOConfig

    from backend.engines import build_segmenter

    device, use_bf16, processor, model = load_policy(args)
    segmenter = build_segmenter(args.segmenter, device)
    train = SocioSegData(args.data, args.split, int(args.limit) if args.limit else None)
    good = [i for i in range(len(train)) if train.get(i) is not None]
    if not good:
        raise RuntimeError(f"no readable sample in split {args.split!r} of {args.data!r}")
    if train.skipped:
        log.warning("%d corrupt or incomplete training samples skipped", len(train.skipped))
    G = int(args.num_generations)
    lr = float(args.learning_rate) if args.learning_rate not in (None, "null", "None") else (1e-5 if args.lora else 1e-6)
    config = GRPOConfig(
        output_dir=args.output, max_steps=int(args.max_steps), learning_rate=lr,
        weight_decay=float(args.weight_decay), beta=float(args.beta), epsilon=float(args.epsilon),
        num_generations=G, per_device_train_batch_size=G * int(args.prompts_per_step),
        gradient_accumulation_steps=int(args.gradient_accumulation_steps), steps_per_generation=1,
        temperature=float(args.temperature), top_p=float(args.top_p), top_k=int(args.top_k),
        max_completion_length=int(args.max_completion_length), logging_steps=int(args.logging_steps),
        save_steps=int(args.save_steps), seed=int(args.seed), bf16=use_bf16, use_cpu=device == "cpu",
        report_to=["tensorboard"],
        remove_unused_columns=False, loss_type="grpo", disable_dropout=True, save_only_model=False)
    peft_config = lora_config(args)
    rows = datasets.Dataset.from_dict({"prompt": [train.get(i).query for i in good], "index": good})
    Trainer = make_trainer_class()

    def stage1_reward_func(completions, **kwargs):
        raise RuntimeError("rewards are computed in the two-stage rollout, not by trl")

    trainer = Trainer(model=model, reward_funcs=[stage1_reward_func], args=config, train_dataset=rows,
                      processing_class=processor, peft_config=peft_config, socio_data=train,
                      segmenter=segmenter, reward_variant=args.reward_variant,
                      min_pixels=int(args.min_pixels), max_pixels=int(args.max_pixels))
    if args.val_split and int(args.eval_steps) > 0:
        try:
            val = SocioSegData(args.data, args.val_split, int(args.eval_samples))
        except RuntimeError as exc:
            log.warning("no validation split (%s); validation is off", exc)
        else:
            import weakref
            trainer.add_callback(validation_callback(weakref.ref(trainer), val, segmenter, int(args.eval_steps)))
    return trainer, good


def save_final(trainer, output: str) -> str:
    """A model folder the backend and the plugin load directly (`--reasoner qwen:<output>/final`)."""
    final = os.path.join(output, "final")
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model.save_pretrained(os.path.join(output, "adapter"))
        model = model.merge_and_unload()
    model.save_pretrained(final)
    trainer.processing_class.tokenizer.padding_side = "right"
    trainer.processing_class.save_pretrained(final)
    return final


def main(argv=None) -> int:
    def train(trainer, args):
        resume = True if args.resume == "last" else args.resume
        trainer.train(resume_from_checkpoint=resume or None)

    return run_cli(argv, "grpo.yaml", "python -m training.grpo", __doc__, build, train)


if __name__ == "__main__":
    sys.exit(main())
