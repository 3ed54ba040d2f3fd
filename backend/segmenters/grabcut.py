"""OpenCV GrabCut: a weight-free segmenter driven by the same box and point prompts as SAM.

Each box is cut on a crop around it (so the colour models see local background), points are sure
foreground, and holes in the result are filled (places are solid areas). A prompt with many points
(`lattice_min` or more, as the map reader gives) says where the object is: box pixels far from every
point start as probable background instead of probable foreground, and points are sure foreground
over part of the spacing around them. Documented fallbacks, each logged: boxes under `min_side` px
(GrabCut has too few pixels to model) and boxes that fill the crop with points all over them (nothing
is background) come back as the filled box; crops larger than `max_side` are cut at reduced resolution.
"""
from __future__ import annotations

import logging
import time

import cv2
import numpy as np
from scipy import ndimage

from .base import Prompt, Segmentation

log = logging.getLogger(__name__)


class GrabCutSegmenter:
    name = "grabcut"

    def __init__(self, iterations: int = 5, margin: float = 0.25, min_side: int = 8,
                 max_side: int = 384, point_radius: int = 3, lattice_min: int = 6):
        self.iterations = max(1, min(int(iterations), 20))
        self.box_iterations = min(self.iterations, 2)
        self.margin, self.min_side, self.max_side = margin, min_side, max_side
        self.point_radius = point_radius
        self.lattice_min = lattice_min
        # With a lattice: sure foreground within lattice_fg x its spacing of a point, probable
        # foreground within lattice_reach x spacing, probable background elsewhere in the box.
        self.lattice_reach, self.lattice_fg = 0.75, 0.45
        self._image: np.ndarray | None = None
        self.embed_calls = 0
        self.seconds = 0.0

    def set_image(self, image: np.ndarray) -> None:
        self._image = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2BGR)
        self.embed_calls += 1

    def segment(self, prompts: list[Prompt]) -> list[Segmentation]:
        if self._image is None:
            raise RuntimeError("set_image must be called before segment")
        start = time.perf_counter()
        out = [self._one(p) for p in prompts]
        self.seconds += time.perf_counter() - start
        return out

    def _one(self, prompt: Prompt) -> Segmentation:
        img = self._image
        h, w = img.shape[:2]
        x1, y1, x2, y2 = prompt.box
        bx1, by1 = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
        bx2, by2 = min(w, int(np.ceil(x2)) + 1), min(h, int(np.ceil(y2)) + 1)
        full = np.zeros((h, w), bool)
        if bx2 - bx1 < self.min_side or by2 - by1 < self.min_side:
            log.info("grabcut: box %s is under %d px; using the filled box", prompt.box, self.min_side)
            full[by1:by2, bx1:bx2] = True
            return Segmentation(full, None)
        mx, my = int((bx2 - bx1) * self.margin) + 4, int((by2 - by1) * self.margin) + 4
        cx1, cy1, cx2, cy2 = max(0, bx1 - mx), max(0, by1 - my), min(w, bx2 + mx), min(h, by2 + my)
        crop = img[cy1:cy2, cx1:cx2]
        scale = min(1.0, self.max_side / max(crop.shape[:2]))
        if scale < 1.0:
            crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ch, cw = crop.shape[:2]

        def to_crop(x, y):
            return int(round((x - cx1) * scale)), int(round((y - cy1) * scale))

        mask = np.full((ch, cw), cv2.GC_BGD, np.uint8)
        (ix1, iy1), (ix2, iy2) = to_crop(bx1, by1), to_crop(bx2, by2)
        ix2, iy2 = min(cw, max(ix2, ix1 + 2)), min(ch, max(iy2, iy1 + 2))
        mask[iy1:iy2, ix1:ix2] = cv2.GC_PR_FGD
        radius = self.point_radius
        if len(prompt.points) >= self.lattice_min:
            # Many points spread over the object (the map reader's lattice): the object is where
            # the points are, so box pixels far from every point start as probable background.
            pts = np.array([to_crop(x, y) for x, y in prompt.points], np.float32)
            d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
            np.fill_diagonal(d, np.inf)
            spacing = float(np.median(d.min(axis=1)))
            reach = max(self.point_radius + 1, int(round(self.lattice_reach * spacing)))
            # ... and each point is sure foreground over part of the spacing around it, so that an
            # object's inner parts that look different (a pitch in a school) stay in it even where a
            # tile edge keeps them from being a hole that is filled.
            radius = max(self.point_radius, int(self.lattice_fg * spacing))
            near = np.zeros((ch, cw), np.uint8)
            for px, py in pts.astype(int):
                cv2.circle(near, (int(px), int(py)), reach, 1, -1)
            box = mask == cv2.GC_PR_FGD
            mask[box & (near == 0)] = cv2.GC_PR_BGD
        if not (mask == cv2.GC_BGD).any() and (mask == cv2.GC_PR_FGD).all():
            # The box fills the crop and a lattice of points covers all of it (a tile inside a
            # large place): nothing in the image is background, so the whole box is the object.
            log.info("grabcut: box %s is covered by its points; using the filled box", prompt.box)
            full[by1:by2, bx1:bx2] = True
            return Segmentation(full, None)
        if not (mask == cv2.GC_BGD).any():
            # The box fills the crop (it touches the image border on every side): let a thin frame
            # inside it stand as probable background so GrabCut can learn a background model.
            ring = max(2, min(ch, cw) // 20)
            mask[:ring, :] = mask[-ring:, :] = cv2.GC_PR_BGD
            mask[:, :ring] = mask[:, -ring:] = cv2.GC_PR_BGD
        for x, y in prompt.points:
            px, py = to_crop(x, y)
            cv2.circle(mask, (px, py), radius, int(cv2.GC_FGD), -1)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            # A box alone (stage 1's coarse mask, only shown back to the reasoner) gets fewer
            # iterations than a box with points (the final mask).
            iterations = self.iterations if prompt.points else self.box_iterations
            # GrabCut seeds its colour models with k-means on OpenCV's global random generator:
            # reseed so that a box's cut does not depend on what ran before it.
            cv2.setRNGSeed(0)
            cv2.grabCut(crop, mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error as exc:
            log.warning("grabcut failed on box %s (%s); using the filled box", prompt.box, exc)
            full[by1:by2, bx1:bx2] = True
            return Segmentation(full, None)
        # Places are solid areas: trees and shadows inside a school yard belong to the school.
        fg = ndimage.binary_fill_holes((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
        if scale < 1.0:
            fg = cv2.resize(fg, (cx2 - cx1, cy2 - cy1), interpolation=cv2.INTER_NEAREST)
        full[cy1:cy2, cx1:cx2] = fg.astype(bool)
        inside = np.zeros_like(full)
        inside[by1:by2, bx1:bx2] = True
        full &= inside
        return Segmentation(full, None)  # GrabCut has no confidence of its own
