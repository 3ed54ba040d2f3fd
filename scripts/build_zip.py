"""Build the plugin zip that QGIS's "Install from ZIP" accepts: dist/socioseg.zip with one folder.

    .venv/bin/python scripts/build_zip.py [--out dist/socioseg.zip]

Only tracked files go in (git ls-files), minus what QGIS does not need: tests, training, benchmarks,
scripts, CI files.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "socioseg"
EXCLUDE_TOP = {"tests", "training", "benchmarks", "scripts", ".ci", ".gitignore", "pytest.ini", "docs"}


def plugin_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if f.split("/")[0] not in EXCLUDE_TOP and "__pycache__" not in f]


def build(out: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".part"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for f in plugin_files():
            z.write(os.path.join(ROOT, f), f"{PACKAGE}/{f}")
    os.replace(tmp, out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(ROOT, "dist", f"{PACKAGE}.zip"))
    args = ap.parse_args()
    path = build(args.out)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
