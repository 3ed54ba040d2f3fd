"""A pytest plugin (loaded with -p in pytest.ini) that keeps pytest-qgis's QGIS profile out of the checkout
and lets QGIS start without a display.

pytest-qgis writes its profile into <rootdir>/.qgis-settings before any conftest is imported, so this
has to be a plugin named on the command line. It relies on pytest-qgis's private settings loader
(the version is pinned in requirements.txt).
"""
import os
import tempfile
import types
from pathlib import Path

# pytest-qgis starts QGIS before any conftest runs, so a display-less shell (`pytest tests/test_x.py`
# over ssh, CI) would abort in Qt's xcb plugin before conftest.py could choose the platform. Set it
# here, as conftest.py does; an explicit QT_QPA_PLATFORM (e.g. xcb to watch a canvas) still wins.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest_qgis.plugin  # noqa: E402

_load_qgis_settings = pytest_qgis.plugin._load_qgis_settings


def _profile_in_temp(config):
    root = Path(tempfile.mkdtemp(prefix="socioseg-pytest-qgis-"))
    _load_qgis_settings(types.SimpleNamespace(rootpath=root, known_args_namespace=config.known_args_namespace,
                                              workerinput=getattr(config, "workerinput", None)))


pytest_qgis.plugin._load_qgis_settings = _profile_in_temp
