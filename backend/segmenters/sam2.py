"""SAM 2 through transformers (Sam2Model + Sam2Processor), from a Hugging Face id or a local folder."""
from __future__ import annotations

import numpy as np

from ..device import resolve_device
from ..hub import load_pretrained
from .base import Prompt, Segmentation

DEFAULT_SAM2 = "facebook/sam2-hiera-large"
MODEL_TYPES = ("sam2", "sam2_video")   # a SAM 2 video checkpoint holds the image model too


class Sam2Segmenter:
    def __init__(self, model: str = DEFAULT_SAM2, device: str = "auto"):
        import torch
        from transformers import Sam2Model, Sam2Processor

        self.device = resolve_device(device)
        net = load_pretrained(Sam2Model, model, "SAM 2 segmenter", "--segmenter sam2:DIR", model_types=MODEL_TYPES)
        self.processor = load_pretrained(Sam2Processor, model, "SAM 2 segmenter", "--segmenter sam2:DIR",
                                         model_types=MODEL_TYPES)
        self.model = net.to(self.device).eval()
        self.name = f"sam2:{model}"
        self._torch = torch
        self._embeddings = None
        self._size = None
        self.embed_calls = 0

    def set_image(self, image: np.ndarray) -> None:
        torch = self._torch
        inputs = self.processor(images=np.ascontiguousarray(image[..., :3]), return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.model.dtype)
        with torch.inference_mode():
            self._embeddings = self.model.get_image_embeddings(pixels)
        self._size = [int(v) for v in inputs["original_sizes"][0]]
        self.embed_calls += 1

    def embedding(self):
        return self._embeddings, self._size

    def restore(self, state) -> None:
        self._embeddings, self._size = state

    def segment(self, prompts: list[Prompt]) -> list[Segmentation]:
        if prompts and self._embeddings is None:
            raise RuntimeError("set_image must be called before segment")
        return [self._one(q) for q in prompts]

    def _one(self, prompt: Prompt) -> Segmentation:
        torch = self._torch
        kwargs = {"input_boxes": [[[float(v) for v in prompt.box]]]}
        if prompt.points:
            kwargs["input_points"] = [[[[float(x), float(y)] for x, y in prompt.points]]]
            kwargs["input_labels"] = [[[1] * len(prompt.points)]]
        enc = self.processor(original_sizes=[self._size], return_tensors="pt", **kwargs)
        feed = {k: enc[k].to(self.device) for k in ("input_boxes", "input_points", "input_labels") if k in enc}
        for k in ("input_boxes", "input_points"):
            if k in feed:
                feed[k] = feed[k].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model(image_embeddings=self._embeddings, multimask_output=True, **feed)
        masks = self.processor.post_process_masks(out.pred_masks.float().cpu(), [self._size])[0]
        scores = out.iou_scores[0, 0].float().cpu()
        best = int(scores.argmax())
        return Segmentation(masks[0, best].numpy().astype(bool), float(np.clip(scores[best], 0, 1)))
