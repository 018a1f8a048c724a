#!/usr/bin/env bash
# Build the site and screenshot three pages in headless Chromium: the home page, one host page and the API
# reference. Not part of CI. Needs Debian's chromium (apt-get install -y chromium) and the docs extra.
# Usage: bash docs/screenshots.sh [OUT_DIR]   (default: docs/images/screenshots)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/images/screenshots}"
site="$(mktemp -d)"
profile="$(mktemp -d)"
trap 'rm -rf "$site" "$profile"' EXIT
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
if [ -z "$browser" ]; then
    echo "screenshots.sh: no chromium found (apt-get install -y chromium)" >&2
    exit 2
fi
mkdir -p "$out"
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet -d "$site"
shot() {  # shot PAGE NAME HEIGHT
    "$browser" --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
        --disable-sync --no-first-run --user-data-dir="$profile" --hide-scrollbars \
        --window-size=1280,"$3" --screenshot="$out/$2.png" "file://$site/$1" >/dev/null 2>&1
    echo "$out/$2.png"
}
shot index.html home 1500
shot hosts/albumentations/index.html host-albumentations 1500
shot api/index.html api-reference 1500
