"""The paper's reasoner: Qwen2.5-VL (SocioReasoner-3B) through transformers."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..device import default_dtype, resolve_device
from ..errors import InputError
from ..hub import load_pretrained
from ..pipeline.prompts import MAX_PIXELS, MIN_PIXELS, ParsedAnswer
from .base import QwenFrame, Reply, TileView

log = logging.getLogger(__name__)

DEFAULT_VLM = "vvangfaye/SocioReasoner-3B"
BASE_VLM = "Qwen/Qwen2.5-VL-3B-Instruct"


@dataclass
class GenerationSettings:
    max_new_tokens: int = 2048        # the authors' response budget
    do_sample: bool = False           # greedy by default: the same tile gives the same answer
    temperature: float = 1.0          # the authors' evaluation sampling, used when do_sample
    top_p: float = 0.8
    top_k: int = 100

    def kwargs(self) -> dict:
        if self.max_new_tokens < 1:
            raise InputError("max_new_tokens must be at least 1")
        if not self.do_sample:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False,
                    "temperature": None, "top_p": None, "top_k": None}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": True,
                "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}


def user_turn(text: str) -> list[dict]:
    """One user turn: map image, satellite image, then the stage text (the released order)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": text}]}]


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(image[..., :3]))


class QwenChat(QwenFrame):
    """Prompt encoding shared by inference and training: chat template, images, pixel budget."""

    def __init__(self, processor, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS):
        self.processor = processor
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        ip = processor.image_processor
        ip.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        for attr, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
            if hasattr(ip, attr):
                setattr(ip, attr, value)
        self.patch = int(getattr(ip, "patch_size", 14))

    def chat_text(self, text: str) -> str:
        return self.processor.apply_chat_template(user_turn(text), add_generation_prompt=True, tokenize=False)

    def encode(self, pairs: list[tuple[np.ndarray, np.ndarray, str]]):
        """Batch of (map, satellite, stage text) -> model inputs; images must be at input size."""
        texts = [self.chat_text(t) for _, _, t in pairs]
        images = [to_pil(im) for m, s, _ in pairs for im in (m, s)]
        enc = self.processor(text=texts, images=images, return_tensors="pt", padding=True)
        grid = enc["image_grid_thw"]
        for (m, s, _), k in zip(pairs, range(0, len(images), 2)):
            for img, g in ((m, grid[k]), (s, grid[k + 1])):
                if (int(g[1]) * self.patch, int(g[2]) * self.patch) != img.shape[:2]:
                    raise RuntimeError(f"processor resized a {img.shape[1]}x{img.shape[0]} image to "
                                       f"{int(g[2]) * self.patch}x{int(g[1]) * self.patch}; coordinates "
                                       "would not match the model's view")
        return enc


class QwenReasoner(QwenChat):
    def __init__(self, model: str = DEFAULT_VLM, device: str = "auto",
                 generation: GenerationSettings | None = None,
                 min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS, dtype=None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = resolve_device(device)
        self.dtype = dtype or default_dtype(self.device)
        hint = "--reasoner qwen:/path/to/SocioReasoner-3B"
        processor = load_pretrained(AutoProcessor, model, "vision-language reasoner", hint)
        super().__init__(processor, min_pixels, max_pixels)
        net = load_pretrained(AutoModelForImageTextToText, model, "vision-language reasoner", hint,
                              dtype=self.dtype)
        self.model = net.to(self.device).eval()
        self.generation = generation or GenerationSettings()
        self.name = f"qwen:{model}"

    @classmethod
    def from_loaded(cls, model, processor, generation: GenerationSettings | None = None,
                    min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS, name: str = "qwen:in-memory"):
        """A reasoner around a model already in memory (e.g. the policy during training)."""
        self = cls.__new__(cls)
        QwenChat.__init__(self, processor, min_pixels, max_pixels)
        self.model, self.device = model, str(next(model.parameters()).device)
        self.dtype = next(model.parameters()).dtype
        self.generation = generation or GenerationSettings()
        self.name = name
        return self

    def generate(self, map_image: np.ndarray, sat_image: np.ndarray, text: str) -> str:
        import torch

        enc = self.encode([(map_image, sat_image, text)]).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**enc, **self.generation.kwargs(),
                                      pad_token_id=self.processor.tokenizer.pad_token_id)
        new = out[0, enc["input_ids"].shape[1]:]
        return self.processor.tokenizer.decode(new, skip_special_tokens=True)

    def stage1(self, view: TileView, prompt: str) -> Reply:
        return Reply(self.generate(view.map_image, view.sat_image, prompt))

    def stage2(self, view: TileView, prompt: str, rendered_map, rendered_sat, stage1: ParsedAnswer) -> Reply:
        return Reply(self.generate(rendered_map, rendered_sat, prompt))
