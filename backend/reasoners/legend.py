"""Reading places off a rendered map by its legend (resources/legends/*.json).

A genuine OpenStreetMap Carto render shows a place's class fill only between what is drawn on top of
it: a park is cut by footpaths, labels and icons and holds lawns, playgrounds and trees; a school's
pale fill shows only between its buildings, yards and pitches, and many schools show none at all,
only their name in the class's label colour. So fills and labels are evidence, not the place:
1. evidence for the place: its class fills, and the words written in its class's label colour;
   evidence against: 'outside' colours (bare land, other land uses); 'barrier' colours (roads) are
   neither, and a place never reaches across them into a street block without evidence;
2. every pixel of an 'inside' or unknown colour (buildings, lawns, yards, labels, icons) joins the
   place when it lies nearer to the evidence for it than (by FAVOUR) to the evidence against it,
   within REACH_FILL_M of a fill (where a place's fill shows, it shows wherever nothing covers it)
   or REACH_M of a label (a label is all that some places show); a building with the lawns and
   yards it touches ('unit' colours: a house and its garden) joins or stays out as a whole, and
   open land ('open': a park) holds a building only where it lies around it (UNIT_RING); roads
   up to ROAD_M wide with the place on both sides (a campus's service roads) are part of it;
   a label's growth is stopped by land use only, not by the neutral greys that outlines and road
   casings blend into (no Carto land-use fill is a neutral grey; a campus is full of them), while
   a fill stops at anything drawn beside it, those blends included;
3. a region of a shared fill that carries another class's label or icon and none of its own is
   that class's place, and evidence against (Carto: a hospital has the schools' fill, red marks;
   its wings across its own service roads are one region, so one red name marks them all; a name
   within MARK_REACH_M counts, as a label's white halo reads as road and cuts it off its region);
4. gaps are bridged, holes filled, and fragments a few metres apart are grouped into one place.
The constants were chosen on the real Porto render and the later rules checked on London, Moscow and
Copenhagen too (the project README gives the scores), so all four scenes' numbers are in-sample;
UNIT_RING was chosen leave-one-city-out on seven cities (benchmarks/real_maps.py --leave-one-out).
Lengths are in metres of ground at the map's scale, read at about 1 m per pixel (MapReader.WORK_M).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..resources import load_json

SEED, INSIDE, OUTSIDE, MISC, BARRIER = 0, 1, 2, 3, 4
REACH_M = 60.0          # a place reaches at most this far beyond its label
REACH_FILL_M = 20.0     # ... and this far beyond its fill
FAVOUR = 2.0            # a pixel joins when nearer the evidence for than FAVOUR x the evidence against
BRIDGE_M = 5.0          # gaps this wide through a place (paths, label strokes) are closed
GROUP_M = 12.0          # fragments closer than this are one place
SEAL_M = 2.0            # gaps this wide in a road (its name written over it) are still road
UNIT_SHARE = 0.5        # a building joins when this share of it lies near the evidence
UNIT_RING = 0.5         # ... and, for an open fill (a park), this share of its outline touches what the place holds
ROAD_M = 8.0            # a road this wide between two parts of a place is part of it
MARK_REACH_M = 4.0      # a label or mark this near a region of a shared fill speaks for it
FILL_SURE_M2 = 25.0     # a fill says its classes where at least this much of it shows in a place
# Words of a label: runs of text-coloured pixels (with their halo blend) at ~1 m/px, at least about
# four letters wide; an icon or a single letter is narrower and says less about where an area lies.
# The span decides more than the pixel count: a map whose pixels are a little finer than the reading
# lattice loses strokes (not letters) depending on where the grid's pixels fall.
WORD_MIN_PX, WORD_MIN_WIDTH_PX, MARK_MIN_PX = 15, 30, 10


def hex_rgb(h: str) -> tuple[int, int, int]:
    h = h.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


class Colours:
    """The distinct colours of an image and which one each pixel is: a map render has a few thousand
    colours, so per-colour tests run once per colour instead of once per pixel."""

    def __init__(self, img: np.ndarray):
        rgb = img[..., :3]
        keys = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        present = np.zeros(1 << 24, bool)
        present[keys] = True
        codes = np.flatnonzero(present)          # sorted: no sort of all the pixels is needed
        self.index = np.searchsorted(codes, keys).astype(np.int32)
        self.rgb = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=1).astype(np.int16)

    @classmethod
    def of(cls, img) -> "Colours":
        return img if isinstance(img, Colours) else cls(img)

    def within(self, colours, tolerance: int) -> np.ndarray:
        """Per pixel: within `tolerance` (per channel) of any of `colours`."""
        hit = np.zeros(len(self.rgb), bool)
        for c in colours:
            hit |= (np.abs(self.rgb - np.array(c, np.int16)) <= tolerance).all(axis=1)
        return hit[self.index]


class Legend:
    def __init__(self, path: str):
        try:
            data = load_json(path)
            self.fills = {hex_rgb(k): list(v) for k, v in data["colours"].items()}
            self.inside = [hex_rgb(k) for k in data.get("inside", {})]
            self.outside = [hex_rgb(k) for k in data.get("outside", {})]
            self.barriers = [hex_rgb(k) for k in data.get("barriers", {})]
            self.units = [hex_rgb(k) for k in data.get("units", {})]
            self.open = [hex_rgb(k) for k in data.get("open", {})]
            self.buildings = [hex_rgb(k) for k in data.get("buildings", {})]
            self.labels = {hex_rgb(k): list(v) for k, v in data.get("labels", {}).items()}
            self.marks = {hex_rgb(k): list(v) for k, v in data.get("marks", {}).items()}
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

    def label_colours(self, classes) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """Label colours that are evidence for `classes` ('labels': written only for areas of those
        classes), and the label and mark colours of the other classes that share a fill with them
        ('labels' and 'marks': a colour also used for point features is never evidence for a place,
        but it tells the classes of a shared fill apart)."""
        wanted = set(classes)
        sharing = set().union(*(set(c) for c in self.fills.values() if wanted & set(c))) - wanted
        own = [rgb for rgb, cls in self.labels.items() if wanted & set(cls)]
        other = [rgb for table in (self.labels, self.marks) for rgb, cls in table.items()
                 if sharing & set(cls) and not wanted & set(cls)]
        return own, other

    def categories(self, img, seeds) -> np.ndarray:
        """Per pixel: SEED, INSIDE, OUTSIDE, BARRIER or MISC (`img`: an RGB image or its Colours)."""
        colours = Colours.of(img)
        u = colours.rgb.astype(np.int32)
        cat = np.full(len(u), MISC, np.uint8)
        best = np.full(len(u), self.tolerance + 1, np.int32)
        # The nearest listed colour within the tolerance decides (pale fills lie a few levels apart:
        # @parking #eeeeee and @land-color #f2efe9); on a tie the later list wins, so a seed colour
        # is the place even where the legend calls it inside or outside.
        for group, code in ((self.inside, INSIDE), (self.outside, OUTSIDE), (self.barriers, BARRIER), (seeds, SEED)):
            for c in group:
                d = np.abs(u - np.array(c)).max(axis=1)
                hit = d <= best
                cat[hit], best[hit] = code, d[hit]
        return cat[colours.index]


def _disk(radius: int) -> np.ndarray:
    r = max(1, int(radius))
    yy, xx = np.ogrid[-r: r + 1, -r: r + 1]
    return xx * xx + yy * yy <= r * r


def text_pixels(img, colours, min_px: int = WORD_MIN_PX, min_width: int = WORD_MIN_WIDTH_PX,
                tolerance: float = 8.0) -> np.ndarray:
    """Pixels of the words written in any of `colours`: the colour itself and its antialiased blend
    toward the white halo Carto draws around labels, in runs of at least `min_px` pixels and
    `min_width` columns (letters a few pixels apart are one run)."""
    found = Colours.of(img)
    x = found.rgb.astype(np.float32)
    hit = np.zeros(len(x), bool)
    for c in colours:
        c = np.array(c, np.float32)
        d = 255.0 - c
        alpha = ((x - c) * d).sum(-1) / max(float((d * d).sum()), 1.0)
        err = np.abs(x - (c + alpha[..., None] * d)).max(-1)
        hit |= (err <= tolerance) & (alpha >= -0.1) & (alpha <= 0.3)
    out = hit[found.index]
    if not out.any():
        return out
    runs, n = ndimage.label(ndimage.binary_dilation(out, iterations=3))
    keep = np.zeros(n + 1, bool)
    counts = np.bincount(runs[out], minlength=n + 1)
    for k, sl in enumerate(ndimage.find_objects(runs), 1):
        keep[k] = counts[k] >= min_px and sl[1].stop - sl[1].start >= min_width
    return keep[runs] & out


def word_sizes(step: int = 1) -> tuple[int, int, int]:
    """WORD_MIN_PX, WORD_MIN_WIDTH_PX and MARK_MIN_PX on a lattice of every `step`-th map pixel: a
    label's size is set in the map's own pixels (its font), not in metres."""
    return (max(1, round(WORD_MIN_PX / step ** 2)), max(1, round(WORD_MIN_WIDTH_PX / step)),
            max(1, round(MARK_MIN_PX / step ** 2)))


def place_mask(img: np.ndarray, legend: Legend, seeds, pixel_m: float, labels=((), ()), explain: bool = False,
               step: int = 1):
    """Pixels of the places whose fill is one of `seeds` or whose labels are written in one of
    `labels[0]` (and not only in `labels[1]`, other classes sharing the fill), read as the module
    docstring says. With `explain`, also the evidence: (mask, {"seed": fill pixels, "words": label
    pixels, "colours": the image's Colours}). `pixel_m`: metres of ground per pixel of `img`; `step`:
    map pixels per pixel of `img` (labels are sized in map pixels)."""
    own, other = labels
    word_px, word_width, mark_px = word_sizes(step)
    img = Colours(img)
    cat = legend.categories(img, seeds)
    seed = ndimage.binary_opening(cat == SEED, np.ones((2, 2), bool))      # lone antialiased pixels
    words = text_pixels(img, own, word_px, word_width) if own else np.zeros(cat.shape, bool)
    bridge = max(1, int(round(BRIDGE_M / 2 / pixel_m)))

    def answer(mask):
        return (mask, {"seed": seed, "words": words, "colours": img}) if explain else mask

    if not legend.inside and not legend.outside:
        # A legend that only lists class fills says nothing about what lies between places:
        # growing over unknown colours would flood the map, so only gaps and holes are closed.
        return answer(ndimage.binary_fill_holes(_close(seed, bridge) | seed))
    theirs = np.zeros(cat.shape, bool)
    if other and seed.any():
        # A place of the shared fill labelled in another class's colour and not in ours is that
        # class's place (Carto: a hospital has the schools' fill, and red names and icons).
        regions, n = ndimage.label(_grow(img, legend, cat, seed, None, cat == OUTSIDE, pixel_m, REACH_M))
        marks = text_pixels(img, other, mark_px, 1)
        # A label's white halo reads as road, so its letters may lie just outside the region they
        # name: a word or mark counts for the region within MARK_REACH_M of it.
        dist, (iy, ix) = ndimage.distance_transform_edt(regions == 0, return_indices=True)
        owner = np.where(dist * pixel_m <= MARK_REACH_M, regions[iy, ix], 0)
        foreign = (np.bincount(owner[marks], minlength=n + 1) > 0) & ~(np.bincount(owner[words], minlength=n + 1) > 0)
        foreign[0] = False
        theirs = foreign[regions]
        seed &= ~theirs
    evidence = seed | words
    if not evidence.any():
        return answer(evidence)
    is_open = bool(seeds) and all(tuple(c) in legend.open for c in seeds)
    place = _grow(img, legend, cat, seed, words, ((cat == OUTSIDE) | theirs) & ~evidence, pixel_m,
                  is_open=is_open) & ~(theirs & ~evidence)
    place = ndimage.binary_fill_holes(_close(place, bridge) | place)
    return answer(ndimage.binary_opening(place, _disk(bridge)))


class Judge:
    """Per place: which classes the map itself allows there, and so whether it tells the asked classes
    apart (backend/output/evidence.py). Each kind of evidence found on or within MARK_REACH_M of the
    place (its fills, where at least FILL_SURE_M2 of one shows; names in a label colour; names and
    icons in a mark colour) allows the classes its colour stands for; the place is certain where what
    all of them allow together lies within the asked classes: a park's own fill, a school-coloured
    name for 'educational', but never the fill schools share with hospitals alone, nor a
    school-coloured name for 'schools' (universities and kindergartens are named in it too)."""

    def __init__(self, legend: Legend, classes, explained: dict, pixel_m: float, min_fill_m2: float = None,
                 step: int = 1):
        self.wanted = set(classes)
        word_px, word_width, mark_px = word_sizes(step)
        img, seed = explained["colours"], explained["seed"]
        self.found = []
        for rgb, cls in legend.fills.items():
            if self.wanted & set(cls):
                self.found.append(("fill", rgb, set(cls), img.within([rgb], legend.tolerance) & seed))
        own = [(rgb, cls) for rgb, cls in legend.labels.items() if self.wanted & set(cls)]
        for rgb, cls in own:
            words = explained["words"] if len(own) == 1 else text_pixels(img, [rgb], word_px, word_width)
            self.found.append(("name", rgb, set(cls), words))
        for rgb, cls in legend.marks.items():
            if self.wanted & set(cls):
                self.found.append(("name or icon", rgb, set(cls), text_pixels(img, [rgb], mark_px, 1)))
        self.reach = max(1, int(round(MARK_REACH_M / pixel_m)))
        self.min_fill_px = (FILL_SURE_M2 if min_fill_m2 is None else min_fill_m2) / pixel_m ** 2
        self.all_fill = set().union(*(c for kind, _, c, _ in self.found if kind == "fill")) or set(self.wanted)

    def judge(self, place: np.ndarray) -> tuple[bool, set[str], str]:
        """(certain, the classes the map allows, what says so) for one place's pixels."""
        ys, xs = np.nonzero(place)
        if not len(ys):
            return False, self.all_fill, ""
        r = self.reach
        sl = (slice(max(0, ys.min() - r), ys.max() + r + 1), slice(max(0, xs.min() - r), xs.max() + r + 1))
        here = place[sl]
        near = ndimage.binary_dilation(here, _disk(r))
        allowed: dict[str, set[str]] = {}
        said = []
        for kind, rgb, cls, pixels in self.found:
            part = pixels[sl]
            seen = (part & here).sum() >= self.min_fill_px if kind == "fill" else (part & near).any()
            if seen:
                allowed[kind] = allowed.get(kind, set()) | cls
                said.append(f"{kind} {'#%02x%02x%02x' % tuple(rgb)} ({', '.join(sorted(cls))})")
        if not allowed:
            return False, self.all_fill, "only traces of the fill"
        classes = set.intersection(*allowed.values()) or set.union(*allowed.values())
        certain = classes <= self.wanted
        text = " + ".join(said)
        if not certain:
            text += f": the map does not tell {', '.join(sorted(self.wanted))} from {', '.join(sorted(classes - self.wanted))} here"
        return certain, classes, text


def _grow(img: Colours, legend: Legend, cat: np.ndarray, seed: np.ndarray, words, against: np.ndarray, pixel_m: float,
          fill_reach: float | None = None, is_open: bool = False):
    """Steps 1-2 of the module docstring: the evidence and what lies nearer to it than to the evidence
    against, within its street blocks. A fill reaches less far than a label: where a place's fill
    shows, it shows wherever nothing covers it."""
    near = np.zeros(cat.shape, bool)
    by_label = np.zeros(cat.shape, bool)
    evidence = seed.copy()
    for found, reach, is_label in ((seed, fill_reach or REACH_FILL_M, False), (words, REACH_M, True)):
        if found is None or not found.any():
            continue
        # a fill's edge is wherever anything else is drawn; a label is stopped by land use only
        stop = against & ~_blends(img, legend) if is_label else against
        d_for = ndimage.distance_transform_edt(~found)
        d_against = ndimage.distance_transform_edt(~stop) if stop.any() else np.inf
        reached = (d_for < FAVOUR * d_against) & (d_for * pixel_m <= reach)
        near |= reached
        if is_label:
            by_label = reached
        evidence |= found
    near &= (cat != OUTSIDE) & (cat != BARRIER)
    if legend.units:
        # A building with the lawns and yards it touches (a house and its garden) is in the place or
        # not: it goes the way most of its pixels go.
        units, n = ndimage.label(img.within(legend.units, legend.tolerance))
        if n:
            idx = np.arange(1, n + 1)
            join = ndimage.mean(near, units, idx) >= UNIT_SHARE
            if UNIT_RING > 0 and is_open and legend.buildings and seed.any():
                # Open land (a park) holds a building only where it lies around it: a church beside
                # a park is near the park's fill but not in it, a pavilion by its pond is. Where no
                # label speaks for a building, enough of its outline must touch the fill or what
                # the park holds (water, trees, a playground), not one side of it. Lawns and yards
                # are not held to this. Schools are not open: their fill shows between their
                # buildings, often on one side only.
                walls = img.within(legend.buildings, legend.tolerance)
                building = ndimage.mean(walls, units, idx) >= 0.5
                r = max(2, int(round(2.5 / pixel_m)))
                ring = np.where(units == 0, ndimage.grey_dilation(units, footprint=_disk(r)), 0)
                # what the park holds besides its fill (a pond, trees, a playground), not the
                # outlines drawn around buildings
                held = (cat == INSIDE) & (units == 0) & ~ndimage.binary_dilation(walls, _disk(2))
                on = ndimage.binary_dilation(seed | held, _disk(1))
                around = np.bincount(ring.ravel(), minlength=n + 1)[1:]
                touched = np.bincount(ring.ravel(), weights=on.ravel(), minlength=n + 1)[1:]
                touch = np.divide(touched, around, out=np.zeros(n), where=around > 0)
                labelled = ndimage.mean(by_label, units, idx) >= UNIT_SHARE
                join &= ~building | labelled | (touch >= UNIT_RING)
            near = np.where(units > 0, np.concatenate([[False], join])[units], near)
    place = evidence | near
    # Street blocks (between barriers) without evidence stay out: a place does not cross the road.
    # Road names and icons drawn over a road must not join the blocks on either side.
    blocks, n = ndimage.label(~_close(cat == BARRIER, max(1, int(round(SEAL_M / pixel_m)))))
    has = np.zeros(n + 1, bool)
    has[np.unique(blocks[evidence])] = True
    has[0] = False
    place &= has[blocks] | evidence
    return place | (_close(place, max(1, int(round(ROAD_M / 2 / pixel_m)))) & (cat == BARRIER))


def _blends(img: Colours, legend: Legend) -> np.ndarray:
    """Per pixel: an exact neutral grey that is not itself a listed colour: in Carto the blend of a
    grey line (road casing, car-park outline) with what lies under it, never a land-use fill."""
    rgb = img.rgb
    grey = (rgb[:, 0] == rgb[:, 1]) & (rgb[:, 1] == rgb[:, 2])
    listed = {tuple(c) for group in (legend.inside, legend.outside, legend.barriers, legend.units) for c in group}
    listed |= set(legend.fills)
    for k in np.flatnonzero(grey):
        grey[k] = tuple(rgb[k].tolist()) not in listed
    return grey[img.index]


def _close(mask: np.ndarray, radius: int) -> np.ndarray:
    pad = radius + 1
    return ndimage.binary_closing(np.pad(mask, pad), _disk(radius))[pad:-pad, pad:-pad]


def group_places(mask: np.ndarray, pixel_m: float, min_px: int) -> list[np.ndarray]:
    """The places of a mask: components a few metres apart grouped, groups under `min_px` dropped."""
    gap = max(1, int(round(GROUP_M / 2 / pixel_m)))
    groups, n = ndimage.label(ndimage.binary_dilation(mask, _disk(gap)))
    labels = np.where(mask, groups, 0)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    return [labels == k for k in range(1, n + 1) if sizes[k] >= min_px]
