"""Tile masks merged across seams in a band that moves down the grid, places vectorised as they close.

Tiles arrive a tile row at a time. Once a tile row is in, every grid row above the next tile row's top
is final: those rows are labelled (4-connectivity, as before) and leave the band, which so holds at most
a tile height of full-width rows. A region that touches the last final row may go on below: it is kept
as an open piece (its own pixels, cropped) and joined to what it touches in the next rows. A place is
vectorised once nothing of it touches the last final row. The polygons, their order and their
attributes are those of merging the whole-area mask at once (tests/test_streaming.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
from scipy import ndimage

from ..geo import grid as geo
from ..geo.raster import polygons
from ..geo.vectormap import units_per_metre
from ..output.evidence import merge as merge_labels
from ..output.vectors import geodesic_area_m2

log = logging.getLogger(__name__)

NO_DATA = "no valid pixels"


@dataclass
class TileRecord:
    """What the merge needs of a finished tile (kept on disk for --resume): its mask on the tile's
    pixels (valid pixels only), the named objects' masks, and the numbers for the attributes."""
    tile: geo.Tile
    mask: np.ndarray                                    # tile-size bool
    names: list[tuple[np.ndarray, str]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_boxes1: int = 0
    n_boxes2: int = 0
    refined: bool = True

    @classmethod
    def from_result(cls, tile: geo.Tile, result, valid: np.ndarray) -> "TileRecord":
        m = result.mask_on_tile() & valid
        names = [(result.mask_on_tile(obj) & m, name) for obj, name in result.objects if name]
        return cls(tile, m, [(nm, name) for nm, name in names if nm.any()], list(result.scores),
                   list(result.notes), len(result.stage1.items), len(result.stage2.items), bool(result.refined))

    @classmethod
    def empty(cls, tile: geo.Tile) -> "TileRecord":
        """A tile with no valid pixels: nothing found, nothing contributed, nothing asked of the model
        (the note says so on disk too, for the count of answered tiles after --resume)."""
        return cls(tile, np.zeros((tile.height, tile.width), bool), notes=[NO_DATA])

    @property
    def asked(self) -> bool:
        """The tile had data, so the reasoner was asked about it."""
        return NO_DATA not in self.notes


@dataclass
class Entity:
    geometry: object
    attrs: dict


def entity_attrs(poly, parts: list[TileRecord], names, grid: geo.Grid, query: str, task: str | None,
                 reasoner_name: str, segmenter_name: str, created: str) -> dict:
    """`names`: the labels of the objects that make the place, with their pixels in it (a dict), or
    just the labels; they carry `certain` and `evidence` (backend/output/evidence.py)."""
    scores = [s for r in parts for s in r.scores]
    name, certain, evidence = merge_labels(names if isinstance(names, dict) else dict.fromkeys(names, 1))
    if not names:
        evidence = f"no object of the reasoner ({reasoner_name}) was labelled here"
    return {
        "query": query, "task": task or "", "name": name, "certain": certain, "evidence": evidence,
        "tiles": ",".join(r.tile.id for r in parts),
        "n_boxes1": sum(r.n_boxes1 for r in parts),
        "n_boxes2": sum(r.n_boxes2 for r in parts),
        "refined": all(r.refined for r in parts),
        "reasoner": reasoner_name, "segmenter": segmenter_name,
        "score": float(np.mean(scores)) if scores else None,
        "note": "; ".join(sorted({nt for r in parts for nt in r.notes})),
        "area_m2": round(geodesic_area_m2(poly, grid.crs), 1),
        "created": created,
    }


class BandMerger:
    """Feed `add(record)` every tile's record in any order; `finish()` returns the entities in the
    order a whole-area labelling gives (by each place's first pixel, row-major).

    `keep_mask` also builds the whole-area mask (for --truth and --preview), at every k-th pixel for
    keep_mask=k, so that its memory is bounded on a large area (geo.base.sample_step)."""

    def __init__(self, grid: geo.Grid, tiles: list[geo.Tile], query: str, task: str | None,
                 reasoner_name: str, segmenter_name: str, min_area_m2: float = 0.0, keep_mask: int = 0):
        self.grid, self.query, self.task = grid, query, task
        self.engines = (reasoner_name, segmenter_name)
        self.min_px = min_area_m2 * units_per_metre(grid.crs) ** 2 / grid.resolution ** 2 if min_area_m2 else 0
        self.rows: dict[int, list[geo.Tile]] = {}
        for t in tiles:
            self.rows.setdefault(t.row, []).append(t)
        self.order = sorted(self.rows)
        self.waiting: dict[int, dict[int, TileRecord]] = {}   # tile row -> col -> record, until complete
        self.next_row = 0                                     # index into self.order
        self.band = np.zeros((0, grid.width), bool)
        self.b0 = 0                                           # grid row of the band's first row
        self.live: list[TileRecord] = []                      # records that reach into the band
        self.pieces: list[tuple[int, int, np.ndarray]] = []   # open places above the band: (row, col, mask)
        self.found: list[tuple[tuple[int, int], Entity]] = []
        self.mask_step = int(keep_mask)
        k = self.mask_step
        self.mask = np.zeros((-(-grid.height // k), -(-grid.width // k)), bool) if k else None
        self.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.dropped = 0
        self.asked = 0               # tiles with data, so put to the reasoner
        self.answered = 0            # of those, tiles whose stage-2 answer was usable
        self.unanswered_notes: dict[str, int] = {}   # why the others were not, by note

    def add(self, record: TileRecord) -> None:
        if record.asked:
            self.asked += 1
            if record.refined:
                self.answered += 1
            else:
                for note in record.notes:
                    self.unanswered_notes[note] = self.unanswered_notes.get(note, 0) + 1
        self.waiting.setdefault(record.tile.row, {})[record.tile.col] = record
        while self.next_row < len(self.order):
            r = self.order[self.next_row]
            got = self.waiting.get(r, {})
            if len(got) < len(self.rows[r]):
                return
            del self.waiting[r]
            self.next_row += 1
            self._add_row([got[t.col] for t in self.rows[r]])

    def _add_row(self, records: list[TileRecord]) -> None:
        bottom = max(r.tile.y0 + r.tile.height for r in records)
        if bottom > self.b0 + len(self.band):
            grow = np.zeros((bottom - self.b0 - len(self.band), self.grid.width), bool)
            self.band = np.concatenate([self.band, grow])
        for rec in records:
            t = rec.tile
            self.band[t.y0 - self.b0:t.y0 - self.b0 + t.height, t.x0:t.x0 + t.width] |= rec.mask
            if rec.mask.any():
                self.live.append(rec)
        nxt = self.order[self.next_row] if self.next_row < len(self.order) else None
        final = self.rows[nxt][0].y0 if nxt is not None else self.grid.height
        self._close(final, last=nxt is None)

    def _close(self, final: int, last: bool) -> None:
        """Vectorise the regions that are whole once the rows above `final` are final."""
        n = final - self.b0            # the band starts at the previous `final`
        if n <= 0:
            return
        labels, count = ndimage.label(self.band[:n])
        slices = ndimage.find_objects(labels)
        # Union-find over this band's regions (1..count) and the open pieces above (count+1+i): a piece's
        # bottom row is the row just above the band, so it joins the regions it touches across it.
        parent = list(range(count + 1 + len(self.pieces)))

        def find(i):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i, (r0, c0, m) in enumerate(self.pieces):
            for lab in np.unique(labels[0, c0:c0 + m.shape[1]][m[-1]]):
                if lab:
                    parent[find(count + 1 + i)] = find(int(lab))
        still_open = set() if last else {find(int(k)) for k in np.unique(labels[n - 1]) if k}
        groups: dict[int, list[int]] = {}
        for i in range(1, len(parent)):
            if i > count or slices[i - 1] is not None:
                groups.setdefault(find(i), []).append(i)
        pieces = []
        for root, members in groups.items():
            boxes = [(self.pieces[i - count - 1][0], self.pieces[i - count - 1][1],
                      *self.pieces[i - count - 1][2].shape) if i > count else
                     (self.b0 + slices[i - 1][0].start, slices[i - 1][1].start,
                      slices[i - 1][0].stop - slices[i - 1][0].start, slices[i - 1][1].stop - slices[i - 1][1].start)
                     for i in members]
            r0, c0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
            comp = np.zeros((max(b[0] + b[2] for b in boxes) - r0, max(b[1] + b[3] for b in boxes) - c0), bool)
            for i, (br, bc, bh, bw) in zip(members, boxes):
                part = self.pieces[i - count - 1][2] if i > count else labels[slices[i - 1]] == i
                comp[br - r0:br - r0 + bh, bc - c0:bc - c0 + bw] |= part
            if root in still_open:
                pieces.append((r0, c0, comp))
            else:
                self._emit(comp, r0, c0)
        # The final rows leave the band; open places keep only their own pixels (cropped), and the
        # tiles above every open place are no longer needed for attributes.
        self.pieces = pieces
        self.band = self.band[n:].copy()
        self.b0 = final
        top = min([r0 for r0, _, _ in pieces] + [self.b0])
        self.live = [r for r in self.live if r.tile.y0 + r.tile.height > top]

    def _emit(self, comp: np.ndarray, r0: int, c0: int) -> None:
        area = int(comp.sum())
        if area < self.min_px:
            self.dropped += 1
            return
        h, w = comp.shape
        first = (r0, c0 + int(np.argmax(comp[0])))
        parts, names = [], {}
        for rec in self.live:
            t = rec.tile
            ys, ye = max(r0, t.y0), min(r0 + h, t.y0 + t.height)
            xs, xe = max(c0, t.x0), min(c0 + w, t.x0 + t.width)
            if ys >= ye or xs >= xe:
                continue
            here = comp[ys - r0:ye - r0, xs - c0:xe - c0]
            tsl = (slice(ys - t.y0, ye - t.y0), slice(xs - t.x0, xe - t.x0))
            if (rec.mask[tsl] & here).any():
                parts.append(rec)
                for nm, name in rec.names:
                    n = int((nm[tsl] & here).sum())
                    if n:
                        names[name] = names.get(name, 0) + n
        parts.sort(key=lambda rec: (rec.tile.row, rec.tile.col))
        if self.mask is not None:     # every k-th pixel of the whole-area mask
            k = self.mask_step
            i0, j0 = -(-r0 // k), -(-c0 // k)
            sub = comp[i0 * k - r0::k, j0 * k - c0::k]
            self.mask[i0:i0 + sub.shape[0], j0:j0 + sub.shape[1]] |= sub
        (geom, _), = polygons(comp.astype(np.int32), self.grid.transform, origin=(r0, c0))
        poly = geom.simplify(0.5 * self.grid.resolution, preserve_topology=True)
        if poly.is_empty:
            return
        attrs = entity_attrs(poly, parts, names, self.grid, self.query, self.task, *self.engines, self.created)
        self.found.append((first, Entity(poly, attrs)))

    def finish(self) -> list[Entity]:
        if self.next_row < len(self.order):
            missing = sum(len(self.rows[r]) - len(self.waiting.get(r, {})) for r in self.order[self.next_row:])
            raise RuntimeError(f"merge finished with {missing} tile(s) never added")
        if self.dropped:
            log.info("dropped %d region(s) under the minimum place area", self.dropped)
        return [e for _, e in sorted(self.found, key=lambda item: item[0])]
