"""The vision-language model on a model server, through the OpenAI chat-completions API.

One GPU machine can serve a whole office with an engine built for it (vLLM, SGLang, llama.cpp's
server, Ollama, LM Studio, `transformers serve`). This reasoner sends exactly what the in-process path
feeds the model: one user turn with the map and the satellite image at model input size (PNG data
URLs, map first) and the stage text, with the released sampling settings. Parsing, render and the
segmenter stay local and shared, so both paths run the same procedure.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import DependencyError, InputError
from ..pipeline.prompts import ParsedAnswer
from .base import Reply, SmartResize, TileView
from .qwen import GenerationSettings

log = logging.getLogger(__name__)

API_KEY_ENV = "SOCIOSEG_API_KEY"


@dataclass
class ServerSettings:
    base_url: str
    model: str | None = None        # the served model's name; None: the one /v1/models lists
    concurrency: int = 4            # tiles in flight at once
    timeout: float = 600.0          # seconds per request (a 2,048-token answer on a busy server)
    max_retries: int = 4            # on 408/409/429/5xx and dropped connections, with backoff
    api_key_env: str = API_KEY_ENV  # the key is read from this environment variable (or OPENAI_API_KEY)


_END_TOKENS = ("<|im_end|>", "<|endoftext|>")


def full_text(message) -> str:
    """The answer as the model wrote it. Servers with a reasoning parser (`transformers serve`, vLLM
    with --reasoning-parser) move the <think> part into `reasoning_content` / `reasoning`: put it back.
    A think block the model never closed comes back as reasoning with no content (and, from
    `transformers serve`, with the end-of-turn token still on it)."""
    content = message.content or ""
    extra = message.model_extra or {}
    reasoning = extra.get("reasoning_content") or extra.get("reasoning")
    if not reasoning or "<think>" in content:
        return content
    if not content:
        for token in _END_TOKENS:
            reasoning = reasoning.removesuffix(token)
        return f"<think>{reasoning}"
    return f"<think>{reasoning}</think>{content}"


def _detail(exc) -> str:
    """The server's own words: openai's exception text is often only 'Error code: 422'."""
    body = getattr(exc, "body", None)
    return f"{exc} {json.dumps(body) if body is not None else ''}".strip()


def data_url(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image[..., :3])).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def user_message(map_image: np.ndarray, sat_image: np.ndarray, text: str) -> list[dict]:
    """One user turn: map, satellite, then the stage text (the released order)."""
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(map_image)}},
        {"type": "image_url", "image_url": {"url": data_url(sat_image)}},
        {"type": "text", "text": text}]}]


def sampling_params(g: GenerationSettings) -> dict:
    """Chat-completions parameters for the released sampling. `top_k` and `repetition_penalty` are
    not OpenAI fields: vLLM, SGLang and llama.cpp read them from the body; `transformers serve` reads
    `generation_config`. Servers ignore what they do not know."""
    g.validate()
    gen_config = {"max_new_tokens": g.max_new_tokens, "do_sample": g.do_sample,
                  "repetition_penalty": g.repetition_penalty}
    if g.do_sample:
        gen_config.update(temperature=g.temperature, top_p=g.top_p, top_k=g.top_k)
    if g.min_new_tokens:
        gen_config["min_new_tokens"] = g.min_new_tokens
    params = {"max_tokens": g.max_new_tokens,
              "temperature": g.temperature if g.do_sample else 0.0,
              "extra_body": {"repetition_penalty": g.repetition_penalty, "generation_config": json.dumps(gen_config)}}
    if g.do_sample:
        params["top_p"] = g.top_p
        params["extra_body"]["top_k"] = g.top_k
    if g.seed is not None:
        params["seed"] = g.seed
    return params


class OpenAIReasoner(SmartResize):
    def __init__(self, settings: ServerSettings, generation: GenerationSettings | None = None):
        try:
            import openai
        except ImportError as exc:
            raise DependencyError(f"the model-server reasoner needs the openai package ({exc}): pip install openai") from None
        self._openai = openai
        self.settings = settings
        self.generation = generation or GenerationSettings()
        self.generation.validate()
        if settings.concurrency < 1:
            raise InputError(f"the number of requests in flight must be at least 1 (--concurrency), not {settings.concurrency}")
        url = settings.base_url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise InputError(f"model server URL {settings.base_url!r} must start with http:// or https:// "
                             "(e.g. --reasoner openai:http://gpu-box:8000/v1)")
        key = os.environ.get(settings.api_key_env) or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.url = url
        self.client = openai.OpenAI(base_url=url, api_key=key, timeout=settings.timeout,
                                    max_retries=settings.max_retries)
        self.model = settings.model or self._discover()
        self._refused: set[str] = set()
        self._lock = threading.Lock()
        self.tokens_generated = 0       # as the server reports them (usage.completion_tokens)
        self.concurrency = settings.concurrency
        self.name = f"openai:{url}#{self.model}"

    def _discover(self) -> str:
        """The served model from /v1/models; fails fast (one try, a short timeout) with the URL."""
        quick = self.client.with_options(timeout=10.0, max_retries=0)
        try:
            models = [m.id for m in quick.models.list()]
        except self._openai.APIConnectionError:
            raise InputError(f"cannot reach the model server at {self.url}: check that it runs and the URL "
                             "(--reasoner openai:URL, e.g. http://gpu-box:8000/v1)") from None
        except self._openai.AuthenticationError:
            raise InputError(f"the model server at {self.url} refused the API key: set it in the "
                             f"{self.settings.api_key_env} environment variable") from None
        except self._openai.APIStatusError as exc:
            raise InputError(f"the model server at {self.url} answered {exc.status_code} to /models: is this "
                             "an OpenAI-compatible URL (it usually ends in /v1)?") from None
        if not models:
            raise InputError(f"the model server at {self.url} serves no model")
        if len(models) > 1:
            log.warning("%s serves %d models; using %s (choose one with --served-model)", self.url, len(models), models[0])
        return models[0]

    def generation_record(self) -> dict:
        return {**self.generation.record(), "server": self.url, "model": self.model}

    def _params(self) -> dict:
        params = sampling_params(self.generation)
        extra = {k: v for k, v in params.pop("extra_body").items() if k not in self._refused}
        return {**params, "extra_body": extra} if extra else params

    @staticmethod
    def _refused_fields(exc, sent: dict) -> set[str]:
        """Our non-OpenAI fields of this request that a strict server names in its refusal
        (`transformers serve` answers 422 "Unexpected fields", OpenAI itself 400 "Unrecognized
        request argument")."""
        msg = _detail(exc)
        return {k for k in sent.get("extra_body", {}) if k in msg}

    def generate(self, map_image: np.ndarray, sat_image: np.ndarray, text: str) -> str:
        openai = self._openai
        messages = user_message(map_image, sat_image, text)
        try:
            while True:
                params = self._params()
                try:
                    resp = self.client.chat.completions.create(model=self.model, messages=messages, **params)
                    break
                except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                    refused = self._refused_fields(exc, params)
                    if not refused:
                        raise
                    with self._lock:
                        new = refused - self._refused
                        self._refused |= refused
                    if new:
                        log.warning("the model server at %s does not accept %s; sent without (it uses its own "
                                    "value there)", self.url, ", ".join(sorted(new)))
        except openai.APITimeoutError:
            raise InputError(f"the model server at {self.url} did not answer within {self.settings.timeout:.0f} s") from None
        except openai.APIConnectionError:
            raise InputError(f"lost the model server at {self.url} (after {self.settings.max_retries} retries): "
                             "check that it runs") from None
        except (openai.AuthenticationError, openai.PermissionDeniedError):
            raise InputError(f"the model server at {self.url} refused the API key: set it in the "
                             f"{self.settings.api_key_env} environment variable") from None
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            msg = _detail(exc)
            if "image" in msg.lower():
                raise InputError(f"the model {self.model!r} at {self.url} does not take image input ({msg[:200]}); "
                                 "serve a vision-language model such as vvangfaye/SocioReasoner-3B") from None
            raise InputError(f"the model server at {self.url} refused the request: {msg[:300]}") from None
        except openai.APIStatusError as exc:
            raise InputError(f"the model server at {self.url} failed ({exc.status_code}) after "
                             f"{self.settings.max_retries} retries: {_detail(exc)[:200]}") from None
        if resp.usage is not None:
            with self._lock:
                self.tokens_generated += resp.usage.completion_tokens or 0
        return full_text(resp.choices[0].message)

    def stage1(self, view: TileView, prompt: str) -> Reply:
        return Reply(self.generate(view.map_image, view.sat_image, prompt))

    def stage2(self, view: TileView, prompt: str, rendered_map, rendered_sat, stage1: ParsedAnswer) -> Reply:
        return Reply(self.generate(rendered_map, rendered_sat, prompt))

    def _many(self, jobs: list[tuple]) -> list[Reply]:
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(jobs))) as pool:
            return [Reply(t) for t in pool.map(lambda job: self.generate(*job), jobs)]

    def stage1_batch(self, views: list[TileView], prompts: list[str]) -> list[Reply]:
        return self._many([(v.map_image, v.sat_image, p) for v, p in zip(views, prompts)])

    def stage2_batch(self, views, prompts, rendered, stage1s) -> list[Reply]:
        return self._many([(m, s, p) for (m, s), p in zip(rendered, prompts)])
