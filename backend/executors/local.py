"""The simple case of the seam: every tile computed in this process (`pipeline.detect.run_local`)."""
from __future__ import annotations

from ..pipeline.detect import Detection, RunSettings, Scene, detect
from ..pipeline.stages import CancelCheck, Progress


class LocalExecutor:
    def __init__(self, reasoner, segmenter):
        self.reasoner, self.segmenter = reasoner, segmenter

    def run(self, scene: Scene, settings: RunSettings, progress: Progress | None = None,
            cancel: CancelCheck | None = None) -> Detection:
        return detect(scene, settings, self.reasoner, self.segmenter, progress=progress, cancel=cancel)
