"""Segment Anything (the segment-anything package): model type + checkpoint file."""
from __future__ import annotations

import os
from functools import partial

import numpy as np

from ..device import resolve_device
from ..errors import DependencyError, InputError, ModelNotFoundError
from .base import Prompt, Segmentation, pad_points

CHECKPOINT_HINT = ("download one of the official checkpoints (vit_h: sam_vit_h_4b8939.pth, vit_l: "
                   "sam_vit_l_0b3195.pth, vit_b: sam_vit_b_01ec64.pth) from the segment-anything "
                   "repository's README and pass --segmenter sam:vit_h:/path/to/sam_vit_h_4b8939.pth")


def _registry() -> dict:
    try:
        from segment_anything import sam_model_registry
        from segment_anything.build_sam import _build_sam
    except ImportError as exc:
        raise DependencyError(f"segment-anything is not installed ({exc}): pip install segment-anything") from None
    reg = dict(sam_model_registry)
    # A deliberately tiny architecture for offline self-tests; never a useful segmenter.
    reg["vit_tiny"] = partial(_build_sam, encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=1,
                              encoder_global_attn_indexes=[0])
    return reg


class SamSegmenter:
    def __init__(self, model_type: str, checkpoint: str, device: str = "auto"):
        import torch
        from segment_anything import SamPredictor

        registry = _registry()
        if model_type not in registry:
            raise InputError(f"unknown SAM model type {model_type!r}: use one of {', '.join(sorted(registry))}")
        if not checkpoint or not os.path.isfile(checkpoint):
            raise ModelNotFoundError(f"SAM checkpoint {checkpoint!r} not found: {CHECKPOINT_HINT}")
        self.device = resolve_device(device)
        try:
            model = registry[model_type](checkpoint=checkpoint)
        except (RuntimeError, KeyError, EOFError, OSError) as exc:
            raise ModelNotFoundError(
                f"cannot load SAM {model_type} from {checkpoint}: {exc}. Check that the checkpoint "
                f"matches the model type; {CHECKPOINT_HINT}") from None
        self.predictor = SamPredictor(model.to(self.device).eval())
        self.name = f"sam:{model_type}:{os.path.basename(checkpoint)}"
        self._torch = torch
        self.embed_calls = 0

    def set_image(self, image: np.ndarray) -> None:
        with self._torch.inference_mode():
            self.predictor.set_image(np.ascontiguousarray(image[..., :3]), image_format="RGB")
        self.embed_calls += 1

    def segment(self, prompts: list[Prompt]) -> list[Segmentation]:
        if not prompts:
            return []
        torch, p = self._torch, self.predictor
        size = p.original_size
        boxes = torch.tensor([q.box for q in prompts], dtype=torch.float32, device=self.device)
        boxes = p.transform.apply_boxes_torch(boxes, size)
        coords = labels = None
        padded = pad_points(prompts)
        if padded is not None:
            coords = p.transform.apply_coords_torch(
                torch.tensor(padded[0], dtype=torch.float32, device=self.device), size)
            labels = torch.tensor(padded[1], dtype=torch.int64, device=self.device)
        with torch.inference_mode():
            masks, scores, _ = p.predict_torch(coords, labels, boxes=boxes, multimask_output=True)
        best = scores.argmax(dim=1)
        idx = torch.arange(len(prompts), device=best.device)
        chosen = masks[idx, best].cpu().numpy().astype(bool)
        best_scores = scores[idx, best].float().cpu().numpy()
        return [Segmentation(m, float(np.clip(s, 0, 1))) for m, s in zip(chosen, best_scores)]
