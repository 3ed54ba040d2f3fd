"""Scoring a detection against a ground-truth vector file (name / class / function fields)."""
from __future__ import annotations

import numpy as np

from ..pipeline.query import canonical_class, name_score, normalise, resolve_query
from ..geo.raster import rasterize
from ..geo.vectormap import VectorMap


def truth_mask_for(path: str, grid, query: str, task: str | None) -> np.ndarray:
    spec = resolve_query(query, task)
    vmap = VectorMap.read(path, grid.crs)
    wanted = {normalise(c) for c in spec.classes}
    geoms = []
    for f in vmap.features:
        if spec.kind == "name":
            ok = name_score(query, f.name) >= 0.8
        else:
            # a truth file may use the table's synonyms ('college' is the class university)
            label = str(f.props.get("class") or "")
            ok = normalise(canonical_class(label) or label) in wanted
        if ok:
            geoms.append(f.geometry)
    if not geoms:
        return np.zeros((grid.height, grid.width), bool)
    return rasterize(geoms, (grid.height, grid.width), grid.transform)
