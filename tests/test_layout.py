"""The package shape: no Qt in the backend, no torch at plugin import time."""
import ast
import os
import subprocess
import sys

from helpers import ROOT


def _imports(folder):
    for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
        for f in files:
            if f.endswith(".py"):
                tree = ast.parse(open(os.path.join(dirpath, f), encoding="utf-8").read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        yield f, [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.module:
                        yield f, [node.module]


def test_backend_has_no_qt_or_qgis():
    bad = [(f, m) for f, mods in _imports("backend") for m in mods
           if m.split(".")[0] in ("qgis", "PyQt5", "PyQt6", "PySide2", "PySide6")]
    assert bad == []


def test_importing_backend_cli_does_not_import_torch():
    code = "import sys, backend.cli, backend.pipeline.detect, backend.engines; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr
