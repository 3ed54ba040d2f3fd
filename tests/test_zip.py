import configparser
import os
import subprocess
import sys
import zipfile

import pytest

from helpers import ROOT

# What a user's QGIS needs, stated here independently of the builder's own allow-list.
TOP_LEVEL = {"metadata.txt", "__init__.py", "README.md", "requirements-plugin.txt", "requirements-models.txt"}
MUST_HAVE = {"plugin/main.py", "plugin/environment.py", "plugin/models.py", "backend/worker.py",
             "backend/cli.py", "backend/download.py", "resources/icon.png", "resources/style.qml",
             "resources/socio_classes.json", "resources/legends/osm_carto.json", "resources/sample/map.gpkg",
             "resources/sample/satellite.tif"}
NEVER = ("tests/", "training/", "benchmarks/", "scripts/", "docs/", ".ci/", ".qgis-settings/", ".venv/",
         "dist/", "out/", "models/")


def tracked() -> list[str]:
    """The last commit's files: the ZIP is built from HEAD, never from half-done working-tree edits."""
    return subprocess.run(["git", "ls-tree", "-r", "--name-only", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.split()


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory):
    out = tmp_path_factory.mktemp("zip") / "socioseg.zip"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "build_zip.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def test_zip_holds_exactly_what_the_plugin_needs(built_zip):
    with zipfile.ZipFile(built_zip) as z:
        names = z.namelist()
    assert len(names) == len(set(names))
    assert all(n.startswith("socioseg/") for n in names)
    inner = {n[len("socioseg/"):] for n in names}
    files = tracked()
    expected = (TOP_LEVEL & set(files)) | {f for f in files if f.startswith(("plugin/", "backend/")) and f.endswith(".py")} \
        | {f for f in files if f.startswith("resources/")}
    assert inner == expected, {"unexpected": sorted(inner - expected), "missing": sorted(expected - inner)}
    assert MUST_HAVE <= inner, sorted(MUST_HAVE - inner)
    assert TOP_LEVEL <= inner, sorted(TOP_LEVEL - inner)
    assert not [n for n in inner if n.startswith(NEVER) or "__pycache__" in n or n.endswith(".pyc")]
    with zipfile.ZipFile(built_zip) as z:      # the committed bytes, not the working tree's
        head = subprocess.run(["git", "show", "HEAD:plugin/environment.py"], cwd=ROOT, capture_output=True,
                              check=True).stdout
        assert z.read("socioseg/plugin/environment.py") == head


def test_plugin_zip_is_installable(built_zip, tmp_path):
    with zipfile.ZipFile(built_zip) as z:
        z.extractall(tmp_path / "plugins")
    meta = configparser.ConfigParser()
    meta.read(tmp_path / "plugins" / "socioseg" / "metadata.txt")
    g = meta["general"]
    for key in ("name", "description", "about", "version", "qgisMinimumVersion", "author", "email",
                "tracker", "repository", "icon", "tags", "changelog"):
        assert g.get(key), key
    assert g["qgisMinimumVersion"] == "3.22" and g["hasProcessingProvider"] == "yes"
    assert (tmp_path / "plugins" / "socioseg" / g["icon"]).exists()
    code = ("import sys; sys.path.insert(0, %r); import socioseg, socioseg.plugin.main; "
            "print(callable(socioseg.classFactory))" % str(tmp_path / "plugins"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert r.stdout.strip() == "True", r.stderr
