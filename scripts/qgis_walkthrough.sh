#!/usr/bin/env bash
# The plugin as a new user meets it, in real QGIS under Xvfb: an EMPTY profile, the ZIP installed the way
# "Install from ZIP" does, NO prepared Python environment (QGIS's own Python only), Run -> the set-up
# offer -> Yes -> the plugin makes its environment and installs requirements-plugin.txt from PyPI -> the
# detection runs -> the sample's three schools, from the three layers of map.gpkg (one school is only a
# point) -> Export… as a Shapefile to OUT/export/schools.shp through the save dialog. Screenshots and
# summary.json go to OUT (default out/walkthrough); exit code 0 = all three found and exported.
#
#   bash scripts/qgis_walkthrough.sh [OUT]         (ZIP_ARGS=--worktree: the ZIP from uncommitted edits)
#
# Needs the QGIS desktop (Debian package `qgis`, installed here when run as root) and xvfb; network access
# to PyPI for the environment. Nothing of the developer's .venv is used.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(realpath -m "${1:-$root/out/walkthrough}")"
if ! command -v qgis >/dev/null || ! command -v xvfb-run >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qgis xvfb python3-venv >/dev/null
  else
    echo "QGIS desktop missing: sudo apt-get install -y --no-install-recommends qgis xvfb python3-venv" >&2; exit 1
  fi
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rm -rf "$out" && mkdir -p "$out"
# the ZIP a user downloads; built by the system Python (the builder needs only the standard library and git)
/usr/bin/python3 "$root/scripts/build_zip.py" --out "$work/socioseg.zip" ${ZIP_ARGS:-}
unzip -l "$work/socioseg.zip" > "$out/zip_contents.txt"
profiles="$work/profiles"
mkdir -p "$profiles/profiles/default/QGIS"
# an empty profile, only the first-start tips and the network plugin check switched off
cat > "$profiles/profiles/default/QGIS/QGIS3.ini" <<INI
[qgis]
checkVersion=false
showTips322=false
[UI]
hideTipsDialog=true
[app]
plugin_installer\checkOnStart=false
plugin_installer\allowExperimental=false
INI
# QGIS must not see any developer environment
unset VIRTUAL_ENV PYTHONPATH PYTHONHOME
export SOCIOSEG_ZIP="$work/socioseg.zip" SOCIOSEG_SAMPLE="$root/resources/sample" SOCIOSEG_OUT="$out"
export SOCIOSEG_DEADLINE="${SOCIOSEG_DEADLINE:-540}"
start=$(date +%s)
timeout 600 xvfb-run -a -s "-screen 0 1600x1000x24" qgis --profiles-path "$profiles" --nologo --noversioncheck \
  --code "$root/scripts/qgis_walkthrough.py" > "$out/qgis.log" 2>&1 || true
grep "^\[walkthrough\]" "$out/qgis.log" || true
cp -f "$profiles/profiles/default/socioseg/setup.log" "$out/setup.log" 2>/dev/null || true
echo "$(( $(date +%s) - start )) s in QGIS; screenshots and summary in $out"
/usr/bin/python3 - "$out/summary.json" "$out/qgis.log" <<'PY'
import json, sys
try:
    s = json.load(open(sys.argv[1]))
except OSError:
    sys.exit("no summary.json: QGIS did not finish the walkthrough (see qgis.log)")
# how QGIS ended after the walkthrough quit it (Project > Exit QGIS): a crash there prints a gdb backtrace
log = open(sys.argv[2], encoding="utf-8", errors="replace").read()
s["qgis_exit"] = "crashed (signal 11, backtrace in qgis.log)" if "died on signal" in log else "clean"
json.dump(s, open(sys.argv[1], "w"), indent=1)
print("QGIS exit:", s["qgis_exit"])
print("found:", s.get("found"), "| map layers:", s.get("map_layers"))
e = s.get("export", {})
print("exported:", e.get("path"), e.get("geometry"), "EPSG", e.get("epsg"), e.get("count"), "features")
sys.exit(0 if s.get("ok") else 1)
PY
