#!/usr/bin/env bash
# Wheels for benchmarks/gpu/device.sh, fetched here (where PyPI answers) for the GPU
# machine's Python (3.12, torch and transformers preinstalled, nothing reachable from it).
# Two sets, each under the 64 MiB a device call may carry:
#   .whl/a  what ftpack's pinned set adds to that machine for training (TRL, bitsandbytes,
#           datasets, PEFT, accelerate, Liger Kernel), at the pinned versions;
#   .whl/b  Unsloth with the versions it accepts (TRL <= 1.15, datasets < 5), installed
#           into its own folder so its TRL and datasets never meet ftpack's.
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
rm -rf .whl/a .whl/b
get .whl/a "$(pin trl)" "$(pin bitsandbytes)" "$(pin datasets)" "$(pin dill)" "$(pin multiprocess)" \
  "$(pin peft)" "$(pin accelerate)" "$(pin liger-kernel)"
get .whl/b unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 "datasets==4.8.5" tyro==1.0.17 msgspec==0.23.0 \
  cut_cross_entropy==25.1.1 torchao==0.18.0 hf_transfer==0.1.9 diffusers==0.42.1 docstring-parser==0.18.0 \
  shtab==1.13.0 typeguard==4.6.1 structlog==26.1.0 json5==0.17.3 nest-asyncio==1.6.0
du -sh .whl/a .whl/b
