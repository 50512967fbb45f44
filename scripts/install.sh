#!/usr/bin/env bash
# Create .venv and install plimonai with its test and MPI extras (idempotent).
# torch: the CPU wheel that lies on the development machines' disk (torch==2.13.0); anywhere else,
# install your own (CUDA) build of torch first and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install -q "torch==2.13.0" || .venv/bin/pip install -q "torch>=2.1,<3"
fi
.venv/bin/pip install -q -e ".[test,mpi,fast]"
