#!/usr/bin/env bash
# How the shipped model is trained (CPU, 2 cores; see bundle/docs/training.md for the stages and figures).
# Resumable: rerunning continues from the newest checkpoint in bundle/models/checkpoints/.
#   stage 1: EPOCHS=14 LR=0.002 bash scripts/train_shipped_model.sh
#   stage 2: INIT_CKPT=stage1_best.pt EPOCHS=36 LR=0.001 VAL_INTERVAL=3 bash scripts/train_shipped_model.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -f samples/train_lap/datalist.json ] || .venv/bin/plimonai synth --kind lap --n 60 --n_val 4 --seed 0 --out samples/train_lap
init=()
[ -n "${INIT_CKPT:-}" ] && init=(--init_ckpt "$INIT_CKPT")
$PY -m monai.bundle run training --config_file bundle/configs/train.json --meta_file bundle/configs/metadata.json \
    --bundle_root bundle --dataset_dir samples/train_lap --output_dir "${OUTPUT_DIR:-runs/train_lap}" \
    --patch_size "[512,512]" --num_samples 4 --batch_size 4 --epochs "${EPOCHS:-36}" --val_interval "${VAL_INTERVAL:-3}" \
    --learning_rate "${LR:-0.001}" --save_interval 50 --num_workers 1 "${init[@]}" "$@"
