#!/usr/bin/env bash
# The main job on a fresh machine: set up, then find the schools of the bundled sample town with the
# weight-free default (map reader + GrabCut); writes out/schools.gpkg and out/schools.png.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
mkdir -p out
exec .venv/bin/python -m backend detect \
  --satellite resources/sample/satellite.tif --map resources/sample/map.gpkg \
  --query "${QUERY:-schools}" --out "out/${OUT_NAME:-schools}.gpkg" --preview "out/${OUT_NAME:-schools}.png" \
  --truth resources/sample/truth.gpkg --overwrite "$@"
