#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine: system packages, .venv, pinned requirements.
# Re-running it does nothing once everything is in place.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

apt_pkgs=(python3-qgis qgis-providers xvfb python3-venv)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages. Run as root first:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv (system site packages, for qgis)" >&2
  /usr/bin/python3 -m venv --system-site-packages .venv
fi

stamp=.venv/.requirements.sha256
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python requirements (first run takes a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  # The machine's pip config names local indexes that lack some packages; its warnings are noise.
  .venv/bin/python -m pip install -q -r requirements.txt 2> >(grep -v "is ignored: it is neither a file" >&2)
  echo "$want" > "$stamp"
fi
