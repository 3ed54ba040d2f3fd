"""Build the plugin zip that QGIS's "Install from ZIP" accepts: dist/socioseg.zip with one folder.

    .venv/bin/python scripts/build_zip.py [--out dist/socioseg.zip]

An ALLOW-list, not a deny-list: only tracked files (git ls-files) that a user's QGIS needs go in, so
tests, training, benchmarks, developer scripts, caches, a pytest-qgis profile or anything a developer
leaves in the tree can never slip into a release.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "socioseg"

# What the installed plugin uses: QGIS reads metadata.txt and __init__.py; the panel and the worker
# import plugin/ and backend/; resources/ holds the icon, style, class table, legends and the sample;
# the environment manager installs the two requirements files; the Help button opens the README.
ALLOW = ["metadata.txt", "__init__.py", "README.md", "LICENSE", "requirements-plugin.txt",
         "requirements-models.txt", "plugin/*.py", "backend/*.py", "backend/*/*.py", "resources/*"]


def allowed(path: str) -> bool:
    # fnmatch's "*" crosses "/", so "plugin/*.py" must be kept from matching deeper folders by hand
    if "__pycache__" in path or path.endswith((".pyc", ".pyo")):
        return False
    for pattern in ALLOW:
        if fnmatch.fnmatch(path, pattern) and (pattern.endswith("/*") or path.count("/") == pattern.count("/")):
            return True
    return False


def plugin_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return sorted(f for f in out.splitlines() if allowed(f) and os.path.isfile(os.path.join(ROOT, f)))


def build(out: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".part"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for f in plugin_files():
            z.write(os.path.join(ROOT, f), f"{PACKAGE}/{f}")
    os.replace(tmp, out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "dist", f"{PACKAGE}.zip"))
    args = ap.parse_args()
    path = build(args.out)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
