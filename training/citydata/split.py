"""A spatial train / val / test split of a tile grid, with a gap between the splits.

Neighbouring tiles of a city share places (a park across two tiles), roofs and streets: a random
split by tile lets the model meet test places in training. Tiles are therefore grouped in square blocks
of `block` x `block` tiles; the blocks, taken in a serpentine order (so that consecutive blocks touch),
are cut into runs that go to train, val and test by the ratios. Where two tiles of different splits
touch (8-neighbourhood), one of them is dropped as a gap: the tile of the split that can best spare it
(train before test before val). Kept tiles of different splits are then at least one whole tile apart.

Plain Python: the QGIS plugin plans with it too.
"""
from __future__ import annotations

import math

SPLITS = ("train", "val", "test")
DEFAULT_RATIOS = (0.6, 0.1, 0.3)          # SocioSeg's 6:1:3
# Which split gives up a tile where two splits touch: the lower rank goes.
DROP_RANK = {"train": 0, "test": 1, "val": 2}
GROUP_BLOCKS = 10                          # blocks per run of train, val, test (6:1:3 is exact at 10)
MAX_BLOCK = 8


class SplitError(ValueError):
    """The grid is too small for three splits with gaps."""


def serpentine(rows: int, cols: int) -> list[tuple[int, int]]:
    return [(r, c) for r in range(rows) for c in (range(cols) if r % 2 == 0 else range(cols - 1, -1, -1))]


def _counts(n: int, ratios) -> list[int]:
    """Blocks per split in a run of `n`: by largest remainder, at least one each when n >= 3."""
    total = sum(ratios)
    raw = [n * r / total for r in ratios]
    counts = [int(math.floor(x)) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])[: n - sum(counts)]:
        counts[i] += 1
    if n >= len(ratios):
        for i in range(len(counts)):
            while counts[i] == 0:
                j = max(range(len(counts)), key=lambda k: counts[k])
                counts[j] -= 1
                counts[i] += 1
    return counts


def assign(rows: int, cols: int, block: int, ratios=DEFAULT_RATIOS) -> dict[tuple[int, int], str | None]:
    """Split of every tile (row, col): 'train', 'val', 'test', or None for a gap tile."""
    nbr, nbc = math.ceil(rows / block), math.ceil(cols / block)
    order = serpentine(nbr, nbc)
    groups = max(1, round(len(order) / GROUP_BLOCKS))
    block_split: dict[tuple[int, int], str] = {}
    for g in range(groups):
        run = order[g * len(order) // groups:(g + 1) * len(order) // groups]
        k = 0
        for split, n in zip(SPLITS, _counts(len(run), ratios)):
            for b in run[k:k + n]:
                block_split[b] = split
            k += n
    first = {(r, c): block_split[(r // block, c // block)] for r in range(rows) for c in range(cols)}
    out: dict[tuple[int, int], str | None] = {}
    for (r, c), s in first.items():
        drop = False
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                o = first.get((r + dr, c + dc))
                if o is not None and o != s and DROP_RANK[o] > DROP_RANK[s]:
                    drop = True
        out[(r, c)] = None if drop else s
    return out


def _score(split: dict, ratios) -> float:
    """How large a dataset of these ratios the kept tiles make (0 when a split is empty)."""
    n = {s: sum(1 for v in split.values() if v == s) for s in SPLITS}
    return min(n[s] / r for s, r in zip(SPLITS, ratios) if r > 0)


def plan(rows: int, cols: int, ratios=DEFAULT_RATIOS, block: int | None = None
         ) -> tuple[dict[tuple[int, int], str | None], int]:
    """(split of every tile, block size). `block` None: the size that keeps the largest dataset with
    all three splits (ties: the larger block, for fewer borders between splits)."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0 or min(ratios) <= 0:
        raise SplitError(f"split ratios {tuple(ratios)} must be three positive numbers (train val test)")
    sizes = [block] if block else range(1, min(MAX_BLOCK, max(rows, cols)) + 1)
    best = None
    for b in sizes:
        split = assign(rows, cols, b, ratios)
        score = _score(split, ratios)
        if score > 0 and (best is None or score >= best[0]):
            best = (score, split, b)
    if best is None:
        what = f"--block-tiles {block}" if block else "any block size"
        raise SplitError(f"a grid of {cols} x {rows} tiles cannot hold train, val and test with a one-tile "
                         f"gap between them ({what}): give a larger area, a finer --resolution, a smaller "
                         "--tile-size or a smaller --block-tiles")
    return best[1], best[2]


def min_gap_tiles(split: dict[tuple[int, int], str | None]) -> int | None:
    """The fewest whole tiles between two kept tiles of different splits (None: no such pair)."""
    kept = [(rc, s) for rc, s in split.items() if s is not None]
    best = None
    for i, ((r1, c1), s1) in enumerate(kept):
        for (r2, c2), s2 in kept[i + 1:]:
            if s1 != s2:
                d = max(abs(r1 - r2), abs(c1 - c2)) - 1
                best = d if best is None else min(best, d)
    return best
