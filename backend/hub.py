"""Loading Hugging Face models from a local folder or a hub id, with errors that say how to get them.

Local paths are checked first and never sent to the hub; a hub id is looked up in the local cache
first; the network is tried only when it answers within one short timeout (a machine without it
would otherwise spend minutes in retries), and never when HF_HUB_OFFLINE is set.
"""
from __future__ import annotations

import glob
import json
import os
import re
import socket
import time
from urllib.parse import urlparse

from .errors import ModelNotFoundError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "*.bin.index.json")
PROBE_TIMEOUT_S = 3.0


def looks_local(ref: str) -> bool:
    """A path rather than a hub id: absolute, ./ or ~, existing, or not of the form `owner/name` (or
    its first part is a folder here, as in `models/qwen` while ./models exists)."""
    if os.path.isabs(ref) or ref.startswith((".", "~")) or os.path.exists(ref) or "\\" in ref:
        return True
    if not _HUB_ID.match(ref):
        return True
    head = ref.split("/")[0]
    return "/" in ref and os.path.isdir(head)


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _endpoint() -> tuple[str, int]:
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


_PROBES: dict[tuple[str, int], tuple[float, bool]] = {}
PROBE_MEMORY_S = 60.0    # a model's processor and weights are loaded back to back: probe once for both


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One TCP connection to the hub (or the proxy), with one short timeout; remembered for a minute."""
    host, port = _endpoint()
    seen = _PROBES.get((host, port))
    if seen and time.monotonic() - seen[0] < PROBE_MEMORY_S:
        return seen[1]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            ok = True
    except OSError:
        ok = False
    _PROBES[(host, port)] = (time.monotonic(), ok)
    return ok


def _cached(ref: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(ref, "config.json"), str)
    except Exception:   # a malformed id: not cached
        return False


def _download_hint(ref: str, flag_hint: str) -> str:
    return (f"download it on a machine with internet access (`huggingface-cli download {ref} --local-dir "
            f"models/{ref.rstrip('/').split('/')[-1]}`), copy the folder here and pass it with {flag_hint}; "
            "or set HF_HOME to a cache that holds it")


def check_model_folder(path: str, what: str, flag_hint: str, model_types: tuple[str, ...] = ()) -> None:
    """A local model folder exists, holds a config and weights, and is of the expected model type."""
    if not os.path.exists(path):
        raise ModelNotFoundError(f"{what}: folder {path} not found. Pass an existing model folder ({flag_hint}) "
                                 "or a Hugging Face id such as owner/name")
    if not os.path.isdir(path):
        raise ModelNotFoundError(f"{what}: {path} is a file, not a model folder. Pass the folder that holds "
                                 f"config.json and the weights ({flag_hint})")
    config = os.path.join(path, "config.json")
    held = sorted(os.listdir(path))
    if not os.path.isfile(config):
        has = f"it holds {', '.join(held[:6])}{', ...' if len(held) > 6 else ''}" if held else "it is empty"
        raise ModelNotFoundError(f"{what}: folder {path} has no config.json ({has}). A model folder holds "
                                 "config.json and model*.safetensors, as written by save_pretrained or "
                                 "`huggingface-cli download ID --local-dir FOLDER`")
    if not any(glob.glob(os.path.join(glob.escape(path), p)) for p in WEIGHT_PATTERNS):
        raise ModelNotFoundError(f"{what}: folder {path} has config.json but no weights (model*.safetensors "
                                 "or pytorch_model*.bin): copy the whole model folder")
    try:
        with open(config, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type", "")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelNotFoundError(f"{what}: {config} is not a valid JSON config ({exc}): copy the model "
                                 "folder again") from None
    if model_types and model_type not in model_types:
        raise ModelNotFoundError(f"{what}: folder {path} holds a {model_type or 'unknown'} model, not "
                                 f"{' / '.join(model_types)}: pass a folder of the right model ({flag_hint})")


def _damaged_file(exc: Exception, path: str) -> str | None:
    """The weight file a loading error points at, when the error is about a damaged file."""
    text = str(exc).lower()
    if type(exc).__name__ == "SafetensorError" or any(w in text for w in ("deserializ", "truncat", "unexpected eof",
                                                                           "zip archive", "header")):
        files = [f for p in WEIGHT_PATTERNS for f in glob.glob(os.path.join(glob.escape(path), p))]
        return ", ".join(sorted(files)) or path
    return None


def load_pretrained(cls, ref: str, what: str, flag_hint: str, model_types: tuple[str, ...] = (), **kwargs):
    """`cls.from_pretrained(ref)` with the checks above; every failure becomes one clear line."""
    if looks_local(ref):
        path = os.path.expanduser(ref)
        check_model_folder(path, what, flag_hint, model_types)
        try:
            return cls.from_pretrained(path, **kwargs)
        except Exception as exc:   # safetensors, OSError, ValueError...: all say "this folder cannot be used"
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            damaged = _damaged_file(exc, path)
            if damaged:
                raise ModelNotFoundError(f"{what}: {damaged} is damaged or truncated ({first}): copy or "
                                         "download it again") from None
            raise ModelNotFoundError(f"{what}: cannot load the model folder {path} ({first}): copy the "
                                     "whole folder again or pass another one") from None
    if _offline() or not hub_reachable():
        if not _cached(ref):
            why = ("HF_HUB_OFFLINE is set" if _offline()
                   else f"huggingface.co cannot be reached ({':'.join(map(str, _endpoint()))})")
            raise ModelNotFoundError(f"{what}: {ref!r} is not a folder here and not in the Hugging Face cache, "
                                     f"and {why}: {_download_hint(ref, flag_hint)}")
        kwargs = {**kwargs, "local_files_only": True}
    try:
        net = cls.from_pretrained(ref, **kwargs)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelNotFoundError(f"{what}: cannot load {ref!r} ({first}): {_download_hint(ref, flag_hint)}") from None
    got = getattr(getattr(net, "config", None), "model_type", None)
    if model_types and got and got not in model_types:
        raise ModelNotFoundError(f"{what}: {ref!r} is a {got} model, not {' / '.join(model_types)} ({flag_hint})")
    return net


def training_output(ref: str) -> tuple[str, str | None]:
    """What a local folder written by `python -m training.sft|grpo` stands for, as (model, adapter):
    the run folder RUN means RUN/final (the merged model); a LoRA adapter folder (RUN/adapter, or a
    LoRA checkpoint) means its base model plus that adapter. Anything else is returned as it is."""
    if not looks_local(ref):
        return ref, None
    path = os.path.expanduser(ref)
    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, "config.json")):
        return ref, None
    final = os.path.join(path, "final")
    if os.path.isfile(os.path.join(final, "config.json")):
        return final, None
    adapter_config = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(adapter_config):
        if os.path.isdir(os.path.join(path, "adapter")):
            return training_output(os.path.join(path, "adapter"))
        return ref, None
    try:
        with open(adapter_config, encoding="utf-8") as f:
            base = json.load(f).get("base_model_name_or_path") or ""
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelNotFoundError(f"LoRA adapter {path}: {adapter_config} is not valid JSON ({exc})") from None
    if not base:
        raise ModelNotFoundError(f"LoRA adapter {path}: adapter_config.json names no base model "
                                 "(base_model_name_or_path); pass the run's merged model, RUN/final")
    return base, path
