#!/usr/bin/env bash
# Install llama-cpp-python into .venv built for this CPU. Called by setup.sh before ftpack itself.
#
# llama-cpp-python is published only as source: pip compiles llama.cpp with -march=native.
# On CPUs that advertise AMX (Intel Sapphire Rapids and later), llama.cpp's AMX kernels were
# seen to die with SIGILL (`tilezero`) inside our VMs on the first quantized matmul, which
# would crash every verify/chat/fidelity step. AMX only speeds up quantized inference, which
# ftpack uses for short checks, so on such CPUs we build llama.cpp without AMX, once, into a
# wheel in ftpack's cache (pip's own wheel cache does not key on CMAKE_ARGS, so it cannot
# tell the two builds apart). Set FTPACK_LLAMA_CPP_AMX=1 to keep pip's default build.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=(.venv/bin/python -m pip)
SPEC='llama-cpp-python>=0.3.20'

if [[ "${FTPACK_LLAMA_CPP_AMX:-0}" == 1 ]] || ! grep -qw amx_tile /proc/cpuinfo 2>/dev/null \
   || ! echo | gcc -mno-amx-tile -E - >/dev/null 2>&1; then
  exit 0  # the plain `pip install` in setup.sh builds it (and pip caches that wheel)
fi
so=$(ls .venv/lib/python3*/site-packages/llama_cpp/lib/libggml-cpu.so* 2>/dev/null | head -n 1 || true)
if [[ -n "$so" ]] && ! grep -q ggml_backend_amx_mul_mat "$so"; then
  exit 0  # already installed without AMX
fi
flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
wheels="${FTPACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ftpack}/wheels/llama-cpp-python-no-amx"
wheel=$(ls "$wheels"/llama_cpp_python-*.whl 2>/dev/null | sort -V | tail -n 1 || true)
if [[ -z "$wheel" ]]; then
  echo "==> compiling llama.cpp (llama-cpp-python) without AMX for this CPU: 4-10 min, once"
  mkdir -p "$wheels"
  tmp=$(mktemp -d "$wheels/.build-XXXXXX")
  CMAKE_ARGS="${CMAKE_ARGS:-} -DCMAKE_C_FLAGS='$flags' -DCMAKE_CXX_FLAGS='$flags'" \
    "${PIP[@]}" wheel -q --no-deps --no-cache-dir -w "$tmp" "$SPEC"
  mv "$tmp"/llama_cpp_python-*.whl "$wheels/" && rm -rf "$tmp"
  wheel=$(ls "$wheels"/llama_cpp_python-*.whl | sort -V | tail -n 1)
fi
echo "==> installing $(basename "$wheel") (built without AMX)"
"${PIP[@]}" install -q --no-deps --force-reinstall "$wheel"
