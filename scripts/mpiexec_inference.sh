#!/bin/bash
# MPI inference on one machine (or on the hosts of a hostfile) with plain mpiexec.
#   scripts/mpiexec_inference.sh NPROC LIST.txt OUT_DIR [extra bundle args, e.g. --dispatch static]
#   MPIEXEC_ARGS="-f hosts.txt -ppn 4" scripts/mpiexec_inference.sh 8 LIST.txt OUT_DIR   # MPICH, 2 nodes
# A rerun of the same command only processes slices without a finished mask. Exit status is non-zero
# if any slice failed (see OUT_DIR/summary.csv).
set -euo pipefail

NPROC=${1:?usage: $0 NPROC LIST.txt OUT_DIR [extra bundle args]}
SLICE_LIST=${2:?usage: $0 NPROC LIST.txt OUT_DIR [extra bundle args]}
OUT_DIR=${3:?usage: $0 NPROC LIST.txt OUT_DIR [extra bundle args]}
shift 3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUNDLE=${BUNDLE:-$ROOT/bundle}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
MPIEXEC=${MPIEXEC:-$(dirname "$PYTHON")/mpiexec}
[ -x "$MPIEXEC" ] || MPIEXEC=$(command -v mpiexec)

# shellcheck disable=SC2086  # MPIEXEC_ARGS is a list of launcher options
exec "$MPIEXEC" -n "$NPROC" ${MPIEXEC_ARGS:-} "$PYTHON" -m monai.bundle run inference \
    --config_file "['$BUNDLE/configs/inference.json','$BUNDLE/configs/mpi_inference.json']" \
    --meta_file "$BUNDLE/configs/metadata.json" --bundle_root "$BUNDLE" \
    --slice_list "$SLICE_LIST" --output_dir "$OUT_DIR" "$@"
