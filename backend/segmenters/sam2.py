"""SAM 2 through transformers (Sam2Model + Sam2Processor), from a Hugging Face id or a local folder."""
from __future__ import annotations

import numpy as np

from ..device import resolve_device
from ..hub import load_pretrained
from .base import Prompt, Segmentation, pad_points

DEFAULT_SAM2 = "facebook/sam2-hiera-large"


class Sam2Segmenter:
    def __init__(self, model: str = DEFAULT_SAM2, device: str = "auto"):
        import torch
        from transformers import Sam2Model, Sam2Processor

        self.device = resolve_device(device)
        self.processor = load_pretrained(Sam2Processor, model, "SAM 2 segmenter", "--segmenter sam2:DIR")
        net = load_pretrained(Sam2Model, model, "SAM 2 segmenter", "--segmenter sam2:DIR")
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

    def segment(self, prompts: list[Prompt]) -> list[Segmentation]:
        if not prompts:
            return []
        if self._embeddings is None:
            raise RuntimeError("set_image must be called before segment")
        torch = self._torch
        kwargs = {"input_boxes": [[list(map(float, q.box)) for q in prompts]]}
        padded = pad_points(prompts)
        if padded is not None:
            kwargs["input_points"] = [padded[0]]
            kwargs["input_labels"] = [padded[1]]
        enc = self.processor(original_sizes=[self._size], return_tensors="pt", **kwargs)
        feed = {k: enc[k].to(self.device) for k in ("input_boxes", "input_points", "input_labels") if k in enc}
        for k in ("input_boxes", "input_points"):
            if k in feed:
                feed[k] = feed[k].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model(image_embeddings=self._embeddings, multimask_output=True, **feed)
        masks = self.processor.post_process_masks(out.pred_masks.float().cpu(), [self._size])[0]
        scores = out.iou_scores[0].float().cpu()
        best = scores.argmax(dim=1)
        idx = torch.arange(len(prompts))
        chosen = masks[idx, best].numpy().astype(bool)
        return [Segmentation(m, float(np.clip(s, 0, 1))) for m, s in zip(chosen, scores[idx, best].numpy())]
