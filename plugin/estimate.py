"""Before a long run: the tile count and the estimated time, confirmed by the user.

Memory no longer limits the area (tiles are rendered, read and merged window by window); time does. So
instead of refusing large areas, the panel says how long a run will take and asks. Settings > Max tiles
stays the hard limit. The estimate comes from backend/geo/tiles.py (plain Python: no Qt, no torch),
measured per engine on this project's machines; an engine without a measurement is asked about by its
tile count, and the progress bar gives its rate once it runs.
"""
from __future__ import annotations

import math

from qgis.PyQt.QtWidgets import QCheckBox, QMessageBox

from ..backend.contract import format_duration
from ..backend.geo.tiles import estimate_seconds
from .settings import PluginSettings


def planned_tiles(params) -> int:
    """Tiles the run will have (the capture plans the same grid); raises InputError over Max tiles."""
    from .capture import plan_grid

    grid = plan_grid(params.extent, params.crs, params.resolution)
    return len(params.tile_plan.layout(grid.width, grid.height))


def question(n_tiles: int, reasoner: str, settings: PluginSettings) -> tuple[str, float | None] | None:
    """(the question's text, the estimate in seconds or None) when this run needs a confirmation."""
    kind = reasoner.partition(":")[0]
    seconds = estimate_seconds(n_tiles, kind)
    if seconds is not None:
        if seconds <= settings.confirm_seconds:
            return None
        return (f"This Area needs {n_tiles} tiles: about {format_duration(seconds)} with this Engine (measured on "
                "a 2-core CPU; a faster machine takes less).", seconds)
    if n_tiles < settings.confirm_tiles:
        return None
    return (f"This Area needs {n_tiles} tiles. The time per tile of this Engine was not measured here; the "
            "progress shows the tiles per second and the time left after the first tiles.", None)


def confirm_run(parent, n_tiles: int, reasoner: str, settings: PluginSettings) -> bool:
    """True to go ahead: at once for short runs, else when the user answers Run. 'Don't ask again for runs
    up to this size' raises the threshold in the Settings."""
    asked = question(n_tiles, reasoner, settings)
    if asked is None:
        return True
    text, seconds = asked
    box = QMessageBox(QMessageBox.Question, "SocioSeg: start a long run?",
                      text + " QGIS stays usable meanwhile, and Cancel stops the run.", parent=parent)
    box.setInformativeText("A smaller Area or a coarser Resolution needs fewer tiles.")
    box.setStandardButtons(QMessageBox.Yes | QMessageBox.No)
    box.button(QMessageBox.Yes).setText("Run")
    box.setDefaultButton(QMessageBox.Yes)
    again = QCheckBox(f"Don't ask again for runs up to {format_duration(seconds) if seconds else f'{n_tiles} tiles'}")
    box.setCheckBox(again)
    if box.exec_() != QMessageBox.Yes:
        return False
    if again.isChecked():
        saved = PluginSettings.load()
        if seconds is not None:
            saved.confirm_seconds = settings.confirm_seconds = float(math.ceil(seconds))
        else:
            saved.confirm_tiles = settings.confirm_tiles = n_tiles + 1
        saved.save()
    return True
