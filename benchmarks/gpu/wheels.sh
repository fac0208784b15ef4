#!/usr/bin/env bash
# Wheels for benchmarks/gpu/device.sh, fetched here (where PyPI answers) for the GPU
# machine's Python (3.12, torch and transformers preinstalled, nothing reachable from it).
# Two sets, each under the 64 MiB a device call may carry:
#   .whl/a  what ftpack's pinned set adds to that machine for training (TRL, bitsandbytes,
#           datasets, PEFT, accelerate, Liger Kernel), at the pinned versions;
#   .whl/b  Unsloth with the versions it accepts (TRL <= 1.15, datasets < 5), installed
#           into its own folder so its TRL and datasets never meet ftpack's;
#   .whl/c  what a whole build adds: llama-cpp-python built here for any x86-64-v3 CPU
#           (AVX2/FMA/F16C, not -march=native: the GPU machine's CPU is another; its sdist,
#           77 MB, would not fit a call), gguf and ollama at the pinned versions;
#   .whl/d  pyarrow and fsspec at the pinned versions (datasets 5.2 needs pyarrow >= 24): carry
#           it only if the machine's own pyarrow is older (device.sh bench says so first).
# Usage: bash benchmarks/gpu/wheels.sh      (then see benchmarks/gpu/device.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
get() {  # folder, requirements...
  local dir=$1; shift
  mkdir -p "$dir"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$dir" "$@"
}
pin() { grep -i "^$1==" requirements/pinned.txt | sed 's/ .*//'; }
rm -rf .whl/a .whl/b .whl/c .whl/d
get .whl/a "$(pin trl)" "$(pin bitsandbytes)" "$(pin datasets)" "$(pin dill)" "$(pin multiprocess)" \
  "$(pin peft)" "$(pin accelerate)" "$(pin liger-kernel)"
get .whl/b unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 "datasets==4.8.5" tyro==1.0.17 msgspec==0.23.0 \
  cut_cross_entropy==25.1.1 torchao==0.18.0 hf_transfer==0.1.9 diffusers==0.42.1 docstring-parser==0.18.0 \
  shtab==1.13.0 typeguard==4.6.1 structlog==26.1.0 json5==0.17.3 nest-asyncio==1.6.0 pydantic==2.14.4 \
  pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
get .whl/c "$(pin gguf)" "$(pin ollama)"
llama=$(pin llama-cpp-python); version=${llama#*==}
portable="${FTPACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ftpack}/wheels/llama-cpp-python-portable"
if ! ls "$portable"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
  echo "==> compiling llama.cpp (llama-cpp-python $version) for x86-64-v3 CPUs: 5-10 min, once"
  mkdir -p "$portable"
  "$PY" scripts/pins.py extract llama-cpp-python > "$portable/req.txt"
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \
    "$PY" -m pip wheel -q --no-deps --no-cache-dir --require-hashes -r "$portable/req.txt" -w "$portable"
fi
cp "$portable"/llama_cpp_python-"$version"-*.whl .whl/c/
get .whl/d "$(pin pyarrow)" "$(pin fsspec)"
du -sh .whl/a .whl/b .whl/c .whl/d
