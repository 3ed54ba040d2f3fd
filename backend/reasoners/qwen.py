"""The paper's reasoner: Qwen2.5-VL (SocioReasoner-3B) through transformers."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from ..device import default_dtype, resolve_device
from ..errors import InputError
from ..hub import load_pretrained, training_output
from ..pipeline.prompts import MAX_PIXELS, MIN_PIXELS, ParsedAnswer
from .base import SmartResize, Reply, TileView

log = logging.getLogger(__name__)

DEFAULT_VLM = "vvangfaye/SocioReasoner-3B"
BASE_VLM = "Qwen/Qwen2.5-VL-3B-Instruct"
MODEL_TYPES = ("qwen2_5_vl",)   # the prompts, resize and coordinates are Qwen2.5-VL's


@dataclass
class GenerationSettings:
    """Decoding of the vision-language model. The defaults are the released evaluation's sampling
    (vLLM: temperature 1.0, top_p 0.8, top_k 100, an explicit repetition_penalty 1.0 so that a
    checkpoint's generation_config.json default such as Qwen's 1.05 does not apply, 2,048 tokens).
    `do_sample=False` is greedy decoding; `seed` makes a sampled run repeatable."""
    max_new_tokens: int = 2048
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 0.8
    top_k: int = 100
    repetition_penalty: float = 1.0
    seed: int | None = None
    min_new_tokens: int = 0           # > 0 only in benchmarks: answers of a fixed length time fairly

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"the response budget must be at least 1 token (--max-new-tokens), not {self.max_new_tokens}")
        if self.do_sample:
            if not self.temperature > 0:
                raise InputError(f"the sampling temperature must be above 0 (--temperature), not {self.temperature}; "
                                 "use --greedy for deterministic decoding")
            if not 0 < self.top_p <= 1:
                raise InputError(f"top_p must be in (0, 1] (--top-p), not {self.top_p}")
            if self.top_k < 1:
                raise InputError(f"top_k must be at least 1 (--top-k), not {self.top_k}")
        if not self.repetition_penalty > 0:
            raise InputError(f"the repetition penalty must be above 0 (--repetition-penalty), not {self.repetition_penalty}")

    def kwargs(self) -> dict:
        """transformers `generate` keyword arguments; every value explicit so that none is taken
        from the checkpoint's generation_config.json."""
        self.validate()
        fixed = {"min_new_tokens": self.min_new_tokens} if self.min_new_tokens else {}
        if not self.do_sample:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False, "temperature": None,
                    "top_p": None, "top_k": None, "repetition_penalty": self.repetition_penalty, **fixed}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": True, "temperature": self.temperature,
                "top_p": self.top_p, "top_k": self.top_k, "repetition_penalty": self.repetition_penalty, **fixed}

    def record(self) -> dict:
        """What was used, for the dump's tile.json."""
        return asdict(self)


def user_turn(text: str) -> list[dict]:
    """One user turn: map image, satellite image, then the stage text (the released order)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": text}]}]


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(image[..., :3]))


class QwenChat(SmartResize):
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
        base, adapter = training_output(model)
        # training leaves the processor as it was: an adapter's base model brings it
        processor = load_pretrained(AutoProcessor, base, "vision-language reasoner", hint,
                                    model_types=MODEL_TYPES)
        super().__init__(processor, min_pixels, max_pixels)
        net = load_pretrained(AutoModelForImageTextToText, base, "vision-language reasoner", hint,
                              model_types=MODEL_TYPES, dtype=self.dtype)
        if adapter:
            net = merged_adapter(net, adapter)
        self.model = net.to(self.device).eval()
        self.generation = generation or GenerationSettings()
        self.name = f"qwen:{model}"
        self.tokens_generated = 0
        self._seeded = False

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
        self.tokens_generated = 0
        self._seeded = False
        return self

    def generation_record(self) -> dict:
        return self.generation.record()

    def generate_batch(self, pairs: list[tuple[np.ndarray, np.ndarray, str]]) -> list[str]:
        """One `generate` call over several (map, satellite, text) prompts, left-padded, so that each
        answer equals its batch-of-one answer under greedy decoding."""
        return [r.text for r in self.reply_batch(pairs)]

    def reply_batch(self, pairs: list[tuple[np.ndarray, np.ndarray, str]]) -> list[Reply]:
        """`generate_batch`, each answer decoded twice as the released code decodes it."""
        import torch
        from transformers import set_seed

        kwargs = self.generation.kwargs()
        tok = self.processor.tokenizer
        tok.padding_side = "left"
        enc = self.encode(pairs).to(self.device)
        if self.generation.seed is not None and not self._seeded:
            set_seed(self.generation.seed)     # once: later calls continue the same random stream
            self._seeded = True
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs, pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        self.tokens_generated += int((new != tok.pad_token_id).sum())
        replies = [decode_reply(tok, row) for row in new]
        budget = self.generation.max_new_tokens
        if new.shape[1] >= budget:     # a row whose last token is no end is an answer cut at the budget
            ends = self._end_ids()
            for reply, row in zip(replies, new):
                if int(row[-1]) not in ends:
                    reply.notes.append(f"answer cut at the response budget of {budget} tokens (--max-new-tokens)")
        return replies

    def _end_ids(self) -> set[int]:
        tok = self.processor.tokenizer
        ids = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids = ids if isinstance(ids, (list, tuple)) else [ids]
        return {int(i) for i in (*ids, tok.eos_token_id, tok.pad_token_id) if i is not None}

    def generate(self, map_image: np.ndarray, sat_image: np.ndarray, text: str) -> str:
        return self.generate_batch([(map_image, sat_image, text)])[0]

    def stage1(self, view: TileView, prompt: str) -> Reply:
        return self.reply_batch([(view.map_image, view.sat_image, prompt)])[0]

    def stage2(self, view: TileView, prompt: str, rendered_map, rendered_sat, stage1: ParsedAnswer) -> Reply:
        return self.reply_batch([(rendered_map, rendered_sat, prompt)])[0]

    def stage1_batch(self, views: list[TileView], prompts: list[str]) -> list[Reply]:
        return self.reply_batch([(v.map_image, v.sat_image, p) for v, p in zip(views, prompts)])

    def stage2_batch(self, views, prompts, rendered, stage1s) -> list[Reply]:
        return self.reply_batch([(m, s, p) for (m, s), p in zip(rendered, prompts)])


def merged_adapter(net, adapter: str):
    """The base model with a LoRA adapter of a training run merged in (as RUN/final holds it)."""
    from ..errors import ModelNotFoundError
    try:
        from peft import PeftModel
    except ImportError:
        raise ModelNotFoundError(f"{adapter} is a LoRA adapter, which needs the peft package (pip install "
                                 "peft); or pass the run's merged model, RUN/final") from None
    try:
        return PeftModel.from_pretrained(net, adapter).merge_and_unload()
    except Exception as exc:   # a damaged or mismatched adapter: one line, not peft's traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelNotFoundError(f"LoRA adapter {adapter} does not fit its base model ({first}): pass the "
                                 "run's merged model, RUN/final") from None


def decode_reply(tokenizer, ids) -> Reply:
    """An answer's tokens as the released code decodes them: without special tokens for the segmenter
    (`segment_v4_*`), with them for the render and the stage-2 text (`batch_decode(...,
    skip_special_tokens=False)`). The padding after the answer is left out of the second."""
    ids = list(ids.tolist() if hasattr(ids, "tolist") else ids)
    pad = tokenizer.pad_token_id
    while ids and ids[-1] == pad:
        ids.pop()
    return Reply(tokenizer.decode(ids, skip_special_tokens=True),
                 shown_text=tokenizer.decode(ids, skip_special_tokens=False))
