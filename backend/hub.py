"""Loading Hugging Face models from an id or a local folder, with errors that say how to get them."""
from __future__ import annotations

import os

from .errors import ModelNotFoundError


def looks_local(ref: str) -> bool:
    return os.path.isabs(ref) or ref.startswith((".", "~")) or os.path.isdir(ref)


def load_pretrained(cls, ref: str, what: str, flag_hint: str, **kwargs):
    """`cls.from_pretrained(ref)`; a missing local folder or an unreachable hub id becomes a clear error."""
    path = os.path.expanduser(ref)
    if looks_local(ref) and not os.path.isdir(path):
        raise ModelNotFoundError(f"{what}: folder {path} does not exist. Pass an existing model folder "
                                 f"({flag_hint}) or a Hugging Face id.")
    try:
        return cls.from_pretrained(path if looks_local(ref) else ref, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(
            f"{what}: cannot load {ref!r} ({first}). Download it on a machine with internet access "
            f"(`huggingface-cli download {ref} --local-dir models/{os.path.basename(ref.rstrip('/'))}`), "
            f"copy the folder here and pass it with {flag_hint}; or set HF_HOME to a cache that holds it."
        ) from None
