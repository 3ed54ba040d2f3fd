"""Segment Anything (the segment-anything package): model type + checkpoint file."""
from __future__ import annotations

import os

import numpy as np

from ..device import resolve_device
from ..errors import DependencyError, InputError, ModelNotFoundError
from .base import Prompt, Segmentation

CHECKPOINT_HINT = ("download one of the official checkpoints (vit_h: sam_vit_h_4b8939.pth, vit_l: "
                   "sam_vit_l_0b3195.pth, vit_b: sam_vit_b_01ec64.pth) from the segment-anything "
                   "repository's README and pass --segmenter sam:vit_h:/path/to/sam_vit_h_4b8939.pth")


# Architectures beside segment-anything's own, registered by whoever needs them (the self-test adds
# its deliberately tiny one); name -> builder taking `checkpoint=`.
EXTRA_ARCHITECTURES: dict = {}


def _registry() -> dict:
    try:
        from segment_anything import sam_model_registry
    except ImportError as exc:
        raise DependencyError(f"segment-anything is not installed ({exc}): pip install segment-anything") from None
    return {**sam_model_registry, **EXTRA_ARCHITECTURES}


_EMBED_DIMS = {1280: "vit_h", 1024: "vit_l", 768: "vit_b", 32: "vit_tiny"}


def _load_failure(model_type: str, checkpoint: str, exc: Exception) -> str:
    """One line for a checkpoint that does not load: damaged, or made for another model type (torch's
    own message is a multi-kilobyte list of mismatched tensors)."""
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as read_exc:   # not a readable torch file at all
        first = (str(read_exc).strip().splitlines() or [type(read_exc).__name__])[0].split(". ")[0]
        return (f"SAM checkpoint {checkpoint} is damaged, truncated or not a SAM checkpoint ({first}): "
                f"{CHECKPOINT_HINT}")
    weight = state.get("image_encoder.patch_embed.proj.weight") if isinstance(state, dict) else None
    if weight is None:
        return f"{checkpoint} is not a SAM checkpoint (no image encoder weights): {CHECKPOINT_HINT}"
    found = _EMBED_DIMS.get(int(weight.shape[0]))
    if found and found != model_type:
        return (f"SAM checkpoint {checkpoint} is a {found} model, not {model_type}: pass "
                f"--segmenter sam:{found}:{checkpoint}")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return f"cannot load SAM {model_type} from {checkpoint} ({first}): {CHECKPOINT_HINT}"


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
        except (RuntimeError, KeyError, EOFError, OSError, ValueError) as exc:
            raise ModelNotFoundError(_load_failure(model_type, checkpoint, exc)) from None
        self.predictor = SamPredictor(model.to(self.device).eval())
        self.name = f"sam:{model_type}:{os.path.basename(checkpoint)}"
        self._torch = torch
        self.embed_calls = 0

    def set_image(self, image: np.ndarray) -> None:
        with self._torch.inference_mode():
            self.predictor.set_image(np.ascontiguousarray(image[..., :3]), image_format="RGB")
        self.embed_calls += 1

    def embedding(self):
        p = self.predictor
        return p.features, p.original_size, p.input_size, p.is_image_set

    def restore(self, state) -> None:
        p = self.predictor
        p.features, p.original_size, p.input_size, p.is_image_set = state

    def segment(self, prompts: list[Prompt]) -> list[Segmentation]:
        return [self._one(q) for q in prompts]

    def _one(self, prompt: Prompt) -> Segmentation:
        p = self.predictor
        kwargs = {"box": np.asarray(prompt.box, dtype=np.float32)}
        if prompt.points:
            kwargs["point_coords"] = np.asarray(prompt.points, dtype=np.float32)
            kwargs["point_labels"] = np.ones(len(prompt.points), dtype=np.int64)
        with self._torch.inference_mode():
            masks, scores, _ = p.predict(multimask_output=True, **kwargs)
        best = int(np.argmax(scores))
        return Segmentation(masks[best].astype(bool), float(np.clip(scores[best], 0, 1)))
