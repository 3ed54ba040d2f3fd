"""Device choice shared by every torch engine: `auto` is cuda, then mps, then cpu."""
from __future__ import annotations

from .errors import InputError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str = "auto") -> str:
    import torch

    name = (device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    base = name.split(":")[0]
    if base not in DEVICES:
        raise InputError(f"unknown device {device!r}: use one of {', '.join(DEVICES)} (or cuda:N)")
    if base == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but torch sees no CUDA GPU: use --device cpu or auto")
    if base == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device 'mps' was asked for but is not available: use --device cpu or auto")
    return name


def default_dtype(device: str):
    """bf16 on GPUs, float32 on the CPU (bf16 matrix work is slow on most CPUs)."""
    import torch

    return torch.float32 if device.startswith("cpu") else torch.bfloat16
