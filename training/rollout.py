"""The two-stage rollout of one sample: G stage-1 samples, the segmenter on each, render, one stage-2
sample each, and the rewards. Built from the backend's own prompt, parsing, render and segmenter code."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from backend.pipeline.stages import stage2_inputs
from backend.pipeline.prompts import parse_answer, stage1_prompt
from backend.segmenters.base import Prompt, union

from .rewards import stage1_rewards, stage2_rewards


@dataclass
class Sequence:
    stage: int
    prompt_ids: torch.Tensor           # 1-D, no padding
    mm_token_type_ids: torch.Tensor | None
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor       # (2, 3): map, satellite
    completion_ids: torch.Tensor       # 1-D, up to and including the first end-of-turn token
    sampling_logps: torch.Tensor       # 1-D, log-probs of the completion under the sampling policy
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


def sample_completions(model, chat, pairs, num_return: int, gen_kwargs: dict, eos_ids: list[int]):
    """Generate for (map, sat, text) prompts; per completion: (prompt index, ids, logps, text, enc row)."""
    enc = chat.encode(pairs).to(next(model.parameters()).device)
    with torch.no_grad():
        out = model.generate(**enc, num_return_sequences=num_return, return_dict_in_generate=True,
                             output_logits=True, **gen_kwargs)
    plen = enc["input_ids"].shape[1]
    new = out.sequences[:, plen:]
    logits = torch.stack(out.logits, dim=1).float() / gen_kwargs.get("temperature", 1.0)
    logps = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
    results = []
    for row in range(new.shape[0]):
        ids = new[row]
        stop = len(ids)
        for k, t in enumerate(ids.tolist()):
            if t in eos_ids:
                stop = k + 1
                break
        ids = ids[:stop].cpu()
        text = chat.processor.tokenizer.decode(ids, skip_special_tokens=True)
        results.append((row // num_return, ids, logps[row, :stop].cpu(), text))
    return enc, results


def _prompt_parts(enc, i: int, pad_id: int):
    """Unpadded prompt ids, token types, pixel rows and grid of prompt `i` of a (left-padded) batch."""
    mask = enc["attention_mask"][i].bool()
    ids = enc["input_ids"][i][mask].cpu()
    mm = enc["mm_token_type_ids"][i][mask].cpu() if "mm_token_type_ids" in enc else None
    grid = enc["image_grid_thw"]
    rows = grid.prod(dim=-1)
    start = int(rows[: 2 * i].sum())
    end = start + int(rows[2 * i: 2 * i + 2].sum())
    return ids, mm, enc["pixel_values"][start:end].cpu(), grid[2 * i: 2 * i + 2].cpu()


def two_stage_rollout(model, chat, segmenter, query: str, map_m, sat_m, gt_mask, gt_box_list,
                      num_generations: int, gen_kwargs: dict, eos_ids: list[int], variant: str = "code") -> Rollout:
    ro = Rollout()
    pad = chat.processor.tokenizer.pad_token_id
    h, w = sat_m.shape[:2]
    t = time.perf_counter()
    p1 = stage1_prompt(query)
    enc1, outs1 = sample_completions(model, chat, [(map_m, sat_m, p1)], num_generations, gen_kwargs, eos_ids)
    ids1, mm1, px1, grid1 = _prompt_parts(enc1, 0, pad)
    ro.seconds["stage1_generate"] = time.perf_counter() - t

    t = time.perf_counter()
    segmenter.set_image(sat_m)        # one embedding per sample, shared by all rollouts and both stages
    stage2_pairs, parsed1 = [], []
    for _, ids, logps, text in outs1:
        a1 = parse_answer(text, w, h)
        parsed1.append(a1)
        _, _, map_r, sat_r, p2 = stage2_inputs(query, map_m, sat_m, a1, segmenter)
        stage2_pairs.append((map_r, sat_r, p2))
        ro.stage1.append(Sequence(1, ids1, mm1, px1, grid1, ids, logps, text, p1,
                                  stage1_rewards(text, gt_box_list, variant), (map_m, sat_m)))
    ro.seconds["stage1_segment_render"] = time.perf_counter() - t

    t = time.perf_counter()
    enc2, outs2 = sample_completions(model, chat, stage2_pairs, 1, gen_kwargs, eos_ids)
    ro.seconds["stage2_generate"] = time.perf_counter() - t
    t = time.perf_counter()
    for (i, ids, logps, text), s1 in zip(outs2, ro.stage1):
        a2 = parse_answer(text, w, h)
        final = (union(segmenter.segment([Prompt(it.box, it.points) for it in a2.items]), (h, w))
                 if a2.ok else np.zeros((h, w), bool))
        r2 = stage2_rewards(text, s1.text, final, gt_mask, variant)
        ro.mask_ious.append(r2["accuracy"])
        pids, mm, px, grid = _prompt_parts(enc2, i, pad)
        ro.stage2.append(Sequence(2, pids, mm, px, grid, ids, logps, text, stage2_pairs[i][2], r2,
                                  stage2_pairs[i][:2]))
    ro.seconds["stage2_segment_reward"] = time.perf_counter() - t
    return ro
