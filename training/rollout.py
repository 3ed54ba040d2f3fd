"""Two-stage rollouts of a batch of samples, as the released training pipeline runs them.

For every sample: G stage-1 samples; the frozen segmenter on each; the render; one stage-2 sample each in
a fresh conversation; the segmenter again; the rewards. All stage-1 prompts of a batch are generated
together, then all stage-2 prompts (`TransformersSampler` chunks them for `model.generate`;
`VLLMSampler` hands them to trl's vLLM engine). Prompts, parsing, render and segmenter are the
backend's own code, so what is trained is what the plugin runs.

Rewards follow the release: responses are decoded with special tokens and scored by
`training.rewards`; GT boxes and the stage-2 IoU are at the sample's ORIGINAL resolution (the final
mask resized to it by nearest neighbour).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from backend.pipeline.prompts import parse_answer, stage1_prompt
from backend.pipeline.stages import stage2_inputs
from backend.segmenters.base import Prompt, union

from .rewards import answer_text, clean_response, stage1_rewards, stage2_rewards


@dataclass
class PromptParts:
    """One encoded prompt, unpadded: what the loss needs besides the completion."""
    ids: torch.Tensor                  # 1-D
    mm_token_type_ids: torch.Tensor | None
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor       # (2, 3): map, satellite


@dataclass
class Completion:
    prompt: int                        # index into the sampler's prompt list
    ids: torch.Tensor                  # 1-D, up to and including the first end-of-turn token
    logps: torch.Tensor                # 1-D log-probs of `ids` under the sampling policy
    text: str                          # decoded with special tokens, end tokens removed (as scored)
    plain: str = ""                    # decoded without special tokens (what the segmenter reads)


@dataclass
class Sequence:
    stage: int
    prompt: PromptParts
    completion_ids: torch.Tensor
    sampling_logps: torch.Tensor
    text: str
    prompt_text: str
    rewards: dict
    images: tuple = ()


@dataclass
class Rollout:
    stage1: list[Sequence] = field(default_factory=list)
    stage2: list[Sequence] = field(default_factory=list)
    mask_ious: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class RolloutSample:
    """A training sample in both frames: model-size images, original-size ground truth."""
    query: str
    map_image: np.ndarray              # model size
    sat_image: np.ndarray              # model size
    gt_mask: np.ndarray                # original size, bool
    gt_boxes: list                     # from the original mask (training.data.gt_boxes)


def _prompt_parts(enc, i: int) -> PromptParts:
    mask = enc["attention_mask"][i].bool()
    mm = enc["mm_token_type_ids"][i][mask].cpu() if "mm_token_type_ids" in enc else None
    grid = enc["image_grid_thw"]
    rows = grid.prod(dim=-1)
    start = int(rows[: 2 * i].sum())
    end = start + int(rows[2 * i: 2 * i + 2].sum())
    return PromptParts(enc["input_ids"][i][mask].cpu(), mm, enc["pixel_values"][start:end].cpu(),
                       grid[2 * i: 2 * i + 2].cpu())


def _cut(ids: torch.Tensor, eos_ids) -> int:
    for k, t in enumerate(ids.tolist()):
        if t in eos_ids:
            return k + 1
    return len(ids)


def sampled_logps(step_logits, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probs of the sampled `tokens` (rows x steps) from `generate`'s per-step logits, one step at a
    time: stacking them as float32 first would hold rows x steps x 151,936 floats (10 GB for 8 rollouts
    of 2,048 tokens of Qwen2.5-VL's vocabulary) on top of the logits themselves."""
    out = torch.empty(tokens.shape, dtype=torch.float32, device=tokens.device)
    for t, logits in enumerate(step_logits):
        lp = torch.log_softmax(logits.float() / temperature, dim=-1)
        out[:, t] = lp.gather(-1, tokens[:, t:t + 1]).squeeze(-1)
    return out


class TransformersSampler:
    """Rollouts with `model.generate`, `batch` prompts per call (each with n return sequences)."""

    def __init__(self, model, chat, gen_kwargs: dict, eos_ids, batch: int = 8):
        self.model, self.chat, self.gen_kwargs, self.eos_ids, self.batch = model, chat, gen_kwargs, eos_ids, batch

    def encode(self, pairs):
        return self.chat.encode(pairs).to(next(self.model.parameters()).device)

    def __call__(self, pairs, n: int) -> tuple[list[PromptParts], list[Completion]]:
        parts, outs = [], []
        tok = self.chat.processor.tokenizer
        for lo in range(0, len(pairs), self.batch):
            enc = self.encode(pairs[lo:lo + self.batch])
            with torch.no_grad():
                gen = self.model.generate(**enc, num_return_sequences=n, return_dict_in_generate=True,
                                          output_logits=True, **self.gen_kwargs)
            new = gen.sequences[:, enc["input_ids"].shape[1]:]
            logps = sampled_logps(gen.logits, new, self.gen_kwargs.get("temperature", 1.0))
            parts += [_prompt_parts(enc, i) for i in range(enc["input_ids"].shape[0])]
            for row in range(new.shape[0]):
                stop = _cut(new[row], self.eos_ids)
                ids = new[row, :stop].cpu()
                text = clean_response(tok.decode(ids, skip_special_tokens=False))
                outs.append(Completion(lo + row // n, ids, logps[row, :stop].cpu(), text,
                                       tok.decode(ids, skip_special_tokens=True)))
        return parts, outs


class VLLMSampler:
    """Rollouts through trl's vLLM engine (`GRPOTrainer.vllm_generation`, colocate or server mode).
    The prompts are encoded here too: the loss needs their pixel values and token types."""

    def __init__(self, vllm_generation, chat, eos_ids, device):
        self.vllm, self.chat, self.eos_ids, self.device = vllm_generation, chat, eos_ids, device

    def __call__(self, pairs, n: int) -> tuple[list[PromptParts], list[Completion]]:
        from PIL import Image

        enc = self.chat.encode(pairs)
        parts = [_prompt_parts(enc, i) for i in range(len(pairs))]
        prompts = [p.ids.tolist() for p in parts for _ in range(n)]
        images = [[Image.fromarray(m), Image.fromarray(s)] for m, s, _ in pairs for _ in range(n)]
        _, completion_ids, logprobs, _ = self.vllm.generate(prompts=prompts, images=images, num_generations=n)
        tok = self.chat.processor.tokenizer
        outs = []
        for k, (ids, lps) in enumerate(zip(completion_ids, logprobs)):
            ids = torch.tensor(ids, dtype=torch.long)
            stop = _cut(ids, self.eos_ids)
            lp = torch.tensor([row[0] for row in lps], dtype=torch.float32)     # the sampled token's
            outs.append(Completion(k // n, ids[:stop], lp[:stop],
                                   clean_response(tok.decode(ids[:stop], skip_special_tokens=False)),
                                   tok.decode(ids[:stop], skip_special_tokens=True)))
        return parts, outs


def _set_image(segmenter, image, cache: dict, key: int) -> None:
    """Make sample `key`'s satellite current on the segmenter: one embedding per sample and step,
    restored (where the segmenter can) rather than recomputed when another sample came between."""
    if cache.get("current") == key:
        return
    if key in cache and hasattr(segmenter, "restore"):
        segmenter.restore(cache[key])
    else:
        segmenter.set_image(image)
        if hasattr(segmenter, "embedding"):
            cache[key] = segmenter.embedding()
    cache["current"] = key


def two_stage_rollouts(sampler, segmenter, samples: list[RolloutSample], num_generations: int,
                       variant: str = "code") -> list[Rollout]:
    """One Rollout (G stage-1 and G stage-2 sequences) per sample, generated batch-wise."""
    G = num_generations
    rolls = [Rollout() for _ in samples]
    t = time.perf_counter()
    p1 = [stage1_prompt(s.query) for s in samples]
    parts1, outs1 = sampler([(s.map_image, s.sat_image, p) for s, p in zip(samples, p1)], G)
    generate1 = time.perf_counter() - t

    t = time.perf_counter()
    cache: dict = {}
    pairs2, origin = [], []
    for c in outs1:
        s, ro = samples[c.prompt], rolls[c.prompt]
        h, w = s.sat_image.shape[:2]
        _set_image(segmenter, s.sat_image, cache, c.prompt)
        # As released: the segmenter reads the answer without special tokens, the render and the
        # stage-2 text read it with them.
        a1 = parse_answer(c.plain, w, h, tolerant=False, shown=c.text)
        _, _, map_r, sat_r, p2 = stage2_inputs(s.query, s.map_image, s.sat_image, a1, segmenter,
                                               tile_size=s.gt_mask.shape[:2])
        pairs2.append((map_r, sat_r, p2))
        origin.append(c.prompt)
        ro.stage1.append(Sequence(1, parts1[c.prompt], c.ids, c.logps, c.text, p1[c.prompt],
                                  stage1_rewards(c.text, s.gt_boxes, variant), (s.map_image, s.sat_image)))
    render = time.perf_counter() - t

    t = time.perf_counter()
    parts2, outs2 = sampler(pairs2, 1)
    generate2 = time.perf_counter() - t

    t = time.perf_counter()
    for c in outs2:
        k = origin[c.prompt]
        s, ro = samples[k], rolls[k]
        s1 = ro.stage1[len(ro.stage2)]
        h, w = s.sat_image.shape[:2]
        a2 = parse_answer(c.plain, w, h, tolerant=False)
        # a non-finite coordinate gives SAM no mask (see backend.pipeline.stages.segment_items)
        items = [it for it in a2.items if np.isfinite([*it.box, *(v for p in it.points for v in p)]).all()]
        final = np.zeros((h, w), bool)
        if items:
            _set_image(segmenter, s.sat_image, cache, k)
            final = union(segmenter.segment([Prompt(it.box, it.points) for it in items]), (h, w))
        oh, ow = s.gt_mask.shape[:2]
        on_tile = cv2.resize(final.astype(np.uint8), (ow, oh), interpolation=cv2.INTER_NEAREST).astype(bool)
        r2 = stage2_rewards(c.text, answer_text(s1.text), on_tile, s.gt_mask, variant)
        ro.mask_ious.append(r2["accuracy"])
        ro.stage2.append(Sequence(2, parts2[c.prompt], c.ids, c.logps, c.text, pairs2[c.prompt][2], r2,
                                  pairs2[c.prompt][:2]))
    segment2 = time.perf_counter() - t
    for ro in rolls:
        ro.seconds = {"stage1_generate": generate1 / len(rolls), "stage1_segment_render": render / len(rolls),
                      "stage2_generate": generate2 / len(rolls), "stage2_segment_reward": segment2 / len(rolls)}
    return rolls
