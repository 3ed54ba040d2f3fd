"""A pytest plugin (loaded with -p in pytest.ini) that keeps pytest-qgis's QGIS profile out of the checkout.

pytest-qgis writes its profile into <rootdir>/.qgis-settings before any conftest is imported, so this
has to be a plugin named on the command line. It relies on pytest-qgis's private settings loader
(the version is pinned in requirements.txt).
"""
import tempfile
import types
from pathlib import Path

import pytest_qgis.plugin

_load_qgis_settings = pytest_qgis.plugin._load_qgis_settings


def _profile_in_temp(config):
    root = Path(tempfile.mkdtemp(prefix="socioseg-pytest-qgis-"))
    _load_qgis_settings(types.SimpleNamespace(rootpath=root, known_args_namespace=config.known_args_namespace,
                                              workerinput=getattr(config, "workerinput", None)))


pytest_qgis.plugin._load_qgis_settings = _profile_in_temp
