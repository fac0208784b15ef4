#!/usr/bin/env bash
# The GPU checks of issue 21, as short calls of the device tool (run from the repo root there;
# prepare the wheels here first: bash benchmarks/gpu/wheels.sh). Each call installs the wheel
# sets it carries (.whl/a, .whl/c, .whl/d → /tmp/site; .whl/b → /tmp/unsloth-site), once each;
# /tmp stays while the machine is warm, so calls that follow each other share what they installed.
#
#   bash benchmarks/gpu/device.sh install        # carry .whl/b: Unsloth's own set, nothing else
#   bash benchmarks/gpu/device.sh bench [opts]   # carry .whl/a: kernel checks + benchmarks/qlora_gpu.py
#                                                #   (Unsloth beside it when /tmp/unsloth-site is there)
#   bash benchmarks/gpu/device.sh build [opts]   # carry .whl/c (after a bench call on the same machine):
#                                                #   benchmarks/build_gpu.py, a whole 7B-class build
#
# Worth measuring in the same run: --variant flex:attn_implementation=flex_attention,padding_free=true
# (flash-attn has no wheel on PyPI; flex attention is the variable-length kernel at hand) and --long.
# Sizes (15 min of device time a session): the 7B bench takes about 8-9 min with three paths,
# the 7B build about 6-7 min; run `install` + `bench` in one session and `build` in the next if
# time is short. Results land in benchmarks/results/ there and are copied to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}  # the device's Python (3.12) holds torch and transformers
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SITE=${SITE:-/tmp/site}
install() {  # wheel folder, target: once per set of wheels (a carried folder stays on a warm machine)
  [ -d "$1" ] && ls "$1"/*.whl >/dev/null 2>&1 || return 0
  local stamp; stamp="$2/.installed-$(ls "$1" | md5sum | cut -c1-12)"
  [ -e "$stamp" ] && return 0
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$2" "$1"/*.whl \
    && touch "$stamp" && echo "installed $(ls "$1" | wc -l) wheels from $1 into $2"
}
install "${WHEELS_D:-.whl/d}" "$SITE" || exit 1
install "${WHEELS_A:-.whl/a}" "$SITE" || exit 1
install "${WHEELS_B:-.whl/b}" /tmp/unsloth-site || exit 1
install "${WHEELS_C:-.whl/c}" "$SITE" || exit 1
export PYTHONPATH=$SITE:$PWD
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# what the runs import, checked in seconds before minutes go into writing a 7B base
versions() {
  "$PY" - "$@" <<'PY'
import importlib, sys
missing = []
for name in sys.argv[1:]:
    try:
        mod = importlib.import_module(name)
        print(f"{name} {getattr(mod, '__version__', '?')}", end="; ")
    except Exception as exc:  # noqa: BLE001
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
print()
if missing:
    print("cannot import: " + "; ".join(missing)); sys.exit(1)
PY
}
case "${1:-bench}" in
  install) ;;
  bench)
    versions torch transformers trl trl.trainer.sft_trainer peft bitsandbytes liger_kernel accelerate datasets \
      pyarrow pandas xxhash || exit 1
    site=(); [ -d /tmp/unsloth-site ] && site=(--unsloth-site /tmp/unsloth-site)
    timeout "${BENCH_TIMEOUT:-570}" "$PY" benchmarks/qlora_gpu.py --steps "${STEPS:-50}" --warmup 5 --profile \
      --budget-s "${BUDGET_S:-540}" "${site[@]}" "${@:2}" 2>&1 | tee "$OUT/qlora_gpu.log"
    cp benchmarks/results/qlora_gpu-*.json "$OUT"/ 2>/dev/null || true ;;
  build)
    versions torch transformers trl.trainer.sft_trainer peft bitsandbytes datasets gguf llama_cpp ollama matplotlib \
      || exit 1
    timeout "${BUILD_TIMEOUT:-570}" "$PY" benchmarks/build_gpu.py "${@:2}" 2>&1 | tee "$OUT/build_gpu.log"
    cp benchmarks/results/build_gpu-*.json "$OUT"/ 2>/dev/null || true ;;
  *) echo "usage: $0 install|bench|build [options of the script]" >&2; exit 2 ;;
esac
