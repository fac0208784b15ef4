#!/usr/bin/env bash
# Set up ./.venv and run the main job: fine-tune the embedded SmolLM2-135M on the
# example product manual on CPU, quantize it to Q6_K, register it with Ollama (the
# server at OLLAMA_HOST when it answers, else Ollama's model store), then show the base
# model and the fine-tuned model answering the same held-out questions.
# Extra arguments go to `ftpack build` (e.g. --force train, --no-register).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ftpack build demo-qa --config examples/smollm2-cpu-lora.toml "$@"
.venv/bin/python examples/compare_answers.py builds/demo-qa
