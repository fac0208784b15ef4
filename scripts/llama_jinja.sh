#!/usr/bin/env bash
# Build llama.cpp's chat-template renderer (tools/llama_jinja/render.cpp) for the installed
# llama-cpp-python, once, into ftpack's cache, and install it as the venv's
# bin/ftpack-llama-jinja. Called by setup.sh after ftpack itself.
#
# Ollama 0.30+ serves a model without a TEMPLATE through llama-server, which renders the GGUF's
# own Jinja chat template with llama.cpp's Jinja engine (common/jinja/). ftpack trains such a
# model on transformers' rendering of that template and checks, per build, that llama.cpp's
# engine renders the same text (ftpack/inference/llama_jinja.py). The sources come from the
# llama-cpp-python sdist (the pinned one is checked against its sha256); only the Jinja engine
# and common/'s chat code are compiled (~2 min on 2 cores), no ggml or llama library.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FTPACK_VENV:-.venv}
PY=("$VENV/bin/python")

version=$("${PY[@]}" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
key=$(cat tools/llama_jinja/render.cpp tools/llama_jinja/Makefile | sha256sum | cut -c1-12)
out="${FTPACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ftpack}/llama-jinja/$version-$key"
install_it() { install -m 755 "$out/render" "$VENV/bin/ftpack-llama-jinja"; }
if [[ -x "$out/render" ]]; then install_it; exit 0; fi

echo "==> building llama.cpp's chat-template renderer (llama-cpp-python $version): ~2 min, once"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${PY[@]}" scripts/pins.py extract llama-cpp-python >"$tmp/req.txt"
if grep -q "^llama-cpp-python==$version " "$tmp/req.txt"; then  # the tested version: hash-checked
  "${PY[@]}" -m pip download -q --no-deps --no-binary :all: --require-hashes -r "$tmp/req.txt" -d "$tmp/sdist"
else
  "${PY[@]}" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$tmp/sdist"
fi
tar -xzf "$tmp"/sdist/llama_cpp_python-*.tar.gz -C "$tmp" --wildcards \
  '*/vendor/llama.cpp/common/*' '*/vendor/llama.cpp/include/*' '*/vendor/llama.cpp/ggml/include/*' \
  '*/vendor/llama.cpp/vendor/*'
src=$(echo "$tmp"/llama_cpp_python-*/vendor/llama.cpp)
make -s -C tools/llama_jinja -j"$(nproc 2>/dev/null || echo 2)" L="$src" B="$tmp/build" OUT="$tmp/render"
mkdir -p "$out"
mv "$tmp/render" "$out/render.partial"
mv "$out/render.partial" "$out/render"
install_it
echo "==> $VENV/bin/ftpack-llama-jinja (built in $out)"
