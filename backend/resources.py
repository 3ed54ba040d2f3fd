"""Paths of the files shipped in resources/ (the repository root is the plugin folder)."""
from __future__ import annotations

import json
import os
from functools import lru_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESOURCES = os.path.join(ROOT, "resources")
SAMPLE_DIR = os.path.join(RESOURCES, "sample")


def resource(*parts: str) -> str:
    return os.path.join(RESOURCES, *parts)


@lru_cache(maxsize=None)
def load_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
