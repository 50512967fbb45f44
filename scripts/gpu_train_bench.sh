#!/usr/bin/env bash
# One GPU node, one call: regenerate the training sets, train two candidate models side by side on the
# GPU for a fixed wall time, then benchmark GPU inference. How the GPU figures in bundle/docs/ were made.
#   OUT=results INIT_CKPT=runs/gpu_init/init.pt TRAIN_S=330 bash scripts/gpu_train_bench.sh
# A: the shipped width (8..128) from INIT_CKPT; B: 16..256 from scratch. Both on human LAP (hard slices 3x)
# + mouse, rat, monkey, human-hemisphere slices (scripts/train_shipped_model.sh's sets), batches of 16 crops.
# Two fine-tunes of the shipped model side by side (session 7: out-of-focus clump augmentation, lr 1e-4 and 2e-4):
#   OUT=results RUNS="A B" INIT_CKPT=bundle/models/model.pt B_INIT=bundle/models/model.pt B_ARGS='--learning_rate 0.0002' \
#     LR_A=0.0001 TRAIN_EXTRA='--train#augmentation#18#clump_prob 0.5' RODENT_N=48 RODENT_VAL=1 RODENT_W=2 UNSCANNED=0.8 \
#     EPOCHS=85 VAL=10 WORKERS=7 BENCH=0 TRAIN_S=450 bash scripts/gpu_train_bench.sh
#   (the second call, whose run A is the shipped v0.4.0, added '--freeze_bn_stats True' to TRAIN_EXTRA, LR_A=0.0002,
#   B_ARGS='--learning_rate 0.0002 --anchor_strength 20', TRAIN_S=370: bundle/docs/training.md)
# Rodent fine-tuning of the shipped model (session 6): only run A, more mouse and rat slices, no inference bench:
#   OUT=results RUNS=A INIT_CKPT=bundle/models/model.pt RODENT_N=48 RODENT_VAL=3 RODENT_W=3 UNSCANNED=0.8 \
#     LR_A=0.0003 EPOCHS=70 VAL=7 WORKERS=10 BENCH=0 TRAIN_S=360 bash scripts/gpu_train_bench.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-runs/gpu}; TRAIN_S=${TRAIN_S:-330}; EPOCHS=${EPOCHS:-240}; VAL=${VAL:-40}; G=${G:-runs/gpu_data}
PATCH=${PATCH:-512}; BATCH=${BATCH:-16}; WORKERS=${WORKERS:-7}; BENCH_N=${BENCH_N:-3}; BENCH=${BENCH:-1}
RUNS=${RUNS:-A B}; LR_A=${LR_A:-0.0005}; RODENT_N=${RODENT_N:-12}; RODENT_VAL=${RODENT_VAL:-1}; RODENT_W=${RODENT_W:-2}
UNSCANNED=${UNSCANNED:-0.5}  # probability of zero-padded unscanned bands in the non-human classes
read -r -a GEN_EXTRA <<< "${GEN_EXTRA:-}"  # e.g. GEN_EXTRA='--shape [260,347]' for a quick CPU smoke run
read -r -a TRAIN_EXTRA <<< "${TRAIN_EXTRA:-}"  # config overrides for both runs, e.g. '--train#augmentation#18#clump_prob 0.5'
read -r -a B_ARGS <<< "${B_ARGS:---learning_rate 0.001 --network_def#channels [16,32,64,128,256]}"  # run B: wide, from scratch
mkdir -p "$OUT" "$G"
export PYTHONUNBUFFERED=1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

# -- data: the generator's sets in chunks of 4 seeds, one process each (a slice depends only on its seed)
gen() { $PY -m plimonai.cli synth --kind lap --preview False --out "$G/$1" "${@:2}" "${GEN_EXTRA[@]}" > "$G/$1.log" 2>&1 || echo "synth $1 failed"; }
cls() { local name=$1 seed=$2 n=$3 nval=$4 c=$5 extra=(); local s=$seed last=$(( nval > 0 ? nval + 1 : 0 ))
  [ "$c" = human ] || extra=(--section_class "$c" --output_format ntransmittance --unscanned_border "$UNSCANNED")
  while [ $s -lt $((seed + n - last)) ]; do  # training-only chunks, then one chunk holding the validation slices
    local k=$(( seed + n - last - s < 4 ? seed + n - last - s : 4 ))
    gen "${name}_$s" --seed $s --n $k --n_val 0 "${extra[@]}" & s=$((s + k)); done
  [ $last -gt 0 ] && gen "${name}_$s" --seed $s --n $last --n_val $nval "${extra[@]}" &
  return 0; }
cls lap 0 60 4 human; cls mouse 30000 "$RODENT_N" "$RODENT_VAL" mouse; cls rat 31000 "$RODENT_N" "$RODENT_VAL" rat
cls monkey 32000 10 0 monkey; cls hemi 33000 8 0 human_hemisphere
wait
stamp "data generated"
sets=(); for d in "$G"/*/; do d=${d%/}; w=1; case $(basename "$d") in mouse*|rat*) w=$RODENT_W;; monkey*|hemi*) w=1.5;; esac; sets+=("$d:$w"); done
$PY scripts/make_weighted_datalist.py --out "$G/train.json" "${sets[@]}" --hard_weight 3 --pale_weight 1

# -- training: two runs share the GPU; the data workers (CPU augmentation) are the bottleneck
train() { local name=$1; shift
  timeout -s TERM "$TRAIN_S" $PY -m monai.bundle run training \
    --config_file "['bundle/configs/train.json','bundle/configs/weighted_sampling.json']" \
    --meta_file bundle/configs/metadata.json --bundle_root bundle --dataset_dir "$G" --datalist "$G/train.json" \
    --output_dir "runs/gpu_$name" --ckpt_dir "runs/gpu_$name" --checkpoint_dir "runs/gpu_$name/ckpt" \
    --patch_size "[$PATCH,$PATCH]" --num_samples 1 --batch_size "$BATCH" --epochs "$EPOCHS" --val_interval "$VAL" \
    --save_interval 100 --num_workers "$WORKERS" --cache_workers 8 --num_threads 1 \
    "--train#augmentation#4#prob" 0.0 "--train#augmentation#12#prob" 0.0 "--train#augmentation#13#prob" 0.0 "${TRAIN_EXTRA[@]}" "$@" \
    > "$OUT/train_$name.log" 2>&1
  stamp "training $name ended (rc $?)"; }
init=(); [ -n "${INIT_CKPT:-}" ] && init=(--init_ckpt "$INIT_CKPT")
case " $RUNS " in *" A "*) train A --learning_rate "$LR_A" "${init[@]}" & ;; esac
initb=(); [ -n "${B_INIT:-}" ] && initb=(--init_ckpt "$B_INIT")
case " $RUNS " in *" B "*) train B "${B_ARGS[@]}" "${initb[@]}" & ;; esac
wait
# weights back: best-validation model and the newest checkpoint's model of each run; A's full checkpoint
$PY - "$OUT" <<'EOF'
import glob, os, shutil, sys, torch
from plimonai.training import load_weights
out = sys.argv[1]
for name in "AB":
    d = f"runs/gpu_{name}"
    if os.path.isfile(f"{d}/model.pt"):
        shutil.copy(f"{d}/model.pt", f"{out}/{name}_best.pt")
    ck = sorted(glob.glob(f"{d}/ckpt/*.pt"), key=os.path.getmtime)
    if ck:
        torch.save(load_weights(ck[-1]), f"{out}/{name}_last.pt")
        print(name, "newest checkpoint", ck[-1])
        if name == "A":
            shutil.copy(ck[-1], f"{out}/A_ckpt.pt")
EOF
stamp "weights saved"

# -- GPU inference benchmark with A's best weights (the shipped width)
[ "$BENCH" = 1 ] || exit 0
ck=$OUT/A_best.pt; [ -f "$ck" ] || ck=""
timeout 150 $PY scripts/bench_inference.py --n "$BENCH_N" --device "${BENCH_DEVICE:-cuda}" --backends auto --ckpt "${ck:-none}" --out "$OUT/bench_inference_gpu.md" \
    > "$OUT/bench.log" 2>&1
stamp "bench ended (rc $?)"
