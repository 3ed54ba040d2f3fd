"""Engine spec strings, the same everywhere (CLI, plugin settings, training).

    --reasoner  mapreader | qwen[:HF_ID_OR_DIR] | openai:SERVER_URL | sam3-concept[:HF_ID_OR_DIR]
    --segmenter grabcut | sam2[:HF_ID_OR_DIR] | sam3[:HF_ID_OR_DIR] | sam:MODEL_TYPE:CHECKPOINT
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

DEFAULT_REASONER = "mapreader"
DEFAULT_SEGMENTER = "grabcut"


@dataclass(frozen=True)
class EngineSpec:
    kind: str
    args: tuple[str, ...] = ()

    def __str__(self) -> str:
        return ":".join((self.kind, *self.args))


def parse_reasoner(spec: str) -> EngineSpec:
    kind, _, rest = (spec or DEFAULT_REASONER).strip().partition(":")
    kind = kind.lower()
    if kind == "mapreader":
        return EngineSpec("mapreader", (rest,) if rest else ())
    if kind == "qwen":
        from .reasoners.qwen import DEFAULT_VLM
        return EngineSpec("qwen", (rest or DEFAULT_VLM,))
    if kind == "openai":
        if not rest:
            raise InputError("a model server needs its URL: --reasoner openai:http://gpu-box:8000/v1")
        return EngineSpec("openai", (rest,))
    if kind == "sam3-concept":
        from .segmenters.sam3 import DEFAULT_SAM3
        return EngineSpec("sam3-concept", (rest or DEFAULT_SAM3,))
    raise InputError(f"unknown reasoner {spec!r}: use 'mapreader' (no weights), 'qwen[:HF_ID_OR_DIR]', "
                     "'openai:SERVER_URL' (a model server) or 'sam3-concept[:HF_ID_OR_DIR]' (SAM 3's text "
                     "prompts on the satellite image, a baseline)")


def parse_segmenter(spec: str) -> EngineSpec:
    kind, _, rest = (spec or DEFAULT_SEGMENTER).strip().partition(":")
    kind = kind.lower()
    if kind == "grabcut":
        return EngineSpec("grabcut")
    if kind == "sam2":
        from .segmenters.sam2 import DEFAULT_SAM2
        return EngineSpec("sam2", (rest or DEFAULT_SAM2,))
    if kind == "sam3":
        from .segmenters.sam3 import DEFAULT_SAM3
        return EngineSpec("sam3", (rest or DEFAULT_SAM3,))
    if kind == "sam":
        model_type, _, checkpoint = rest.partition(":")
        if not model_type or not checkpoint:
            raise InputError("SAM needs a model type and a checkpoint: --segmenter sam:vit_h:/path/sam_vit_h_4b8939.pth")
        return EngineSpec("sam", (model_type, checkpoint))
    raise InputError(f"unknown segmenter {spec!r}: use 'grabcut' (no weights), 'sam2[:HF_ID_OR_DIR]', "
                     "'sam3[:HF_ID_OR_DIR]' or 'sam:MODEL_TYPE:CHECKPOINT'")


def build_reasoner(spec: str, device: str = "auto", generation=None, server=None):
    """`server`: a dict of ServerSettings fields besides the URL (model, concurrency, timeout, ...)."""
    s = parse_reasoner(spec)
    if s.kind == "mapreader":
        from .reasoners.mapreader import MapReader
        return MapReader(legend=s.args[0] if s.args else None)
    if s.kind == "openai":
        from .reasoners.openai_server import OpenAIReasoner, ServerSettings
        return OpenAIReasoner(ServerSettings(s.args[0], **(server or {})), generation)
    if s.kind == "sam3-concept":
        from .reasoners.sam3_concept import Sam3ConceptReasoner
        return Sam3ConceptReasoner(s.args[0], device=device)
    from .reasoners.qwen import QwenReasoner
    return QwenReasoner(s.args[0], device=device, generation=generation)


def build_segmenter(spec: str, device: str = "auto"):
    s = parse_segmenter(spec)
    if s.kind == "grabcut":
        from .segmenters.grabcut import GrabCutSegmenter
        return GrabCutSegmenter()
    if s.kind == "sam2":
        from .segmenters.sam2 import Sam2Segmenter
        return Sam2Segmenter(s.args[0], device=device)
    if s.kind == "sam3":
        from .segmenters.sam3 import Sam3Segmenter
        return Sam3Segmenter(s.args[0], device=device)
    from .segmenters.sam import SamSegmenter
    return SamSegmenter(s.args[0], s.args[1], device=device)
