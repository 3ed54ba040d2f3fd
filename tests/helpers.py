"""Shared test helpers (importable because pytest.ini puts tests/ on the path)."""
import os

import numpy as np
from affine import Affine
from rasterio.crs import CRS

import rasterio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, "..", "shared", "reference", "socioreasoner.md")


def write_raster(path, rgb: np.ndarray, crs, transform: Affine, nodata=None):
    with rasterio.open(path, "w", driver="GTiff", width=rgb.shape[1], height=rgb.shape[0], count=rgb.shape[2],
                       dtype=rgb.dtype, crs=CRS.from_user_input(crs), transform=transform, nodata=nodata) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    return path


class FillBoxSegmenter:
    """A segmenter whose mask is exactly the prompt box (inclusive pixels): isolates geometry tests."""
    name = "fillbox"

    def __init__(self):
        self.embed_calls = 0
        self.segment_calls = 0
        self.shape = None

    def set_image(self, image):
        self.embed_calls += 1
        self.shape = image.shape[:2]

    def segment(self, prompts):
        from backend.segmenters.base import Segmentation

        self.segment_calls += 1
        out = []
        for p in prompts:
            m = np.zeros(self.shape, bool)
            x1, y1, x2, y2 = (int(round(v)) for v in p.box)
            m[y1:y2 + 1, x1:x2 + 1] = True
            out.append(Segmentation(m, 0.9))
        return out


class ScriptedReasoner:
    """Answers with fixed texts (or a function of the view), in the model's frame."""
    name = "scripted"

    def __init__(self, stage1, stage2=None):
        from backend.reasoners.base import SmartResize

        self._frame = SmartResize()
        self.s1, self.s2 = stage1, stage2
        self.views = []

    def input_size(self, h, w):
        return self._frame.input_size(h, w)

    def stage1(self, view, prompt):
        from backend.reasoners.base import Reply

        self.views.append(view)
        return Reply(self.s1(view) if callable(self.s1) else self.s1)

    def stage2(self, view, prompt, rmap, rsat, stage1):
        from backend.pipeline.prompts import format_answer
        from backend.reasoners.base import Reply

        if self.s2 is None:   # repeat the boxes with their centre as the point
            items = [type(it)(it.box, [((it.box[0] + it.box[2]) / 2, (it.box[1] + it.box[3]) / 2)])
                     for it in stage1.items]
            return Reply("<think>ok</think><answer>" + format_answer(items, True) + "</answer>")
        return Reply(self.s2(view) if callable(self.s2) else self.s2)
