"""Transmittance only versus transmittance + retardation: same data, same budget, same fresh test slices.

    .venv/bin/python scripts/bench_retardation.py            # full run -> bundle/docs/retardation.md
    .venv/bin/python scripts/bench_retardation.py --quick    # smoke run (tiny network, few iterations, small
                                                             # slices; < 3 min on 2 cores) -> WORK_DIR/retardation_quick.md

1. Data (reused from ``--work_dir`` when the generator options match): ``plimonai synth --section_class mixed
   --output_format ntransmittance --unscanned_border True --retardation True``, a training set (seeds
   40000+, one validation slice) and a test set (seeds 41000+, used by no training set of the project).
2. Two trainings through the bundle configs, identical overrides (epochs, crops, network widths, learning
   rate, seed 0 and a seeded data loader, so both see the same slices in the same order and the same crops):
   ``train.json`` (1 channel) and ``['train.json', 'retardation_train.json']`` (2 channels). No model selection:
   the final weights of each are evaluated (a fixed budget).
3. Evaluation of both on the test set with ``evaluate.json`` (+ ``retardation_evaluate.json``): per-slice
   Dice and boundary F1 at ``bf1_tolerance`` 2 px after the shipped post-processing (area rules scaled to
   the slice size), with the Otsu baseline; ``plimonai.evaluation.write_comparison`` writes per_slice.csv.
4. A per-slice table (section class from the generator) and the means, printed and written to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "bundle/configs"
META = str(CONFIGS / "metadata.json")
DOC = ROOT / "bundle/docs/retardation.md"
LAP_SHORT_SIDE = 2080  # the shipped area rules (min_component_area, max_hole_area) are for LAP slices of this short side
TRAIN_SEED, TEST_SEED = 40000, 41000
SYNTH = dict(kind="lap", section_class="mixed", output_format="ntransmittance", unscanned_border=True,
             retardation=True, preview=False)
MODELS = {"transmittance": [], "transmittance + retardation": ["retardation"]}  # name -> extra config stems

QUICK = dict(shape="256,320", n_train=5, n_test=3, epochs=10, patch=96, roi=128, channels="4,8,16", num_samples=2)
FULL = dict(shape="1040,1388", n_train=32, n_test=12, epochs=40, patch=384, roi=512, channels="8,16,32,64,128",
            num_samples=4)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    p.add_argument("--work_dir", default=str(ROOT / "out/bench_retardation"), help="data, checkpoints, evaluation outputs")
    p.add_argument("--out", default=None, help=f"report (default: {DOC.relative_to(ROOT)}; quick: WORK_DIR/retardation_quick.md)")
    for k, v in FULL.items():
        p.add_argument(f"--{k}", type=type(v), default=None, help=f"default {v} (quick {QUICK[k]})")
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--batch_size", type=int, default=4, help="crops per iteration (num_samples crops per slice)")
    p.add_argument("--seed", type=int, default=0, help="training seed (set_determinism and the data loader), the same for both")
    p.add_argument("--num_workers", type=int, default=0, help="training data-loader workers (seeded either way; e.g. 4 on a GPU node)")
    p.add_argument("--placeholder", action="store_true", help="only write the report with the results marked 'not yet run'")
    a = p.parse_args(argv)
    base = QUICK if a.quick else FULL
    for k, v in base.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.work_dir = Path(a.work_dir) / ("quick" if a.quick else "full")
    a.out = Path(a.out) if a.out else (a.work_dir / "retardation_quick.md" if a.quick else DOC)
    a.shape_hw = tuple(int(s) for s in str(a.shape).split(","))
    a.channel_list = [int(c) for c in str(a.channels).split(",")]
    f = (min(a.shape_hw) / LAP_SHORT_SIDE) ** 2
    a.min_component_area, a.max_hole_area = max(1, round(3000 * f)), max(1, round(1500 * f))
    return a


def dataset(out: Path, n: int, seed: int, n_val: int, shape: str) -> tuple[Path, float]:
    """Generate (or reuse, when its synthetic_info.json has the same options) a synthetic set; (dir, seconds)."""
    from plimonai.synthetic.dataset import generate_dataset

    want = dict(SYNTH, n=n, seed=seed, n_val=n_val, shape=[int(s) for s in shape.split(",")])
    info = out / "synthetic_info.json"
    if info.is_file() and (out / "datalist.json").is_file():
        have = json.loads(info.read_text())
        if all(have.get(k) == want[k] for k in ("n", "seed", "n_val", "shape")) and have.get("retardation"):
            print(f"reusing {out}", flush=True)
            return out, 0.0
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    generate_dataset(str(out), n=n, seed=seed, n_val=n_val, shape=shape, **{k: v for k, v in SYNTH.items()})
    return out, time.perf_counter() - t0


def configs(stem: str, extra: list[str]) -> list[str]:
    """``train`` + ``["retardation"]`` -> [train.json, retardation_train.json]."""
    return [str(CONFIGS / f"{stem}.json")] + [str(CONFIGS / f"{e}_{stem}.json") for e in extra]


def run_workflow(config_files: list[str], workflow_type: str, **overrides) -> float:
    """Run a bundle config in this process (what ``python -m monai.bundle run`` does); seconds."""
    from monai.bundle import ConfigWorkflow

    t0 = time.perf_counter()
    wf = ConfigWorkflow(config_file=config_files, meta_file=META, workflow_type=workflow_type, logging_file=False,
                        bundle_root=str(ROOT / "bundle"), **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()
    return time.perf_counter() - t0


def cli(config_files: list[str], run_id: str, overrides: dict) -> str:
    """The equivalent command line (for the report)."""
    files = config_files[0] if len(config_files) == 1 else "[" + ",".join(f"'{f}'" for f in config_files) + "]"
    files = files.replace(str(ROOT) + "/", "")
    args = " ".join(f"--{k} {json.dumps(v, separators=(',', ':')) if not isinstance(v, str) else v}" for k, v in overrides.items())
    return f'python -m monai.bundle run {run_id} --config_file "{files}" --meta_file bundle/configs/metadata.json ' \
           f"--bundle_root bundle {args}".replace(str(ROOT) + "/", "")


def iterations(a: argparse.Namespace) -> int:
    """Iterations per model: the training slices (all but the validation one) in batches of batch_size // num_samples."""
    per_iter = max(1, a.batch_size // a.num_samples)
    return a.epochs * -(-(a.n_train - 1) // per_iter)


def machine() -> str:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{platform.machine()}, {cores} cores, {dev}, torch {torch.__version__}, "
            f"load average at start {os.getloadavg()[0]:.1f}")


def read_per_slice(eval_dir: Path) -> dict[str, dict[str, float]]:
    with open(eval_dir / "per_slice.csv", newline="") as f:
        return {r["slice"]: {k: float(v) for k, v in r.items() if k not in ("slice", "image")} for r in csv.DictReader(f)}


def mean(xs) -> float:
    xs = [x for x in xs if x == x]
    return sum(xs) / len(xs) if xs else float("nan")


def table(results: dict[str, dict], info: dict) -> str:
    names = list(results)
    slices = sorted(next(iter(results.values())))
    classes = {s["name"]: s for s in info.get("slices", [])}
    head = ["slice", "class", "hard"] + [f"Dice {n}" for n in names] + [f"BF1 {n}" for n in names] + ["Dice Otsu", "BF1 Otsu"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = results[names[0]]
    for s in slices:
        c = classes.get(s, {})
        row = [s, str(c.get("section_class", "human")), "yes" if c.get("hard") else ""]
        row += [f"{results[n][s]['dice']:.4f}" for n in names] + [f"{results[n][s]['bf1']:.4f}" for n in names]
        row += [f"{first[s]['otsu_post_dice']:.4f}", f"{first[s]['otsu_post_bf1']:.4f}"]
        lines.append("| " + " | ".join(row) + " |")
    row = ["**mean**", "", ""] + [f"**{mean(r['dice'] for r in results[n].values()):.4f}**" for n in names]
    row += [f"**{mean(r['bf1'] for r in results[n].values()):.4f}**" for n in names]
    row += [f"**{mean(r['otsu_post_dice'] for r in first.values()):.4f}**", f"**{mean(r['otsu_post_bf1'] for r in first.values()):.4f}**"]
    lines.append("| " + " | ".join(row) + " |")
    if len(names) == 2:
        a, b = results[names[0]], results[names[1]]
        better = sum(b[s]["dice"] > a[s]["dice"] for s in slices)
        worse = sum(b[s]["dice"] < a[s]["dice"] for s in slices)
        lines += ["", f"Dice with retardation higher on {better}, lower on {worse} of {len(slices)} slices "
                      f"(mean difference {mean(b[s]['dice'] - a[s]['dice'] for s in slices):+.4f})."]
    return "\n".join(lines)


def report(a: argparse.Namespace, body: str) -> str:
    argv = " ".join(sys.argv[1:]) if not a.placeholder else ""
    quick = "**Quick smoke run (`--quick`): tiny network, few iterations, small slices. Not a result.**\n\n" if a.quick else ""
    return f"""# Retardation as a second input channel (scripts/bench_retardation.py)

{quick}Does the retardation image help the segmentation? Two models trained and evaluated identically, one on
transmittance only (`train.json`), one on transmittance + retardation stacked as two channels
(`['train.json', 'retardation_train.json']`; configs and file conventions: [README.md](README.md#retardation-as-a-second-channel)).

- Data: `plimonai synth --section_class mixed --output_format ntransmittance --unscanned_border True
  --retardation True --shape {a.shape}`: {a.n_train} training slices (seeds {TRAIN_SEED}+, one of them for
  validation logging) and {a.n_test} fresh test slices (seeds {TEST_SEED}+, never used for training).
- Training, the same for both: {a.epochs} epochs, {iterations(a)} iterations of {a.batch_size} crops of
  {a.patch} x {a.patch} ({a.num_samples} per slice), PLIUNet widths {a.channels}, AdamW lr {a.learning_rate:g} with cosine
  decay, seed {a.seed} and a seeded data loader (same slice order and crops); the final weights are evaluated (no
  model selection).
- Evaluation (`evaluate.json`, + `retardation_evaluate.json`): sliding windows {a.roi} x {a.roi}, the shipped
  post-processing with its area rules scaled to the slice size (min component {a.min_component_area} px, max hole
  {a.max_hole_area} px), Dice and boundary F1 at 2 px per slice; Otsu (post-processed the same way) for reference.

{body}

Command: `.venv/bin/python scripts/bench_retardation.py{(' ' + argv) if argv else ''}`
"""


PLACEHOLDER = """## Results

**Not yet run.** The figures will come from the full run (`.venv/bin/python scripts/bench_retardation.py`,
without `--quick`) on a quiet machine; until then there are no results here. The quick mode only checks that
the pipeline runs."""


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.placeholder:
        a.out.write_text(report(a, PLACEHOLDER))
        print(f"wrote {a.out}")
        return 0
    t_start = time.perf_counter()
    where = machine()
    a.work_dir.mkdir(parents=True, exist_ok=True)
    train_dir, t_train_data = dataset(a.work_dir / "train", a.n_train, TRAIN_SEED, 1, a.shape)
    test_dir, t_test_data = dataset(a.work_dir / "test", a.n_test, TEST_SEED, 0, a.shape)
    common = {"network_def#channels": a.channel_list, "num_workers": 0, "num_threads": 0}
    train_over = dict(common, num_workers=a.num_workers, dataset_dir=str(train_dir), epochs=a.epochs, val_interval=a.epochs, save_interval=10**9,
                      patch_size=[a.patch, a.patch], val_roi_size=[a.roi, a.roi], num_samples=a.num_samples,
                      batch_size=a.batch_size, learning_rate=a.learning_rate, resume=False,
                      min_component_area=a.min_component_area, max_hole_area=a.max_hole_area)
    seeded = {"train#dataloader#generator": f"$torch.Generator().manual_seed({a.seed})",  # same order and crops for both
              "initialize": ["$@runtime", f"$monai.utils.set_determinism(seed={a.seed})"]}
    results, times, commands = {}, {}, []
    for name, extra in MODELS.items():
        tag = "t" if not extra else "tr"
        ckpt_dir, eval_dir = a.work_dir / f"models_{tag}", a.work_dir / f"eval_{tag}"
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        shutil.rmtree(eval_dir, ignore_errors=True)
        over = dict(train_over, ckpt_dir=str(ckpt_dir), output_dir=str(a.work_dir / f"train_{tag}"))
        files = configs("train", extra)
        commands.append(cli(files, "training", over))
        print(f"training: {name}", flush=True)
        t_train = run_workflow(files, "train", **over, **seeded)
        ev = dict(common, dataset_dir=str(test_dir), data_list_key="training", output_dir=str(eval_dir),
                  ckpt_path=str(ckpt_dir / "checkpoints/latest_final.pt"), network_backend="eager",
                  roi_size=[a.roi, a.roi], min_component_area=a.min_component_area, max_hole_area=a.max_hole_area)
        files = configs("evaluate", extra)
        commands.append(cli(files, "evaluating", ev))
        print(f"evaluating: {name}", flush=True)
        t_eval = run_workflow(files, "eval", **ev)
        results[name] = read_per_slice(eval_dir)
        times[name] = (t_train, t_eval)
    info = json.loads((test_dir / "synthetic_info.json").read_text())
    tab = table(results, info)
    walls = [f"Machine: {where}. Iterations per model: {iterations(a)}.", "",
             "| step | wall time (s) |", "|---|---|", f"| data (0 when reused) | {t_train_data + t_test_data:.1f} |"]
    walls += [f"| training, {n} | {t[0]:.1f} |" for n, t in times.items()]
    walls += [f"| evaluation, {n} | {t[1]:.1f} |" for n, t in times.items()]
    walls += [f"| total | {time.perf_counter() - t_start:.1f} |"]
    lines = ["## Results" + (" (quick smoke run)" if a.quick else ""), "", tab, "", *walls, "",
             "Bundle commands run (in process):", "", "```bash", *commands, "```"]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(report(a, "\n".join(lines)))
    print(tab + "\n\n" + "\n".join(walls))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
