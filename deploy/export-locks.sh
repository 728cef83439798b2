#!/usr/bin/env bash
# Export the committed locks from pyproject.toml (its exclude-newer makes the resolution reproducible):
#   requirements.lock       the development set: runtime + the default groups (dev, local); what `uv run` installs
#   deploy/locks/NAME.lock  the image's set for build argument LAUNCHER=NAME: runtime + that launcher's extra,
#                           no dependency group (no tests, lint, local stack or uv)
# Usage: deploy/export-locks.sh [OUT_DIR]   (default: the repository; CI writes to a temp dir and diffs)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
mkdir -p "$out/deploy/locks"
export_lock() { uv export --frozen --format requirements-txt --no-emit-project --no-header --quiet "$@"; }

export_lock >"$out/requirements.lock"
export_lock --no-default-groups >"$out/deploy/locks/none.lock"
for launcher in docker k8s ecs; do
    export_lock --no-default-groups --extra "$launcher" >"$out/deploy/locks/$launcher.lock"
done
