"""Reading places off a rendered map by its legend (resources/legends/*.json).

A genuine OpenStreetMap Carto render shows a place's class fill only between what is drawn on top of
it: a park is cut by footpaths, labels and icons and holds lawns, playgrounds and trees; a school's
pale fill shows only between its buildings, yards and pitches. So the class fill is a seed, not the
place:
1. seed = pixels of the class's fills; thin gaps through it (paths, label strokes) are closed;
2. every patch of another colour that Carto draws on top of areas ('inside' colours, and unknown
   colours: labels, icons, outlines) joins the place when most of its non-neutral surroundings are
   the place (a building in a school yard, a lawn in a park), repeated so that patches touching
   joined patches can join too; 'outside' colours (bare land, roads) never join and count against;
3. holes are filled and fragments a few metres apart are grouped into one place.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..resources import load_json

SEED, INSIDE, OUTSIDE, MISC = 0, 1, 2, 3
GROW_ROUNDS = 4
JOIN_FRACTION = 0.5     # share of a patch's surroundings (seed vs outside) that must be the place
BRIDGE_M = 5.0          # gaps this wide through a fill (paths, label strokes) are closed
GROUP_M = 12.0          # fragments closer than this are one place


def hex_rgb(h: str) -> tuple[int, int, int]:
    h = h.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


class Legend:
    def __init__(self, path: str):
        try:
            data = load_json(path)
            self.fills = {hex_rgb(k): list(v) for k, v in data["colours"].items()}
            self.inside = [hex_rgb(k) for k in data.get("inside", {})]
            self.outside = [hex_rgb(k) for k in data.get("outside", {})]
            self.tolerance = int(data.get("tolerance", 6))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"cannot read the map legend {path} ({exc}); see resources/legends/"
                             "osm_carto.json for the format") from None
        self.name = str(data.get("name", path)) + (f" {data['version']}" if data.get("version") else "")

    def colours_for(self, classes) -> tuple[list[tuple[int, int, int]], set[str]]:
        """The fills that stand for any of `classes`, and the other classes those fills also mean."""
        wanted = set(classes)
        colours, others = [], set()
        for rgb, cls in self.fills.items():
            if wanted & set(cls):
                colours.append(rgb)
                others |= set(cls) - wanted
        return colours, others

    def categories(self, img: np.ndarray, seeds) -> np.ndarray:
        """Per pixel: SEED, INSIDE, OUTSIDE or MISC (each distinct colour is looked up once)."""
        flat = img.reshape(-1, 3).astype(np.int32)
        keys = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
        uniq, inverse = np.unique(keys, return_inverse=True)
        u = np.stack([uniq >> 16, (uniq >> 8) & 255, uniq & 255], axis=1)
        cat = np.full(len(uniq), MISC, np.uint8)
        # Later lists win: a seed colour is the place even where the legend calls it inside/outside.
        for group, code in ((self.inside, INSIDE), (self.outside, OUTSIDE), (seeds, SEED)):
            for c in group:
                cat[(np.abs(u - np.array(c)) <= self.tolerance).all(axis=1)] = code
        return cat[inverse].reshape(img.shape[:2])


def _disk(radius: int) -> np.ndarray:
    r = max(1, int(radius))
    yy, xx = np.ogrid[-r: r + 1, -r: r + 1]
    return xx * xx + yy * yy <= r * r


def _ring_counts(labels: np.ndarray, n: int, good: np.ndarray, bad: np.ndarray, reach: int = 2):
    """Per patch label: how many pixels within `reach` px of it (outside it) are good / bad."""
    g = np.zeros(n + 1, np.int64)
    b = np.zeros(n + 1, np.int64)
    h, w = labels.shape
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if dx == 0 and dy == 0:
                continue
            src = labels[max(0, -dy): h - max(0, dy), max(0, -dx): w - max(0, dx)]
            dst = (slice(max(0, dy), h - max(0, -dy)), slice(max(0, dx), w - max(0, -dx)))
            other = labels[dst] != src
            sel = (src > 0) & other
            g += np.bincount(src[sel & good[dst]], minlength=n + 1)
            b += np.bincount(src[sel & bad[dst]], minlength=n + 1)
    return g, b


def place_mask(img: np.ndarray, legend: Legend, seeds, pixel_m: float) -> np.ndarray:
    """Pixels of the places whose fill is one of `seeds`, read as the module docstring says."""
    cat = legend.categories(img, seeds)
    seed = cat == SEED
    if not seed.any():
        return seed
    seed = ndimage.binary_opening(seed, np.ones((2, 2), bool))        # lone antialiased pixels
    bridge = max(1, int(round(BRIDGE_M / 2 / pixel_m)))
    place = ndimage.binary_closing(np.pad(seed, bridge + 1), _disk(bridge))[bridge + 1: -bridge - 1,
                                                                             bridge + 1: -bridge - 1]
    place |= seed
    if not legend.inside and not legend.outside:
        # A legend that only lists class fills says nothing about what lies between places:
        # growing over unknown colours would flood the map, so only gaps and holes are closed.
        return ndimage.binary_fill_holes(place)
    outside = (cat == OUTSIDE) & ~place
    # Patches: connected runs of one category (inside colours and unknown colours apart), not yet place.
    patches = np.zeros(cat.shape, np.int32)
    n = 0
    for code in (INSIDE, MISC):
        lab, k = ndimage.label((cat == code) & ~place)
        patches[lab > 0] = lab[lab > 0] + n
        n += k
    for _ in range(GROW_ROUNDS):
        if n == 0:
            break
        # Other patches not (yet) in the place count against: a lawn joins a park when the park
        # surrounds it, not when a chain of lawns and houses leads to it.
        good, bad = _ring_counts(patches, n, place, outside | ((patches > 0) & (cat == INSIDE)))
        join = (good > 0) & (good >= JOIN_FRACTION * (good + bad))
        join[0] = False
        if not join[1:].any():
            break
        place |= join[patches]
        patches[join[patches]] = 0
    return ndimage.binary_fill_holes(place)


def group_places(mask: np.ndarray, pixel_m: float, min_px: int) -> list[np.ndarray]:
    """The places of a mask: components a few metres apart grouped, groups under `min_px` dropped."""
    gap = max(1, int(round(GROUP_M / 2 / pixel_m)))
    groups, n = ndimage.label(ndimage.binary_dilation(mask, _disk(gap)))
    labels = np.where(mask, groups, 0)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    return [labels == k for k in range(1, n + 1) if sizes[k] >= min_px]
