import configparser
import os
import subprocess
import sys
import zipfile

from helpers import ROOT


def test_plugin_zip_is_installable(tmp_path):
    out = tmp_path / "socioseg.zip"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "build_zip.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
        z.extractall(tmp_path / "plugins")
    assert {n.split("/")[0] for n in names} == {"socioseg"}
    assert "socioseg/metadata.txt" in names and "socioseg/__init__.py" in names
    assert not any(n.startswith(("socioseg/tests/", "socioseg/.venv", "socioseg/training/")) for n in names)
    assert "socioseg/resources/icon.png" in names and "socioseg/resources/style.qml" in names
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
