"""A baseline: SAM 3's own text prompts ("promptable concept segmentation") on the satellite image alone.

`--reasoner sam3-concept[:HF_ID_OR_DIR]` asks SAM 3 (`Sam3Model` + `Sam3Processor`) for the query as a
concept ("school", "park") and answers with the instances it finds: no map, no vision-language model.
It answers in the released text format like every reasoner (stage 1: the instances' boxes; stage 2:
the same boxes with points deep inside each instance), and hands SAM 3's instance masks to the pipeline
as the objects' outlines, so with the default `--outline map` the output masks are SAM 3's own (with
`--outline image` the segmenter cuts them from the boxes and points instead). What a text-prompted
segmenter sees of a socially defined place is what it looks like from above; the README compares.
"""
from __future__ import annotations

import numpy as np

from ..device import resolve_device
from ..pipeline.prompts import Item, ParsedAnswer, format_answer
from ..segmenters.sam3 import DEFAULT_SAM3, load_sam3
from .base import Reply, SmartResize, TileView
from .mapreader import interior_points

MODEL_TYPES = ("sam3_video", "sam3")
SCORE_THRESHOLD = 0.5     # SAM 3's own examples keep instances scoring above 0.5
MASK_THRESHOLD = 0.5


def concept(query: str) -> str:
    """The noun phrase SAM 3 is asked for: the query as the user wrote it, lower case."""
    return " ".join(query.strip().lower().split())


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Sam3ConceptReasoner(SmartResize):
    def __init__(self, model: str = DEFAULT_SAM3, device: str = "auto", threshold: float = SCORE_THRESHOLD):
        import torch
        from transformers import Sam3Model, Sam3Processor

        self.device = resolve_device(device)
        hint = "--reasoner sam3-concept:DIR"
        net = load_sam3(Sam3Model, model, "SAM 3 concept reasoner", hint, model_types=MODEL_TYPES)
        self.processor = load_sam3(Sam3Processor, model, "SAM 3 concept reasoner", hint, model_types=MODEL_TYPES)
        self.model = net.to(self.device).eval()
        self.threshold = threshold
        self.name = f"sam3-concept:{model}"
        self._torch = torch
        self._found: dict[str, tuple[list[Item], list[np.ndarray]]] = {}
        self.calls = 0

    def find(self, image: np.ndarray, query: str) -> tuple[list[Item], list[np.ndarray], list[float]]:
        """SAM 3's instances of the concept on an H x W x 3 image: boxes (pixels), masks, scores."""
        torch = self._torch
        h, w = image.shape[:2]
        inputs = self.processor(images=np.ascontiguousarray(image[..., :3]), text=concept(query), return_tensors="pt")
        feed = {k: (v.to(self.device, self.model.dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in inputs.items() if hasattr(v, "to") and k != "original_sizes"}
        with torch.inference_mode():
            out = self.model(**feed)
        res = self.processor.post_process_instance_segmentation(
            out, threshold=self.threshold, mask_threshold=MASK_THRESHOLD, target_sizes=[(h, w)])[0]
        self.calls += 1
        items, masks, scores = [], [], []
        for box, mask, score in zip(res["boxes"].float().cpu().numpy(), res["masks"].cpu().numpy(),
                                    res["scores"].float().cpu().numpy()):
            mask = mask.astype(bool)
            x1, y1, x2, y2 = (float(np.clip(box[0], 0, w - 1)), float(np.clip(box[1], 0, h - 1)),
                              float(np.clip(box[2], 0, w - 1)), float(np.clip(box[3], 0, h - 1)))
            if x2 <= x1 or y2 <= y1 or not mask.any():
                continue
            items.append(Item((x1, y1, x2, y2), interior_points(mask, 2)))
            masks.append(mask)
            scores.append(float(score))
        return items, masks, scores

    def stage1(self, view: TileView, prompt: str) -> Reply:
        items, masks, scores = self.find(view.sat_image, view.query)
        self._found[view.tile_id] = (items, masks)
        think = (f"SAM 3 asked for the concept '{concept(view.query)}' on the satellite image alone (no map): "
                 f"{len(items)} instance(s) above score {self.threshold:g}"
                 + (f", scores {', '.join(f'{s:.2f}' for s in scores)}." if scores else "."))
        return Reply(f"<think>{think}</think><answer>{format_answer(items, False)}</answer>",
                     [f"SAM 3 concept '{concept(view.query)}' on the satellite image; the map was not read"],
                     [], list(masks))

    def stage2(self, view: TileView, prompt: str, rendered_map, rendered_sat, stage1: ParsedAnswer) -> Reply:
        items, masks = self._found.pop(view.tile_id, None) or self.find(view.sat_image, view.query)[:2]
        out, outlines = [], []
        for it in stage1.items:
            best = max(range(len(items)), key=lambda k: _iou(it.box, items[k].box), default=None)
            if best is None or _iou(it.box, items[best].box) < 0.5:
                out.append(Item(it.box, []))
                outlines.append(None)
                continue
            out.append(Item(it.box, items[best].points))
            outlines.append(masks[best])
        think = "Two points deep inside each SAM 3 instance."
        return Reply(f"<think>{think}</think><answer>{format_answer(out, True)}</answer>", [], [], outlines)
