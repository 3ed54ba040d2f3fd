"""Build the plugin zip that QGIS's "Install from ZIP" accepts: dist/socioseg.zip with one folder.

    python3 scripts/build_zip.py [--out dist/socioseg.zip] [--worktree]

An ALLOW-list, not a deny-list: only committed files that a user's QGIS needs go in, so tests, training,
benchmarks, developer scripts, caches, a pytest-qgis profile or anything a developer leaves in the tree
can never slip into a release. The files come from the last commit (git archive HEAD), so a ZIP is always
a consistent snapshot even while the working tree has half-done edits; `--worktree` takes the working
tree's copies of the tracked files instead (to try uncommitted changes in QGIS).
"""
from __future__ import annotations

import argparse
import fnmatch
import io
import os
import subprocess
import sys
import tarfile
import time
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


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=True).stdout


def plugin_files(worktree: bool = False) -> list[str]:
    listing = _git("ls-files") if worktree else _git("ls-tree", "-r", "--name-only", "HEAD")
    files = [f for f in listing.decode().splitlines() if allowed(f)]
    return sorted(f for f in files if not worktree or os.path.isfile(os.path.join(ROOT, f)))


def build(out: str, worktree: bool = False) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    files = plugin_files(worktree)
    tmp = out + ".part"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        if worktree:
            for f in files:
                z.write(os.path.join(ROOT, f), f"{PACKAGE}/{f}")
        else:
            with tarfile.open(fileobj=io.BytesIO(_git("archive", "--format=tar", "HEAD", "--", *files))) as tar:
                for member in sorted(tar.getmembers(), key=lambda m: m.name):
                    if member.isfile():
                        info = zipfile.ZipInfo(f"{PACKAGE}/{member.name}", time.localtime(member.mtime)[:6])
                        info.external_attr = (member.mode & 0o777) << 16
                        info.compress_type = zipfile.ZIP_DEFLATED
                        z.writestr(info, tar.extractfile(member).read())
    os.replace(tmp, out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "dist", f"{PACKAGE}.zip"))
    ap.add_argument("--worktree", action="store_true",
                    help="use the working tree's copies of the tracked files instead of the last commit")
    args = ap.parse_args()
    path = build(args.out, args.worktree)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
