#!/usr/bin/env bash
# How the shipped model is trained (CPU, 2 cores; see bundle/docs/training.md for the stages and figures).
# Resumable: rerunning continues from the newest checkpoint in bundle/models/checkpoints/.
#   stages 1-2 (human LAP only): DATALIST=samples/train_lap/datalist.json EPOCHS=36 LR=0.001 bash scripts/train_shipped_model.sh
#   stage 4 (mixed classes, weighted): INIT_CKPT=CKPT EPOCHS=30 VAL_INTERVAL=3 bash scripts/train_shipped_model.sh
# The GPU stages after these (session 5: the v0.3.0 weights; session 7: rodent fine-tuning with frozen batch-norm
# statistics, the v0.4.0 weights) ran scripts/gpu_train_bench.sh; commands in bundle/docs/training.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
synth() { [ -f "samples/$1/datalist.json" ] || nice -n 5 .venv/bin/plimonai synth --kind lap --out "samples/$1" "${@:2}"; }
# human whole sections (uint16, generator defaults) and the other section classes as float32
# NTransmittance with unscanned borders (issue 9); seeds never used by the test sets (10000+, 20000+).
synth train_lap --n 60 --n_val 4 --seed 0
synth train_mouse --n 12 --n_val 1 --seed 30000 --section_class mouse --output_format ntransmittance --unscanned_border 0.5
synth train_rat --n 12 --n_val 1 --seed 31000 --section_class rat --output_format ntransmittance --unscanned_border 0.5
synth train_monkey --n 10 --n_val 0 --seed 32000 --section_class monkey --output_format ntransmittance --unscanned_border 0.5
synth train_human_hemisphere --n 8 --n_val 0 --seed 33000 --section_class human_hemisphere --output_format ntransmittance --unscanned_border 0.5
DATALIST=${DATALIST:-samples/train_mixed.json}
[ -f "$DATALIST" ] || $PY scripts/make_weighted_datalist.py --out "$DATALIST" samples/train_lap:1 samples/train_mouse:2 \
    samples/train_rat:2 samples/train_monkey:1.5 samples/train_human_hemisphere:1.5
init=()
[ -n "${INIT_CKPT:-}" ] && init=(--init_ckpt "$INIT_CKPT")
$PY -m monai.bundle run training \
    --config_file "['bundle/configs/train.json','bundle/configs/weighted_sampling.json']" \
    --meta_file bundle/configs/metadata.json --bundle_root bundle --dataset_dir samples --datalist "$DATALIST" \
    --output_dir "${OUTPUT_DIR:-runs/train_mixed}" \
    --patch_size "[512,512]" --num_samples 1 --batch_size 4 --epochs "${EPOCHS:-30}" --val_interval "${VAL_INTERVAL:-3}" \
    --learning_rate "${LR:-0.001}" --save_interval 50 --num_workers 1 "${init[@]}" "$@"
