#!/usr/bin/env bash
# Regenerate docs/screenshot.png from the real-QGIS walkthrough (scripts/qgis_walkthrough.sh): a fresh
# profile, the ZIP installed, the plugin's own environment set up, the sample's schools found.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/out/walkthrough"
bash "$root/scripts/qgis_walkthrough.sh" "$out"
cp "$out/04_result.png" "$root/docs/screenshot.png"
echo "wrote docs/screenshot.png"
