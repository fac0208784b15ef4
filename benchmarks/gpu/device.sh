#!/usr/bin/env bash
# The GPU checks of issue 21, as short calls of the device tool (run from the repo root there).
#   bash benchmarks/gpu/device.sh unsloth   # carry .whl/b: installs Unsloth's set into /tmp/unsloth-site
#   bash benchmarks/gpu/device.sh bench     # carry .whl/a: installs ftpack's training set into /tmp/site,
#                                           # runs benchmarks/gpu_checks.py and benchmarks/qlora_gpu.py
# Call `unsloth` first and `bench` right after it (the machine keeps /tmp while it is warm);
# `bench` alone runs without Unsloth. Results land in benchmarks/results/ and are copied to $OUT.
# Prepare the wheels here first: bash benchmarks/gpu/wheels.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}  # the device's Python (3.12) holds torch and transformers
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
install() {  # wheel folder, target
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$2" "$1"/*.whl
}
case "${1:-bench}" in
  unsloth)
    install .whl/b /tmp/unsloth-site && echo "unsloth set installed: $(ls /tmp/unsloth-site | wc -l) entries" ;;
  bench)
    install "${WHEELS:-.whl/a}" "${SITE:-/tmp/site}" || exit 1
    export PYTHONPATH=${SITE:-/tmp/site}:$PWD
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c "import torch, transformers, trl, peft, bitsandbytes, liger_kernel; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'bnb', bitsandbytes.__version__)"
    site=(); [ -d /tmp/unsloth-site ] && site=(--unsloth-site /tmp/unsloth-site)
    timeout "${BENCH_TIMEOUT:-540}" "$PY" benchmarks/qlora_gpu.py --steps "${STEPS:-50}" --warmup 5 "${site[@]}" \
      "${@:2}" 2>&1 | tee "$OUT/qlora_gpu.log"
    cp benchmarks/results/qlora_gpu-*.json "$OUT"/ 2>/dev/null || true ;;
  *) echo "usage: $0 unsloth|bench [qlora_gpu.py options]" >&2; exit 2 ;;
esac
