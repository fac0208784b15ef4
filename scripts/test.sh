#!/usr/bin/env bash
# Set up (./.venv with the test extras) and run the whole test suite: fast unit tests
# and the slower end-to-end tests on tiny and real models. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# pytest exits 5 when it collects no tests; set -e makes that (like any failure) fail the run.
.venv/bin/python -m pytest "$@"
