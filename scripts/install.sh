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
# Optional: headless Chromium for the QC report's browser test (tests/test_qc.py skips it, saying so,
# where chromium is missing). Only as root with apt-get; quiet; time-limited; never fails the install.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    (DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q chromium >/dev/null 2>&1 \
        || { timeout 120 apt-get update -q >/dev/null 2>&1 \
             && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q chromium >/dev/null 2>&1; }) \
        || echo "install.sh: chromium not installed (optional; the QC report browser test will be skipped)"
fi
