"""SAM 3 as a box-and-point segmenter, through transformers (Sam3TrackerModel + Sam3TrackerProcessor).

`Sam3TrackerModel` takes the same boxes and points as SAM 2 (its image path is SAM 2's prompt encoder
and mask decoder on SAM 3's vision backbone), so everything but the loading is SAM 2's segmenter.
`facebook/sam3` is gated on the Hugging Face hub: request access on its model page, then log in
(`hf auth login`) or pass a downloaded folder (`--segmenter sam3:/path/to/sam3`).
"""
from __future__ import annotations

from ..device import resolve_device
from ..errors import ModelNotFoundError
from ..hub import load_pretrained, looks_local
from .sam2 import Sam2Segmenter

DEFAULT_SAM3 = "facebook/sam3"
# The published checkpoint is a sam3_video one (detector + tracker); a tracker-only save is sam3_tracker.
MODEL_TYPES = ("sam3_video", "sam3_tracker", "sam3_tracker_video")
GATED_HINT = ("facebook/sam3 is gated: request access at https://huggingface.co/facebook/sam3 (accept the "
              "licence), then `hf auth login` with a token of that account, or download it "
              "(`hf download facebook/sam3 --local-dir models/sam3`) and pass --segmenter sam3:models/sam3")


def load_sam3(cls, ref: str, what: str, flag_hint: str, model_types=MODEL_TYPES, **kwargs):
    """`load_pretrained` that says how to get access when the gated default cannot be loaded."""
    try:
        return load_pretrained(cls, ref, what, flag_hint, model_types=model_types, **kwargs)
    except ModelNotFoundError as exc:
        if not looks_local(ref) and ref.strip("/").lower() == DEFAULT_SAM3:
            raise ModelNotFoundError(f"{exc}. {GATED_HINT}") from None
        raise


class Sam3Segmenter(Sam2Segmenter):
    def __init__(self, model: str = DEFAULT_SAM3, device: str = "auto"):
        import torch
        from transformers import Sam3TrackerModel, Sam3TrackerProcessor

        self.device = resolve_device(device)
        hint = "--segmenter sam3:DIR"
        net = load_sam3(Sam3TrackerModel, model, "SAM 3 segmenter", hint)
        self.processor = load_sam3(Sam3TrackerProcessor, model, "SAM 3 segmenter", hint)
        self.model = net.to(self.device).eval()
        self.name = f"sam3:{model}"
        self._torch = torch
        self._embeddings = None
        self._size = None
        self.embed_calls = 0
