"""How sure the map is of each place: the `certain` and `evidence` output fields.

A reasoner's per-object label carries them to the merge as one string (`tag`), so that they travel
unchanged through the stages, the tile dumps and --resume's JSON, which all keep labels as text.
`certain` is 1 where the map itself tells the asked class apart (a tag of the class on a vector map; on
a raster map a fill no other class shares, or a name or icon in a colour only the asked classes use),
0 where only something shared with other classes says it: such a place is named by what the map does
say ("educational or medical site"), never as the class asked for.
"""
from __future__ import annotations

SEP = "\x1f"     # ASCII unit separator: never part of a map's names


def tag(name: str, certain: bool, evidence: str) -> str:
    return f"{name}{SEP}{int(bool(certain))}{SEP}{evidence}"


def split(label: str) -> tuple[str, int | None, str]:
    """(name, certain, evidence) of a label; a plain label (a model's answer) has certain None."""
    parts = str(label).split(SEP)
    if len(parts) != 3 or parts[1] not in ("0", "1"):
        return str(label), None, ""
    return parts[0], int(parts[1]), parts[2]


def site_name(classes) -> str:
    """What a set of classes the map cannot tell apart is: their functions ('educational or medical
    site'), or the classes themselves where no function holds them."""
    from ..pipeline.query import _table

    functions = _table()["functions"]
    names = [f for f, spec in functions.items() if set(spec["classes"]) & set(classes)]   # the table's order
    names += sorted(c for c in classes if not any(c in spec["classes"] for spec in functions.values()))
    return " or ".join(names) + " site"


def merge(parts: dict[str, int]) -> tuple[str, int, str]:
    """(name, certain, evidence) of one output place from its objects' labels and their pixel counts:
    certain where most of what is labelled is certain; names and evidence joined."""
    read = [(split(label), n) for label, n in parts.items() if label]
    judged = [(c, n) for (_, c, _), n in read if c is not None]
    if not judged:
        return "; ".join(sorted({name for (name, _, _), _ in read if name})), 0, \
            "no map evidence recorded (the reasoner's own answer)"
    sure = sum(n for c, n in judged if c) >= 0.5 * sum(n for _, n in judged) if any(n for _, n in judged) \
        else any(c for c, _ in judged)
    # A place read in several pieces (tiles, map blocks) is named and explained by the side that decided
    # it, so a certain place is never also called 'educational or medical site'.
    side = [(name, e) for (name, c, e), _ in read if c is None or c == int(sure)]
    names = sorted({name for name, _ in side if name})
    evidence = "; ".join(sorted({e for _, e in side if e}))
    return "; ".join(names), int(sure), evidence
