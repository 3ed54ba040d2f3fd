#!/usr/bin/env bash
# Regenerate docs/screenshot.png: real QGIS under Xvfb, the plugin finds the sample's schools.
# Needs the QGIS desktop (Debian package `qgis`) besides the set-up of scripts/setup.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
if ! command -v qgis >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qgis >/dev/null
  else
    echo "QGIS desktop missing: sudo apt-get install -y --no-install-recommends qgis" >&2; exit 1
  fi
fi
profiles="$(mktemp -d)"
trap 'rm -rf "$profiles"' EXIT
mkdir -p "$profiles/profiles/default/python/plugins" "$profiles/profiles/default/QGIS"
ln -s "$root" "$profiles/profiles/default/python/plugins/socioseg"
cat > "$profiles/profiles/default/QGIS/QGIS3.ini" <<INI
[PythonPlugins]
socioseg=true
[qgis]
checkVersion=false
showTips322=false
[UI]
hideTipsDialog=true
INI
# QGIS's own Python must see the venv's packages (rasterio, shapely, ...) as the README explains.
site="$(.venv/bin/python -c 'import site; print(site.getsitepackages()[0])')"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export SOCIOSEG_ROOT="$root" SOCIOSEG_SCREENSHOT="$root/docs/screenshot.png"
timeout 180 xvfb-run -a -s "-screen 0 1600x1000x24" qgis --profiles-path "$profiles" --nologo \
  --noversioncheck --code "$root/scripts/screenshot_qgis.py" 2>&1 | grep -v "^Warning\|^QStandardPaths" || true
test -s docs/screenshot.png && echo "wrote docs/screenshot.png"
