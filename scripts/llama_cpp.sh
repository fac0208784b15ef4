#!/usr/bin/env bash
# Install llama-cpp-python into the venv, built for this CPU. Called by setup.sh before the
# rest of the tested set. Usage: scripts/llama_cpp.sh [--latest]
#
# llama-cpp-python is published only as source: building it compiles llama.cpp (4-10 min).
# The version is the tested set's (requirements/pinned.txt, its sdist checked against the
# pinned sha256), or the newest release with --latest. The wheel (py3-none: llama-cpp-python
# loads llama.cpp through ctypes) is built once into ftpack's cache, keyed by version and
# build variant, and installed from there.
#
# On CPUs that advertise AMX (Intel Sapphire Rapids and later), llama.cpp's AMX kernels were
# seen to die with SIGILL (`tilezero`) inside our VMs on the first quantized matmul, which
# would crash every verify/chat/fidelity step. AMX only speeds up quantized inference, which
# ftpack uses for short checks, so on such CPUs llama.cpp is built without AMX (pip's own
# wheel cache does not key on CMAKE_ARGS, so it cannot tell the two builds apart).
# Set FTPACK_LLAMA_CPP_AMX=1 to build with it anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FTPACK_VENV:-.venv}
PY=("$VENV/bin/python")
PIP=("${PY[@]}" -m pip)

latest=0
[[ "${1:-}" == "--latest" ]] && latest=1

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ((latest)); then
  version=$("${PIP[@]}" index versions llama-cpp-python 2>/dev/null | sed -n 's/^llama-cpp-python (\(.*\))$/\1/p')
  [[ -n "$version" ]] || { echo "cannot find the newest llama-cpp-python release" >&2; exit 2; }
  printf 'llama-cpp-python==%s\n' "$version" >"$tmp/req.txt"
  req=(-r "$tmp/req.txt")
else  # the pinned sdist, checked against its pinned sha256
  "${PY[@]}" scripts/pins.py extract llama-cpp-python >"$tmp/req.txt"
  version=$(sed -n 's/^llama-cpp-python==\([^ ]*\).*/\1/p' "$tmp/req.txt")
  req=(--require-hashes -r "$tmp/req.txt")
fi

variant=native
flags=""
if [[ "${FTPACK_LLAMA_CPP_AMX:-0}" != 1 ]] && grep -qw amx_tile /proc/cpuinfo 2>/dev/null \
   && echo | gcc -mno-amx-tile -E - >/dev/null 2>&1; then
  variant=no-amx
  flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi

have=$("${PY[@]}" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null || true)
if [[ "$have" == "$version" ]]; then
  so=$(ls "$VENV"/lib/python3*/site-packages/llama_cpp/lib/libggml-cpu.so* 2>/dev/null | head -n 1 || true)
  if [[ "$variant" == native ]] || { [[ -n "$so" ]] && ! grep -q ggml_backend_amx_mul_mat "$so"; }; then
    exit 0  # the wanted version, built the wanted way, is already there
  fi
fi

wheels="${FTPACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ftpack}/wheels/llama-cpp-python-$variant"
wheel=$(ls "$wheels"/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -n 1 || true)
if [[ -z "$wheel" ]]; then
  echo "==> compiling llama.cpp (llama-cpp-python $version, $variant build) for this CPU: 4-10 min, once"
  mkdir -p "$wheels"
  build=$(mktemp -d "$wheels/.build-XXXXXX")
  # llama.cpp builds in parallel on every core.
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)} \
  CMAKE_ARGS="${CMAKE_ARGS:-}${flags:+ -DCMAKE_C_FLAGS='$flags' -DCMAKE_CXX_FLAGS='$flags'}" \
    "${PIP[@]}" wheel -q --no-deps --no-cache-dir -w "$build" "${req[@]}"
  mv "$build"/llama_cpp_python-*.whl "$wheels/" && rm -rf "$build"
  wheel=$(ls "$wheels"/llama_cpp_python-"$version"-*.whl | head -n 1)
fi
echo "==> installing $(basename "$wheel") ($variant build)"
"${PIP[@]}" install -q --no-deps --force-reinstall "$wheel"
