#!/usr/bin/env bash
# Set up ./.venv and run the main job: fine-tune the embedded SmolLM2-135M on the
# example dataset on CPU, quantize it to Q4_K_M and register it with Ollama.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ftpack build demo-qa --config examples/smollm2-cpu-lora.toml "$@"
