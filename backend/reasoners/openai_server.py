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
import math
import os
import ssl
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
    timeout: float = 600.0          # seconds a request may take in all, retries included (a 2,048-token
                                    # answer on a busy server); a deadline, not a per-read limit
    max_retries: int = 4            # on 408/409/429/5xx and dropped connections, with backoff
    api_key_env: str = API_KEY_ENV  # the key is read from this environment variable (or OPENAI_API_KEY)


_END_TOKENS = ("<|im_end|>", "<|endoftext|>")


def full_text(message: dict) -> str:
    """The answer as the model wrote it (`message`: the reply's choices[0].message). Servers with a
    reasoning parser (`transformers serve`, vLLM with --reasoning-parser) move the <think> part into
    `reasoning_content` / `reasoning`: put it back. A think block the model never closed comes back as
    reasoning with no content (and, from `transformers serve`, with the end-of-turn token still on it)."""
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if not isinstance(content, str) or (reasoning is not None and not isinstance(reasoning, str)):
        raise ValueError("content is not text")
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


class NotOpenAI(ValueError):
    """A reply the client cannot read as the OpenAI API's (HTML, truncated JSON, an error body with
    status 200, another API's JSON)."""


def not_openai(url: str, body: str) -> InputError:
    shown = " ".join(str(body).split())[:200] or "(an empty body)"
    return InputError(f"the server at {url} did not answer in the OpenAI format: {shown}")


def tls_failure(url: str, exc: BaseException) -> InputError | None:
    """An https:// URL whose server speaks plain HTTP (or whose certificate fails): say so, not
    'cannot reach'."""
    seen, cause = set(), exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        text = str(cause)
        if isinstance(cause, ssl.SSLError) or "SSL" in text or "CERTIFICATE" in text.upper():
            first = text.strip().splitlines()[0][:160] if text.strip() else type(cause).__name__
            hint = (f"; if the server speaks plain HTTP, use {'http://' + url[len('https://'):]}"
                    if url.startswith("https://") else "")
            return InputError(f"the TLS handshake with the model server at {url} failed ({first}){hint}")
        cause = cause.__cause__ or cause.__context__
    return None


def read_json_body(raw, url: str):
    """The JSON of a raw openai response, or `not_openai` naming what came instead."""
    body = raw.http_response.text
    try:
        return json.loads(body), body
    except (ValueError, RecursionError):
        raise not_openai(url, body) from None


def served_models(data, url: str, body: str) -> list[str]:
    """The model ids of a /models reply (OpenAI: {"data": [{"id": ...}, ...]})."""
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in items):
        raise not_openai(url, body)
    return [m["id"] for m in items]


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
        if not (isinstance(settings.timeout, (int, float)) and math.isfinite(settings.timeout)
                and settings.timeout > 0):
            raise InputError(f"the request timeout must be a number of seconds above 0 (--request-timeout), "
                             f"not {settings.timeout}")
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
        quick = self.client.with_options(timeout=min(10.0, self.settings.timeout), max_retries=0)
        try:
            data, body = read_json_body(quick.models.with_raw_response.list(), self.url)
        except self._openai.APIConnectionError as exc:
            raise tls_failure(self.url, exc) or InputError(
                f"cannot reach the model server at {self.url}: check that it runs and the URL "
                "(--reasoner openai:URL, e.g. http://gpu-box:8000/v1)") from None
        except self._openai.AuthenticationError:
            raise InputError(f"the model server at {self.url} refused the API key: set it in the "
                             f"{self.settings.api_key_env} environment variable") from None
        except self._openai.APIStatusError as exc:
            raise InputError(f"the model server at {self.url} answered {exc.status_code} to /models: is this "
                             "an OpenAI-compatible URL (it usually ends in /v1)?") from None
        models = served_models(data, self.url, body)
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
        return self.answer(map_image, sat_image, text).text

    def answer(self, map_image: np.ndarray, sat_image: np.ndarray, text: str) -> Reply:
        """One request under one deadline (--request-timeout) for all of it: the openai client's
        timeout applies per socket read, so a server that trickles bytes would hold it for ever. The
        request runs in a daemon thread; past the deadline it is abandoned (its socket closes when the
        server gives up or the process ends)."""
        messages = user_message(map_image, sat_image, text)
        box: dict = {}

        def call():
            try:
                box["reply"] = self._request(messages)
            except BaseException as exc:      # handed to the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=call, name="openai-request", daemon=True)
        worker.start()
        worker.join(self.settings.timeout)
        if worker.is_alive():
            raise InputError(f"the model server at {self.url} did not answer within {self.settings.timeout:g} s "
                             "(--request-timeout): it is overloaded or stalled; raise --request-timeout or "
                             "lower --concurrency")
        if "error" in box:
            raise box["error"]
        return box["reply"]

    def _request(self, messages: list[dict]) -> Reply:
        openai = self._openai
        try:
            while True:
                params = self._params()
                try:
                    raw = self.client.chat.completions.with_raw_response.create(
                        model=self.model, messages=messages, **params)
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
            raise InputError(f"the model server at {self.url} did not answer within {self.settings.timeout:g} s "
                             "(--request-timeout)") from None
        except openai.APIConnectionError as exc:
            raise tls_failure(self.url, exc) or InputError(
                f"lost the model server at {self.url} (after {self.settings.max_retries} retries): "
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
        data, body = read_json_body(raw, self.url)
        try:
            choice = data["choices"][0]
            answer = full_text(choice["message"])
            finish = choice.get("finish_reason")
            usage = data.get("usage") or {}
            tokens = int(usage.get("completion_tokens") or 0)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise not_openai(self.url, body) from None
        with self._lock:
            self.tokens_generated += tokens
        notes = []
        if finish == "length":
            notes.append(f"answer cut at the response budget of {self.generation.max_new_tokens} tokens "
                         "(--max-new-tokens)")
        return Reply(answer, notes)

    def stage1(self, view: TileView, prompt: str) -> Reply:
        return self.answer(view.map_image, view.sat_image, prompt)

    def stage2(self, view: TileView, prompt: str, rendered_map, rendered_sat, stage1: ParsedAnswer) -> Reply:
        return self.answer(rendered_map, rendered_sat, prompt)

    def _many(self, jobs: list[tuple]) -> list[Reply]:
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(jobs))) as pool:
            return list(pool.map(lambda job: self.answer(*job), jobs))

    def stage1_batch(self, views: list[TileView], prompts: list[str]) -> list[Reply]:
        return self._many([(v.map_image, v.sat_image, p) for v, p in zip(views, prompts)])

    def stage2_batch(self, views, prompts, rendered, stage1s) -> list[Reply]:
        return self._many([(m, s, p) for (m, s), p in zip(rendered, prompts)])
