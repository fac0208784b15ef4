#!/usr/bin/env bash
# Try the newest releases of every dependency: set up .venv-latest with no pins
# (scripts/setup.sh --latest), run the whole test suite there and, only when it passes,
# refresh the tested set (requirements/pinned.txt and pyproject.toml's lower bounds) from
# that environment. Review `git diff`, then `bash scripts/setup.sh` moves .venv to it.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export FTPACK_VENV=${FTPACK_VENV:-.venv-latest}
bash scripts/setup.sh --latest
# The suite, less the checks that .venv holds the current pins (this one holds newer ones).
FTPACK_UNPINNED=1 "$FTPACK_VENV/bin/python" -m pytest "$@"
"$FTPACK_VENV/bin/python" scripts/pins.py freeze
git --no-pager diff --stat -- requirements/pinned.txt pyproject.toml || true
echo "==> the newest releases passed the suite; the tested set is refreshed (see git diff)"
