"""Per-section-class evaluation (issue 9): Dice and boundary F1 of a checkpoint next to Otsu, on fresh
generator slices of each class given as float32 NTransmittance with zero (unscanned) borders.

    .venv/bin/python scripts/eval_classes.py --ckpt bundle/models/model.pt [--n 5] [--out bundle/docs/evaluation_classes.md]

Each class's test set (seeds 20000.., never used in training: scripts/train_shipped_model.sh uses
0-63 and 30000+) is generated once into samples/test_cls_<class>; evaluation runs the documented
`python -m monai.bundle run evaluating` command per class.
"""

from __future__ import annotations

import argparse
import os
import csv
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("mouse", "rat", "monkey", "human_hemisphere", "human")


def ensure_set(cls: str, n: int, seed: int, root: Path) -> Path:
    d = root / f"test_cls_{cls}"
    if not (d / "datalist.json").is_file():
        from plimonai.synthetic import generate_dataset

        generate_dataset(d, n=n, n_val=0, seed=seed, section_class=cls, output_format="ntransmittance",
                         unscanned_border=True)
    return d


def evaluate(ckpt: str, data: Path, out: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", "bundle/configs/evaluate.json",
           "--meta_file", "bundle/configs/metadata.json", "--bundle_root", "bundle", "--ckpt_path", ckpt,
           "--dataset_dir", str(data), "--data_list_key", "training", "--output_dir", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"evaluation of {data} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    with open(out / "per_slice.csv") as f:
        return list(csv.DictReader(f))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default="bundle/models/model.pt")
    ap.add_argument("--n", type=int, default=5, help="slices per class")
    ap.add_argument("--seed", type=int, default=20000)
    ap.add_argument("--classes", default=",".join(CLASSES))
    ap.add_argument("--samples", default="samples")
    ap.add_argument("--work_dir", default="runs/eval_classes")
    ap.add_argument("--out", default="bundle/docs/evaluation_classes.md")
    args = ap.parse_args()
    lines = ["| class | slices | model Dice | model BF1 (2 px) | Otsu Dice | Otsu BF1 | Otsu+post Dice | min model Dice |",
             "|---|---|---|---|---|---|---|---|"]
    t0 = time.perf_counter()
    for cls in args.classes.split(","):
        data = ensure_set(cls, args.n, args.seed, ROOT / args.samples)
        rows = evaluate(args.ckpt, data, ROOT / args.work_dir / cls)
        col = {k: np.array([float(r[k]) for r in rows]) for k in ("dice", "bf1", "otsu_dice", "otsu_bf1", "otsu_post_dice")}
        line = (f"| {cls} | {len(rows)} | {col['dice'].mean():.4f} | {col['bf1'].mean():.3f} | {col['otsu_dice'].mean():.4f} | "
                f"{col['otsu_bf1'].mean():.3f} | {col['otsu_post_dice'].mean():.4f} | {col['dice'].min():.4f} |")
        print(line, flush=True)
        lines.append(line)
    text = (f"# Evaluation per section class (scripts/eval_classes.py)\n\nCheckpoint: `{args.ckpt}`; {args.n} fresh "
            f"generator slices per class (seeds {args.seed}..{args.seed + args.n - 1}), 2080 x 2776, float32 NTransmittance "
            "with unscanned (zero) borders; evaluate.json (inference pipeline incl. post-processing) vs Otsu on the same "
            f"normalised image. Means over slices. Machine: {platform.machine()}, {os.cpu_count()} cores; "
            f"{time.perf_counter() - t0:.0f} s in all.\n\n```bash\n.venv/bin/python scripts/eval_classes.py --ckpt {args.ckpt}\n```\n\n"
            + "\n".join(lines) + "\n")
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
