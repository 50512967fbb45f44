#!/usr/bin/env bash
# How bundle/models/model.pt was trained (CPU, 2 cores; see bundle/docs/training.md for the figures).
# Resumable: rerunning continues from the newest checkpoint in bundle/models/checkpoints/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -f samples/train_lap/datalist.json ] || .venv/bin/plimonai synth --kind lap --n 60 --n_val 4 --seed 0 --out samples/train_lap
$PY -m monai.bundle run training --config_file bundle/configs/train.json --meta_file bundle/configs/metadata.json \
    --bundle_root bundle --dataset_dir samples/train_lap --output_dir runs/train_lap \
    --patch_size "[512,512]" --num_samples 4 --batch_size 4 --epochs "${EPOCHS:-28}" --val_interval 2 --learning_rate 0.002 \
    --save_interval 50 --num_workers 1 "$@"
