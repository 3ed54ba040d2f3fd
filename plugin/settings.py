"""Plugin settings in QgsSettings, and the engine specs they stand for."""
from __future__ import annotations

from dataclasses import dataclass, fields

from qgis.core import QgsSettings

from ..backend.contract import OUTLINES
from ..backend.geo.tiles import DEFAULT_MAX_TILES, DEFAULT_OVERLAP, DEFAULT_TILE

PREFIX = "socioseg/"
ENGINE_DEFAULT = "default"
ENGINE_VLM = "vlm"
VLM_LOCAL = "local"       # the vision-language model runs in the worker (qwen:MODEL)
VLM_SERVER = "server"     # ... on a model server (openai:URL); see server_settings.py


@dataclass
class PluginSettings:
    vlm_model: str = "vvangfaye/SocioReasoner-3B"
    segmenter: str = "sam2:facebook/sam2-hiera-large"
    device: str = "auto"
    outline: str = "map"       # the map reader's outlines ("map") or the segmenter's cut ("image")
    max_new_tokens: int = 2048
    greedy: bool = False       # default: the released evaluation's sampling
    seed: int = -1             # >= 0 makes a sampled run repeatable; -1: none
    resolution: float = 1.0
    tile_size: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    max_tiles: int = DEFAULT_MAX_TILES
    replace_previous: bool = True
    python: str = ""       # interpreter of the backend worker; empty: the plugin's .venv or QGIS's Python
    results_folder: str = ""   # where result GeoPackages go; empty: the project's folder
    vlm_where: str = VLM_LOCAL
    server_url: str = ""       # e.g. http://gpu-box:8000/v1
    server_model: str = ""     # the served model's name; empty: the one the server lists
    server_concurrency: int = 4
    server_authcfg: str = ""   # id of a QgsAuthManager config holding the API key (never the key itself)
    confirm_seconds: float = 120.0   # runs estimated longer than this are confirmed first
    confirm_tiles: int = 20          # ... and runs of this many tiles with an engine not timed here

    @classmethod
    def load(cls) -> "PluginSettings":
        s = QgsSettings()
        out = cls()
        for f in fields(cls):
            default = getattr(out, f.name)
            value = s.value(PREFIX + f.name, default)
            try:
                if isinstance(default, bool):
                    value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
                else:
                    value = type(default)(value)
            except (TypeError, ValueError):
                value = default
            setattr(out, f.name, value)
        if out.outline not in OUTLINES:      # a value saved by hand or by another version
            out.outline = cls.outline
        return out

    def save(self) -> None:
        s = QgsSettings()
        for f in fields(self):
            s.setValue(PREFIX + f.name, getattr(self, f.name))

    def tile_plan(self):
        from ..backend.contract import TilePlan

        return TilePlan(self.tile_size, self.overlap, self.max_tiles)

    def generation(self) -> dict:
        """Generation settings for the reasoner (fields of reasoners.qwen.GenerationSettings)."""
        return {"max_new_tokens": self.max_new_tokens, "do_sample": not self.greedy,
                "seed": self.seed if self.seed >= 0 else None}

    def engine_specs(self, engine: str) -> tuple[str, str]:
        """(reasoner spec, segmenter spec) for the panel's engine choice."""
        if engine == ENGINE_VLM:
            if self.vlm_where == VLM_SERVER:
                return f"openai:{self.server_url.strip()}", self.segmenter
            return f"qwen:{self.vlm_model}", self.segmenter
        return "mapreader", "grabcut"

    def server_options(self) -> dict:
        """The request's model-server options (contract.SERVER_KEYS); the key goes in the environment."""
        return {"model": self.server_model.strip() or None, "concurrency": self.server_concurrency}
