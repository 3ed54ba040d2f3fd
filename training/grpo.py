"""`python -m training.grpo`: two-stage GRPO of a Qwen2.5-VL reasoner with trl (+ peft LoRA).

Each prompt gets G stage-1 rollouts; each goes through the frozen segmenter and the render step, then
gets one stage-2 rollout in a fresh conversation (the backend's inference path). Stage-1 and stage-2
sequences are both trained, each with its own group-normalised advantage (training.rewards), with trl's
clipped GRPO loss and a k3 KL penalty to the frozen reference. With --stage-passes the two stages are
updated in separate optimiser passes over mini-batches, stage 1 first, as the released trainer does.
Options: `--help`; the released recipe: `--config training/configs/released.yaml`.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
import weakref

import numpy as np
import torch
from transformers import TrainerCallback
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation
# trl internals this trainer relies on (pinned trl>=1.16,<2 in requirements.txt): the hooks
# `_generate_and_score_completions` (returns the batch dict `_compute_loss` reads: prompt/completion ids
# and masks, 1-D `advantages`, `pixel_values`, `image_grid_thw`, `num_images`, optional
# `old_per_token_logps`, `ref_per_token_logps`, `sampling_per_token_logps`, `num_items_in_batch`) and
# `_prepare_inputs` (its buffering by `_step`, `_buffered_inputs`, `args.steps_per_generation`,
# `num_iterations`), `_get_per_token_logps_and_entropies`, `_metrics`, `vllm_generation` (with
# `generate` and `sync_weights`) and `_last_loaded_step`, `eos_token_ids`, `model_wrapped`, and the helpers
# `unwrap_model_for_generation`,
# `split_tensor_dict`, `shuffle_sequence_dict`, `split_pixel_values_by_grid`,
# `unsplit_pixel_values_by_grid`, `use_adapter` and `add_fused_lm_head` (the log-prob head; its
# temperature is fixed when it is added).
from trl.trainer.grpo_trainer import use_adapter
from trl.trainer.utils import (shuffle_sequence_dict, split_pixel_values_by_grid, split_tensor_dict,
                               unsplit_pixel_values_by_grid)

from backend.errors import SocioSegError

from .config import GRPOOptions
from .data import SocioSegData, gt_boxes, model_view
from .rewards import group_advantages, released_totals
from .rollout import RolloutSample, TransformersSampler, VLLMSampler, two_stage_rollouts
from .runner import load_policy, lora_config, run_cli

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


class TwoStageGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose rollouts are SocioReasoner's two stages (see the module docstring)."""

    def __init__(self, *args, socio_data: SocioSegData, segmenter, options: GRPOOptions, **kwargs):
        super().__init__(*args, **kwargs)
        from backend.reasoners.qwen import QwenChat

        self._logps_from_raw_logits()

        self.socio_data, self.segmenter, self.options = socio_data, segmenter, options
        self.chat = QwenChat(self.processing_class, options.min_pixels, options.max_pixels)
        self.processing_class.tokenizer.padding_side = "left"
        self.last_rollouts = []

    def _logps_from_raw_logits(self) -> None:
        """As released, the policy's, the old and the reference log-probs come from the raw logits;
        trl divides them by the sampling temperature (0.99 in the released recipe) in the fused LM head
        it adds to the models. Its head is added again at temperature 1 (the newer head answers the
        fused calls; other calls, `generate` included, pass through unchanged). Sampling itself keeps
        the temperature."""
        from accelerate.utils import is_peft_model
        from trl.trainer.utils import add_fused_lm_head

        policy = self.model.get_base_model() if is_peft_model(self.model) else self.model
        add_fused_lm_head(policy, temperature=1.0, cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32,
                          outputs=("log_probs", "entropy"))
        if self.ref_model is not None:
            add_fused_lm_head(self.accelerator.unwrap_model(self.ref_model), temperature=1.0,
                              cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32)

    def _gen_kwargs(self) -> dict:
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k or None, "max_new_tokens": self.max_completion_length,
                "repetition_penalty": 1.0, "pad_token_id": self.processing_class.tokenizer.pad_token_id}

    @contextlib.contextmanager
    def _sampler(self):
        """The rollout engine: vLLM (weights synced once per optimiser step) or `model.generate` on the
        unwrapped policy (DeepSpeed ZeRO-3 parameters gathered for the duration, as trl does)."""
        if self.use_vllm:
            if self.state.global_step != self._last_loaded_step:
                self.vllm_generation.sync_weights()
                self._last_loaded_step = self.state.global_step
            yield VLLMSampler(self.vllm_generation, self.chat, self.eos_token_ids, self.accelerator.device)
            return
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                         gather_deepspeed3_params=self.args.ds3_gather_for_generation) as model:
            yield TransformersSampler(model, self.chat, self._gen_kwargs(), self.eos_token_ids,
                                      self.options.generation_batch)

    def _samples(self, indices: list[int]) -> list[RolloutSample]:
        out = []
        for idx in indices:
            sample = self.socio_data.get(idx)
            if sample is None:
                raise RuntimeError(f"sample {idx} became unreadable during training")
            map_m, sat_m, _ = model_view(sample, self.chat)
            out.append(RolloutSample(sample.query, map_m, sat_m, sample.mask, gt_boxes(sample.mask)))
        return out

    def _generate_and_score_completions(self, inputs):
        device = self.accelerator.device
        mode = "train" if self.model.training else "eval"
        G = self.num_generations
        indices = [int(x["index"]) for x in inputs]
        samples = self._samples(indices[::G])
        with self._sampler() as sampler:
            rollouts = two_stage_rollouts(sampler, self.segmenter, samples, G, self.options.reward_variant)
        self.last_rollouts = rollouts
        # stage-major order: every stage-1 sequence, then every stage-2 one (the stage passes rely on it)
        seqs, adv = [], []
        for stage in ("stage1", "stage2"):
            part = [s for ro in rollouts for s in getattr(ro, stage)]
            seqs += part
            adv += list(group_advantages(released_totals([s.rewards for s in part]), G))
        pad_id = self.processing_class.tokenizer.pad_token_id
        prompt_ids, prompt_mask = _pad([s.prompt.ids for s in seqs], pad_id, left=True)
        completion_ids, completion_mask = _pad([s.completion_ids for s in seqs], pad_id, left=False)
        sampling, _ = _pad([s.sampling_logps.float() for s in seqs], 0.0, left=False)
        out = {
            "prompt_ids": prompt_ids.to(device), "prompt_mask": prompt_mask.to(device),
            "completion_ids": completion_ids.to(device), "completion_mask": completion_mask.to(device),
            "advantages": torch.tensor(adv, dtype=torch.float32, device=device),
            "pixel_values": torch.cat([s.prompt.pixel_values for s in seqs]).to(device),
            "image_grid_thw": torch.cat([s.prompt.image_grid_thw for s in seqs]).to(device),
            "num_images": [2] * len(seqs),
            "sampling_per_token_logps": sampling.to(device),
            "num_items_in_batch": completion_mask.sum().to(device),
        }
        if seqs[0].prompt.mm_token_type_ids is not None:
            mm, _ = _pad([s.prompt.mm_token_type_ids for s in seqs], 0, left=True)
            out["mm_token_type_ids"] = torch.cat([mm, torch.zeros_like(completion_ids)], dim=1).to(device)
        # Several updates per rollout batch, or rollouts from vLLM: the ratio's denominator is the
        # training model's own log-probs before the updates (the released trainer recomputes them too).
        if self.use_vllm or self.args.gradient_accumulation_steps % self.args.steps_per_generation:
            out["old_per_token_logps"] = self._logps(out, reference=False)
        if self.beta != 0.0:
            out["ref_per_token_logps"] = self._logps(out, reference=True)
        self._log_rollouts(mode, rollouts)
        return out

    def _logps(self, batch, reference: bool):
        kwargs = dict(
            input_ids=torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1),
            attention_mask=torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1),
            logits_to_keep=batch["completion_ids"].size(1), pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"], num_images=batch["num_images"],
            mm_token_type_ids=batch.get("mm_token_type_ids"),
            batch_size=2 * self.args.per_device_train_batch_size)
        with torch.no_grad():
            if not reference:
                return self._get_per_token_logps_and_entropies(self.model, **kwargs)[0]
            if self.ref_model is not None:
                return self._get_per_token_logps_and_entropies(self.ref_model, **kwargs)[0]
            model = self.accelerator.unwrap_model(self.model)
            with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
                return self._get_per_token_logps_and_entropies(self.model, **kwargs)[0]

    def _prepare_inputs(self, generation_batch):
        """With --stage-passes: the rollout batch's micro-batches hold stage-1 sequences first, then
        stage-2 ones, each stage shuffled within itself, so each optimiser update sees one stage."""
        if not (self.options.stage_passes and self.model.training):
            return super()._prepare_inputs(generation_batch)
        steps = self.args.steps_per_generation
        if self._step % (steps * self.num_iterations) == 0 or self._buffered_inputs is None:
            batch = split_pixel_values_by_grid(self._generate_and_score_completions(generation_batch))
            stages = split_tensor_dict(batch, 2)
            self._buffered_inputs = [unsplit_pixel_values_by_grid(part) for half in stages
                                     for part in split_tensor_dict(shuffle_sequence_dict(half), steps // 2)]
        return self._buffered_inputs[self._step % steps]

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


class Validate(TrainerCallback):
    """gIoU / cIoU / F1 on the held-out split every `every` steps, logged with the training metrics,
    sampled with the backend's default generation settings (the released evaluation sampling) within
    the training response budget."""

    def __init__(self, trainer, data: SocioSegData, segmenter, every: int):
        self.trainer, self.data, self.segmenter, self.every = weakref.ref(trainer), data, segmenter, every

    def on_step_end(self, args, state, control, **kwargs):
        if self.every <= 0 or state.global_step % self.every != 0 or len(self.data) == 0:
            return
        from backend.reasoners.qwen import GenerationSettings, QwenReasoner

        from .evaluate import evaluate
        tr = self.trainer()
        model = tr.accelerator.unwrap_model(tr.model)
        was_training = model.training
        model.eval()
        tr.processing_class.tokenizer.padding_side = "left"
        settings = GenerationSettings(max_new_tokens=tr.max_completion_length)
        reasoner = QwenReasoner.from_loaded(model, tr.processing_class, settings,
                                            tr.chat.min_pixels, tr.chat.max_pixels)
        t = time.perf_counter()
        try:
            summary = evaluate(self.data, reasoner, self.segmenter)["metrics"]["all"]
        except SocioSegError as exc:      # e.g. no readable validation sample: training goes on
            log.warning("validation skipped: %s", exc)
            return
        finally:
            if was_training:
                model.train()
        tr.log({"val/gIoU": summary["gIoU"], "val/cIoU": summary["cIoU"], "val/F1": summary["F1"],
                "val/seconds": time.perf_counter() - t})


def readable_indices(data: SocioSegData) -> list[int]:
    good = [i for i in range(len(data)) if data.get(i) is not None]
    if not good:
        raise RuntimeError(f"no readable sample in split {data.split!r} of {data.source!r} "
                           f"({len(data.skipped)} corrupt or incomplete); check --data and --split")
    if data.skipped:
        log.warning("%d corrupt or incomplete training samples skipped", len(data.skipped))
    return good


def build(options: GRPOOptions):
    """(trainer, train rows) from checked options; data first, then the models; nothing is trained."""
    import datasets
    from accelerate import PartialState
    from trl import GRPOConfig

    from backend.engines import build_segmenter

    plan = options.plan(PartialState().num_processes)
    train = SocioSegData(options.data, options.split, options.limit)
    good = readable_indices(train)
    device, use_bf16, processor, model = load_policy(options)
    segmenter = build_segmenter(options.segmenter, device)
    config = GRPOConfig(
        output_dir=options.output, max_steps=options.max_steps, learning_rate=options.lr(), **options.lr_schedule(),
        weight_decay=options.weight_decay, beta=options.beta, epsilon=options.epsilon,
        num_generations=options.num_generations, per_device_train_batch_size=plan["per_device_train_batch_size"],
        gradient_accumulation_steps=plan["gradient_accumulation_steps"],
        steps_per_generation=plan["steps_per_generation"],
        temperature=options.temperature, top_p=options.top_p, top_k=options.top_k, repetition_penalty=1.0,
        max_completion_length=options.max_completion_length, logging_steps=options.logging_steps,
        save_steps=options.save_steps, seed=options.seed, bf16=use_bf16, use_cpu=device == "cpu",
        gradient_checkpointing=options.gradient_checkpointing, report_to=["tensorboard"],
        remove_unused_columns=False, loss_type="grpo", disable_dropout=True, save_only_model=False,
        use_vllm=options.use_vllm, vllm_mode=options.vllm_mode, vllm_server_host=options.vllm_server_host,
        vllm_server_port=options.vllm_server_port,
        vllm_gpu_memory_utilization=options.vllm_gpu_memory_utilization,
        vllm_importance_sampling_correction=False,
        # the released k3 KL term is not multiplied by the importance ratio (trl >= 1.16 does by default)
        use_bias_correction_kl=False)
    rows = datasets.Dataset.from_dict({"prompt": [train.get(i).query for i in good], "index": good})

    def stage1_reward_func(completions, **kwargs):
        raise RuntimeError("rewards are computed in the two-stage rollout, not by trl")

    trainer = TwoStageGRPOTrainer(model=model, reward_funcs=[stage1_reward_func], args=config,
                                  train_dataset=rows, processing_class=processor,
                                  peft_config=lora_config(options), socio_data=train, segmenter=segmenter,
                                  options=options)
    if options.val_split and options.eval_steps > 0:
        try:
            val = SocioSegData(options.data, options.val_split, options.eval_samples)
        except RuntimeError as exc:
            log.warning("no validation split (%s); validation is off", exc)
        else:
            trainer.add_callback(Validate(trainer, val, segmenter, options.eval_steps))
    return trainer, good


def train(trainer, options: GRPOOptions) -> None:
    trainer.train(resume_from_checkpoint=True if options.resume == "last" else options.resume)


def main(argv=None) -> int:
    return run_cli(argv, GRPOOptions, "python -m training.grpo", __doc__, build, train)


if __name__ == "__main__":
    sys.exit(main())
