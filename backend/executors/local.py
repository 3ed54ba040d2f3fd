"""The simple case of the seam: every tile computed in this process, in batches or in threads."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed

from ..pipeline.detect import Detection, EngineFacts, RunPlan, RunSettings, Scene, plan, run_tiles
from ..pipeline.stages import CancelCheck, Progress, SegmenterSession


def batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class LocalExecutor:
    """`batch_size` tiles go through each stage together (one batched `generate` in process). A
    reasoner that talks to a server (`concurrency` > 1, default: the reasoner's own) runs that many
    tiles at once in threads instead, each tile's stage 2 starting as soon as its coarse mask is
    rendered; the segmenter is shared under a lock."""

    def __init__(self, reasoner, segmenter):
        self.reasoner, self.segmenter = reasoner, segmenter

    def run(self, scene: Scene, settings: RunSettings, progress: Progress | None = None,
            cancel: CancelCheck | None = None) -> Detection:
        facts = EngineFacts.of(self.reasoner, self.segmenter, scene, settings)
        run = plan(scene, settings, facts, progress)
        try:
            self.execute(run, progress, cancel)
            if progress:
                progress(1.0, "merging tiles")
        except BaseException:
            run.close()
            raise
        return run.finish()

    def execute(self, run: RunPlan, progress: Progress | None, cancel: CancelCheck | None) -> None:
        session = SegmenterSession(self.segmenter)
        n = max(run.total, 1)

        def one(tiles):
            label = tiles[0].id if len(tiles) == 1 else f"{tiles[0].id}..{tiles[-1].id}"

            def on_stage(name, steps=iter(range(4))):
                if progress:
                    progress((run.done + next(steps, 3) / 4 * len(tiles)) / n,
                             f"{label} ({run.done + len(tiles)}/{n}): {name}")

            for rec, result in run_tiles(run.scene, tiles, run.settings, self.reasoner, session, cancel, on_stage):
                run.add(rec, result=result)
            if progress:
                progress(run.done / n, f"{label} done ({run.done}/{n})")

        workers = run.settings.concurrency if run.settings.concurrency is not None else \
            getattr(self.reasoner, "concurrency", 1)
        if workers > 1 and len(run.todo) > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(one, [t]) for t in run.todo]
                try:
                    for f in as_completed(futures):
                        f.result()
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
        else:
            for tiles in batches(run.todo, max(1, run.settings.batch_size)):
                one(tiles)
