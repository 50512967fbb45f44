"""Fine-tuning on a few labelled slices of a domain the shipped model never saw: Dice and wall time.

    .venv/bin/python scripts/bench_finetune.py                 # full run: LAP-size slices, finetune.json defaults
    .venv/bin/python scripts/bench_finetune.py --quick         # smoke test, < 4 min: 1/5-size slices, 8 iterations

Domain: the generator's stain-like contrast (``--contrast inverted``: grey matter darker than white
matter, pale white matter; :mod:`plimonai.synthetic.contrast`), which no training run used. Under
``--work_dir`` (reused when its settings match) it generates a pool of ``--n_pool`` labelled slices
(the last one is the held-back validation slice of every fine-tuning; partial labels, about 10 % of
the pixels, kept beside the full ones) and ``--n_test`` fresh test slices (other seeds). Then:

* ``shipped``: the checkpoint ``--ckpt`` (default bundle/models/model.pt; runs/best_s2_e30.pt if that is
  absent, said so), copied to the work dir first (a training job may rewrite it meanwhile);
* ``full_1`` / ``full_3`` / ``full_5``: fine-tuned from it on the first 1, 3, 5 pool slices, full labels;
* ``partial_3``: on the first 3 pool slices with partial labels (validated on the partial label of the
  validation slice, as a user with only partial labels would).

Each fine-tuning is the documented command, in a subprocess, timed (wall clock, including start-up,
caching and the per-epoch validation)::

    python -m monai.bundle run training --config_file "['bundle/configs/train.json','bundle/configs/finetune.json']" \\
        --meta_file bundle/configs/metadata.json --bundle_root bundle --dataset_dir POOL --datalist LIST.json \\
        --init_ckpt SHIPPED.pt --ckpt_dir RUN/models --output_dir RUN/eval --resume False  [quick-mode overrides]

and every model is scored with ``evaluate.json`` (in this process, eager backend) on the test slices:
mean Dice over slices (``val_dice_raw.csv`` of MONAI's MetricsSaver). Writes ``WORK/results.json``,
the table between the ``bench_finetune:<mode>`` markers of ``--md`` (bundle/docs/finetune.md) and a
plot (``--png``; quick mode: WORK/finetune_quick.png, the docs keep the full run's figure).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "bundle"
TRAIN, FINETUNE = "bundle/configs/train.json", "bundle/configs/finetune.json"
META = "bundle/configs/metadata.json"
FALLBACK_CKPT = ROOT / "runs" / "best_s2_e30.pt"
LAP_SHORT = 2080  # generator reference frame (short side); area rules scale with it
AREA_RULES = (3000, 1500)  # evaluate.json / train.json min_component_area, max_hole_area at LAP size

# name, training slices, labels ("full" / "partial"); "shipped" is not fine-tuned
CONDITIONS = [("full_1", 1, "full"), ("full_3", 3, "full"), ("full_5", 5, "full"), ("partial_3", 3, "partial")]
LABELS = {"shipped": "shipped model", "full_1": "1 slice, full labels", "full_3": "3 slices, full labels",
          "full_5": "5 slices, full labels", "partial_3": "3 slices, partial labels"}

# --quick: small slices, a handful of iterations; everything else as in the full run
QUICK = {"shape": (416, 555), "n_test": 2, "train_overrides": {
    "epochs": 2, "epoch_iterations": 4, "patch_size": [128, 128], "val_roi_size": [256, 256],
    "early_stop_patience": 0}, "eval_overrides": {"roi_size": [256, 256]}}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke test: 416 x 555 slices, 2 x 4 iterations, 2 test slices")
    ap.add_argument("--ckpt", default=str(BUNDLE / "models" / "model.pt"), help="the shipped checkpoint")
    ap.add_argument("--work_dir", default=None, help="data and runs (default runs/bench_finetune[_quick])")
    ap.add_argument("--contrast", default="inverted", help="generator contrast regime of the unseen domain")
    ap.add_argument("--shape", default=None, help="slice size H,W (default 2080,2776; quick 416,555)")
    ap.add_argument("--n_pool", type=int, default=6, help="labelled pool: 5 training + 1 validation slice")
    ap.add_argument("--n_test", type=int, default=None, help="fresh test slices (default 6; quick 2)")
    ap.add_argument("--pool_seed", type=int, default=71000)
    ap.add_argument("--test_seed", type=int, default=72000)
    ap.add_argument("--partial_fraction", type=float, default=0.1)
    ap.add_argument("--only", default="", help="comma-separated conditions to run (default: all)")
    ap.add_argument("--reuse_runs", action="store_true", help="keep fine-tunings already finished in --work_dir")
    ap.add_argument("--md", default=str(BUNDLE / "docs" / "finetune.md"))
    ap.add_argument("--png", default=None, help="plot (default bundle/docs/finetune.png; quick: WORK/finetune_quick.png)")
    ap.add_argument("--train_arg", action="append", default=[], metavar="KEY=VALUE",
                    help="extra override for every fine-tuning, e.g. --train_arg learning_rate=0.001 (repeatable)")
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    args.mode = mode
    args.work_dir = Path(args.work_dir or ROOT / "runs" / f"bench_finetune{'_quick' if args.quick else ''}").resolve()
    if args.shape:
        args.shape = tuple(int(v) for v in args.shape.replace("x", ",").split(","))
    else:
        args.shape = QUICK["shape"] if args.quick else (2080, 2776)
    args.n_test = args.n_test or (QUICK["n_test"] if args.quick else 6)
    args.png = Path(args.png) if args.png else (args.work_dir / "finetune_quick.png" if args.quick else
                                                 BUNDLE / "docs" / "finetune.png")
    if args.n_pool < 6:
        ap.error("--n_pool must be >= 6 (5 training slices + 1 validation slice)")
    return args


def resolve_ckpt(ckpt: str) -> tuple[Path, str]:
    """The checkpoint to start from and a note (empty unless the fallback was taken)."""
    p = Path(ckpt)
    if p.is_file():
        return p.resolve(), ""
    if FALLBACK_CKPT.is_file():
        fb = FALLBACK_CKPT.relative_to(ROOT) if FALLBACK_CKPT.is_relative_to(ROOT) else FALLBACK_CKPT
        note = f"{p} not found: using {fb} (stage-2 best checkpoint) instead"
        print("NOTE: " + note, flush=True)
        return FALLBACK_CKPT, note
    raise SystemExit(f"no checkpoint: {p} and {FALLBACK_CKPT} are both missing")


def area_rules(shape: tuple[int, int]) -> dict:
    """min_component_area / max_hole_area scaled from LAP size to ``shape`` (area ~ length**2)."""
    a = (min(shape) / LAP_SHORT) ** 2
    return {"min_component_area": int(round(AREA_RULES[0] * a)), "max_hole_area": int(round(AREA_RULES[1] * a))}


def make_data(args) -> tuple[Path, Path, list[str], dict]:
    """Generate (or reuse) the pool and the test set; returns (pool dir, test dir, pool names, pool info)."""
    from plimonai.synthetic import generate_dataset

    def ensure(out: Path, **kw) -> dict:
        want = {"n": kw["n"], "seed": kw["seed"], "shape": list(args.shape), "contrast": args.contrast,
                "partial_labels": bool(kw.get("partial_labels", False))}
        info_p = out / "synthetic_info.json"
        if info_p.is_file():
            info = json.loads(info_p.read_text())
            have = {"n": info.get("n"), "seed": info.get("seed"), "shape": info.get("shape"),
                    "contrast": info.get("contrast", "standard"), "partial_labels": bool(info.get("partial_labels"))}
            if have == want and (not want["partial_labels"] or
                                 info.get("partial_fraction") == args.partial_fraction):
                print(f"reusing {out}", flush=True)
                return info
            shutil.rmtree(out)
        t = time.perf_counter()
        generate_dataset(out, kind="lap", n_val=0, shape=args.shape, preview=True, contrast=args.contrast, **kw)
        print(f"generated {kw['n']} slices in {out} ({time.perf_counter() - t:.0f} s)", flush=True)
        return json.loads(info_p.read_text())

    pool, test = args.work_dir / "pool", args.work_dir / "test"
    info = ensure(pool, n=args.n_pool, seed=args.pool_seed, partial_labels=True, partial_fraction=args.partial_fraction)
    ensure(test, n=args.n_test, seed=args.test_seed)
    return pool, test, [s["name"] for s in info["slices"]], info


def write_datalists(args, names: list[str]) -> dict[str, Path]:
    """One datalist per condition (paths relative to the pool): the first N slices for training, the
    last pool slice for validation (full label; partial label for the partial condition)."""
    out = {}
    val = names[-1]
    for cond, n, kind in CONDITIONS:
        sub = "labels" if kind == "partial" else "labels_full"
        d = {"training": [{"image": f"images/{nm}.tif", "label": f"{sub}/{nm}.tif"} for nm in names[:n]],
             "validation": [{"image": f"images/{val}.tif", "label": f"{sub}/{val}.tif"}]}
        p = args.work_dir / "datalists" / f"{cond}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(d, indent=1) + "\n")
        out[cond] = p
    return out


def overrides_to_cli(over: dict) -> list[str]:
    cli = []
    for k, v in over.items():
        cli += [f"--{k}", json.dumps(v) if isinstance(v, (list, dict)) else str(v)]
    return cli


def train_overrides(args) -> dict:
    over = dict(QUICK["train_overrides"]) if args.quick else {}
    if tuple(args.shape) != (2080, 2776):
        over.update(area_rules(args.shape))
    for kv in args.train_arg:
        k, _, v = kv.partition("=")
        try:
            over[k] = json.loads(v)
        except json.JSONDecodeError:
            over[k] = v
    return over


def parse_log(log: str) -> dict:
    """Iterations, epochs run, best validation Dice and early stopping from a MONAI training log."""
    iters = len(re.findall(r"Epoch: \d+/\d+, Iter: \d+/\d+ -- train_loss", log))
    epochs = [int(a) for a, _ in re.findall(r"Epoch: (\d+)/(\d+), Iter", log)]
    vals = [float(v) for v in re.findall(r"val_mean_dice: ([0-9.eE+-]+)", log)]
    return {"iterations": iters, "epochs_run": max(epochs) if epochs else 0,
            "best_val_dice": max(vals) if vals else float("nan"),
            "early_stopped": "EarlyStopping: Stop training" in log}


def finetune(args, cond: str, datalist: Path, pool: Path, init: Path, over: dict) -> dict:
    run = args.work_dir / "runs" / cond
    res_p = run / "result.json"
    if args.reuse_runs and res_p.is_file() and (run / "models" / "model.pt").is_file():
        print(f"{cond}: reusing the finished fine-tuning in {run}", flush=True)
        return json.loads(res_p.read_text())
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training",
           "--config_file", f"['{TRAIN}','{FINETUNE}']", "--meta_file", META, "--bundle_root", "bundle",
           "--dataset_dir", str(pool), "--datalist", str(datalist), "--init_ckpt", str(init),
           "--ckpt_dir", str(run / "models"), "--output_dir", str(run / "eval"), "--resume", "False",
           *overrides_to_cli(over)]
    print(f"{cond}: fine-tuning ...", flush=True)
    t = time.perf_counter()
    with open(run / "train.log", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t
    text = (run / "train.log").read_text(errors="replace")
    if rc != 0 or not (run / "models" / "model.pt").is_file():
        raise SystemExit(f"{cond}: fine-tuning failed (exit {rc}); last lines of {run / 'train.log'}:\n{text[-3000:]}")
    res = {"condition": cond, "wall_s": wall, "ckpt": str(run / "models" / "model.pt"),
           "command": " ".join(cmd[1:]), **parse_log(text)}
    res_p.write_text(json.dumps(res, indent=1) + "\n")
    print(f"{cond}: {wall:.0f} s, {res['iterations']} iterations, {res['epochs_run']} epochs, "
          f"best validation Dice {res['best_val_dice']:.4f}{' (early stop)' if res['early_stopped'] else ''}",
          flush=True)
    return res


def evaluate(args, ckpt: Path, test: Path, out: Path) -> list[float]:
    """Per-slice Dice of ``ckpt`` on the test slices with evaluate.json (eager backend, in this process)."""
    from monai.bundle import ConfigWorkflow

    from plimonai.evaluation import read_metric_details

    if out.exists():
        shutil.rmtree(out)
    over = dict(QUICK["eval_overrides"]) if args.quick else {}
    if tuple(args.shape) != (2080, 2776):
        over.update(area_rules(args.shape))
    wf = ConfigWorkflow(config_file=str(BUNDLE / "configs" / "evaluate.json"), meta_file=str(ROOT / META),
                        run_id="evaluating", workflow_type="eval", bundle_root=str(BUNDLE), output_dir=str(out),
                        dataset_dir=str(test), data_list_key="training", ckpt_path=str(ckpt), network_backend="eager",
                        num_workers=0, **over)
    wf.initialize()
    wf.run()
    wf.finalize()
    _, vals = read_metric_details(out / "val_dice_raw.csv")
    return vals


def _fmt_s(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def table(results: dict) -> str:
    base = results["rows"][0]["mean_dice"]
    lines = ["| model | training slices | labelled pixels | mean Dice (test) | min Dice | vs shipped | "
             "fine-tuning wall time | iterations (epochs) | best val. Dice |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        ft = r.get("finetune")
        lines.append(
            f"| {LABELS[r['condition']]} | {r['n_slices'] or '-'} | "
            f"{'-' if not ft else format(r['labelled_fraction'], '.0%')} | {r['mean_dice']:.4f} | {min(r['dice']):.4f} | "
            f"{'' if not ft else format(r['mean_dice'] - base, '+.4f')} | {_fmt_s(ft['wall_s']) if ft else '-'} | "
            f"{str(ft['iterations']) + ' (' + str(ft['epochs_run']) + (', early stop' if ft['early_stopped'] else '') + ')' if ft else '-'} | "
            f"{format(ft['best_val_dice'], '.4f') if ft else '-'} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    names = [LABELS[r["condition"]].replace(", ", "\n") for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    xs = range(len(rows))
    a.bar(xs, [r["mean_dice"] for r in rows], color=["#888"] + ["#3a7"] * 3 + ["#37a"], alpha=0.8)
    for x, r in zip(xs, rows):
        a.scatter([x] * len(r["dice"]), r["dice"], s=12, color="k", zorder=3)
    lo = min(min(r["dice"]) for r in rows)
    a.set_ylim(max(0.0, math.floor((lo - 0.02) * 20) / 20), 1.0)
    a.axhline(0.97, ls="--", lw=0.8, color="r")
    a.set_xticks(list(xs), names, fontsize=8)
    a.set_ylabel("Dice on fresh test slices (bar: mean, dots: slices)")
    a.set_title(f"unseen domain: contrast={results['settings']['contrast']} ({results['mode']} mode)", fontsize=9)
    ft = [r for r in rows if r.get("finetune")]
    b.bar(range(len(ft)), [r["finetune"]["wall_s"] / 60 for r in ft], color=["#3a7"] * 3 + ["#37a"], alpha=0.8)
    b.set_xticks(range(len(ft)), [LABELS[r["condition"]].replace(", ", "\n") for r in ft], fontsize=8)
    b.set_ylabel("fine-tuning wall time (min)")
    b.axhline(30, ls="--", lw=0.8, color="r")
    b.set_ylim(0, max(32, max(r["finetune"]["wall_s"] / 60 for r in ft) * 1.1) if not results["mode"] == "quick"
               else max(r["finetune"]["wall_s"] / 60 for r in ft) * 1.3)
    b.set_title(results["machine"], fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_md(results: dict, md: Path, png: Path) -> None:
    """Replace the ``bench_finetune:<mode>`` block of ``md`` (appended if the markers are missing)."""
    mode = results["mode"]
    begin, end = f"<!-- bench_finetune:{mode}:begin -->", f"<!-- bench_finetune:{mode}:end -->"
    s = results["settings"]
    body = [begin,
            f"Measured {results['date']} on {results['machine']}, with `{results['command']}` "
            f"({results['total_s'] / 60:.1f} min in all; 1-minute load average {results['load_average'][0]:.1f} "
            f"at the start, {results['load_average'][1]:.1f} at the end: above the core count, other jobs shared the CPU "
            f"and the times are longer than on a quiet machine)." if max(results['load_average']) > os.cpu_count() + 0.5
            else f"({results['total_s'] / 60:.1f} min in all; 1-minute load average {results['load_average'][0]:.1f} "
            f"at the start, {results['load_average'][1]:.1f} at the end).",
            f"Checkpoint: `{results['ckpt']}` (sha256 {results['ckpt_sha256'][:12]}){'; ' + results['ckpt_note'] if results['ckpt_note'] else ''}.",
            f"Slices {s['shape'][0]} x {s['shape'][1]}, contrast `{s['contrast']}`; pool seeds {s['pool_seed']}-"
            f"{s['pool_seed'] + s['n_pool'] - 1} (validation slice: the last), {s['n_test']} test slices, seeds "
            f"{s['test_seed']}-{s['test_seed'] + s['n_test'] - 1}; fine-tuning overrides: "
            f"{', '.join(f'`{k}={v}`' for k, v in s['train_overrides'].items()) or 'none (finetune.json defaults)'}.",
            "", table(results), ""]
    if mode == "quick":
        body.insert(1, "**Smoke test (`--quick`), not the benchmark**: small slices (the shipped model works at LAP "
                       "size) and 8 iterations, so these figures say nothing about the targets.")
    else:
        body.append(f"![Dice and fine-tuning time]({png.name})")
    body.append(end)
    block = "\n".join(body)
    text = md.read_text() if md.is_file() else "# Fine-tuning benchmark\n"
    if begin in text and end in text:
        i, j = text.index(begin), text.index(end) + len(end)
        text = text[:i] + block + text[j:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    md.write_text(text)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_all = time.perf_counter()
    load_start = os.getloadavg()[0]
    args.work_dir.mkdir(parents=True, exist_ok=True)
    ckpt, note = resolve_ckpt(args.ckpt)
    init = args.work_dir / "shipped.pt"
    shutil.copyfile(ckpt, init)
    sha = hashlib.sha256(init.read_bytes()).hexdigest()
    pool, test, names, info = make_data(args)
    lists = write_datalists(args, names)
    over = train_overrides(args)
    only = [c for c in args.only.split(",") if c] or [c for c, _, _ in CONDITIONS]
    unknown = set(only) - {c for c, _, _ in CONDITIONS}
    if unknown:
        raise SystemExit(f"unknown conditions {sorted(unknown)}; choose from {[c for c, _, _ in CONDITIONS]}")
    labelled = info.get("labelled_fraction") or [1.0] * len(names)

    rows = [{"condition": "shipped", "n_slices": 0, "dice": evaluate(args, init, test, args.work_dir / "eval" / "shipped")}]
    for cond, n, kind in CONDITIONS:
        if cond not in only:
            continue
        ft = finetune(args, cond, lists[cond], pool, init, over)
        dice = evaluate(args, Path(ft["ckpt"]), test, args.work_dir / "eval" / cond)
        frac = sum(labelled[:n]) / n if kind == "partial" else 1.0
        rows.append({"condition": cond, "n_slices": n, "labelled_fraction": frac, "dice": dice, "finetune": ft})
    for r in rows:
        r["mean_dice"] = sum(r["dice"]) / len(r["dice"])
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        threads = 0
    results = {
        "mode": args.mode, "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores ({threads} torch threads), no GPU used",
        "command": "python scripts/bench_finetune.py" + (" --quick" if args.quick else ""),
        "ckpt": str(ckpt.relative_to(ROOT)) if ckpt.is_relative_to(ROOT) else str(ckpt), "ckpt_sha256": sha,
        "ckpt_note": note,
        "settings": {"shape": list(args.shape), "contrast": args.contrast, "n_pool": args.n_pool, "n_test": args.n_test,
                     "pool_seed": args.pool_seed, "test_seed": args.test_seed, "partial_fraction": args.partial_fraction,
                     "train_overrides": over},
        "rows": rows, "total_s": time.perf_counter() - t_all,
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
    (args.work_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.png)
    write_md(results, Path(args.md), args.png)
    print("\n" + table(results) + "\n", flush=True)
    print(f"wrote {args.work_dir / 'results.json'}, {args.png}, {args.md} ({results['total_s'] / 60:.1f} min)", flush=True)
    return results


if __name__ == "__main__":
    main()
