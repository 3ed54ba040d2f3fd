"""What a query asks for: a name, a SocioSeg class, or a SocioSeg function, with its OSM tags."""
from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass, field

from ..contract import TASK_LEVELS
from ..errors import InputError
from ..resources import load_json, resource

_LEAD = re.compile(r"^(please\s+)?(find|show|detect|locate|segment|search for|where are|where is|get)\s+(me\s+)?"
                   r"(all\s+)?(the\s+)?", re.I)


def normalise(text: str) -> str:
    """Lower case, accents stripped, punctuation folded to spaces; for forgiving comparisons."""
    t = unicodedata.normalize("NFKD", text)
    t = "".join(c for c in t if not unicodedata.combining(c)).casefold()
    t = t.replace("&", " and ")
    t = re.sub(r"[^\w\s]", " ", t)
    return re.sub(r"\s+", " ", t).strip()


def _singulars(word_phrase: str) -> list[str]:
    words = word_phrase.split(" ")
    last = words[-1]
    forms = [word_phrase]
    for suffix, repl in (("ies", "y"), ("es", ""), ("s", "")):
        if last.endswith(suffix) and len(last) > len(suffix) + 2:
            forms.append(" ".join(words[:-1] + [last[: -len(suffix)] + repl]))
    return forms


@dataclass
class QuerySpec:
    text: str                        # the query as the user wrote it
    kind: str                        # "name", "class" or "function"
    classes: list[str] = field(default_factory=list)
    tags: dict[str, set[str]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.text if self.kind == "name" else ", ".join(self.classes)

    def matches_tags(self, props: dict) -> bool:
        for key, values in self.tags.items():
            v = props.get(key)
            if v is not None and str(v).strip().lower() in values:
                return True
        return False


def _table():
    return load_json(resource("socio_classes.json"))


def class_tags(classes: list[str]) -> dict[str, set[str]]:
    table = _table()["classes"]
    tags: dict[str, set[str]] = {}
    for c in classes:
        for key, values in table[c]["tags"].items():
            tags.setdefault(key, set()).update(values)
    return tags


def _lookup(kind_key: str, phrase: str) -> str | None:
    entries = _table()[kind_key]
    for form in _singulars(phrase):
        for name, entry in entries.items():
            if form == normalise(name) or form in {normalise(s) for s in entry.get("synonyms", [])}:
                return name
    return None


def canonical_class(phrase: str) -> str | None:
    """The class table's name for a class word, its synonyms and plurals included ('colleges' ->
    'university'), or None."""
    return _lookup("classes", normalise(phrase)) if phrase and phrase.strip() else None


def known_terms() -> list[str]:
    t = _table()
    return sorted(list(t["classes"]) + list(t["functions"]))


def resolve_query(query: str, task: str | None = None) -> QuerySpec:
    """Interpret a query; `task` (name / class / function) forces the interpretation."""
    if not query or not query.strip():
        raise InputError("the query is empty: give a class (school), a function (educational) or a name")
    if task is not None and task not in TASK_LEVELS:
        raise InputError(f"unknown task level {task!r}: use one of {', '.join(TASK_LEVELS)}")
    phrase = normalise(_LEAD.sub("", query.strip()))
    if task == "name":
        return QuerySpec(query.strip(), "name")
    if task in (None, "function"):
        fn = _lookup("functions", phrase)
        if fn:
            classes = list(_table()["functions"][fn]["classes"])
            return QuerySpec(query.strip(), "function", classes, class_tags(classes))
    if task in (None, "class"):
        cls = _lookup("classes", phrase)
        if cls:
            return QuerySpec(query.strip(), "class", [cls], class_tags([cls]))
    if task is None:
        return QuerySpec(query.strip(), "name")
    close = difflib.get_close_matches(phrase, [normalise(t) for t in known_terms()], n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise InputError(f"{query!r} is not a known SocioSeg {task} for the map reader.{hint} Known terms are "
                     "listed in resources/socio_classes.json; for anything else use the vision-language "
                     "reasoner (--reasoner qwen).")


def name_score(query: str, name: str) -> float:
    """How well a feature name answers a name query, 0..1 (exact 1, all words 0.9, substring 0.8)."""
    q, n = normalise(query), normalise(name)
    if not q or not n:
        return 0.0
    if q == n:
        return 1.0
    if set(q.split()) <= set(n.split()):
        return 0.9
    if q in n:
        return 0.8
    ratio = difflib.SequenceMatcher(None, q, n).ratio()
    return 0.7 * ratio if ratio >= 0.75 else 0.0
