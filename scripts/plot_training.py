"""Plot loss and validation Dice curves of a training run from its TensorBoard events or its log.

    .venv/bin/python scripts/plot_training.py runs/train_lap [--out bundle/docs/training_curves.png]
    .venv/bin/python scripts/plot_training.py runs/gpu/train_A.log   (the StatsHandler lines of a run's output)
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def scalars(log_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All scalar series of every event file under ``log_dir``: tag -> (steps, values)."""
    out: dict[str, list] = {}
    for f in sorted(Path(log_dir).glob("events.out.tfevents*")):
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    res = {}
    for tag, pairs in out.items():
        pairs = sorted(dict(pairs).items())  # a resumed run may log a step twice: keep the last
        res[tag] = (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
    return res


_ITER = re.compile(r"Epoch: (\d+)/\d+, Iter: (\d+)/(\d+) -- train_loss: ([-+\d.eE]+)")
_EPOCH = re.compile(r"Epoch\[(\d+)\] Metrics -- (\w+): ([-+\d.eE]+)")


def log_scalars(log_file: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The same series from a run's text log (MONAI StatsHandler lines): train_loss per iteration
    (step = (epoch - 1) * iterations per epoch + iteration) and epoch-level metrics."""
    out: dict[str, dict] = {}
    for line in Path(log_file).read_text(errors="replace").splitlines():
        if m := _ITER.search(line):
            e, i, n, v = int(m[1]), int(m[2]), int(m[3]), float(m[4])
            out.setdefault("train_loss", {})[(e - 1) * n + i] = v
        elif m := _EPOCH.search(line):
            out.setdefault(m[2], {})[int(m[1])] = float(m[3])
    return {tag: (np.array(sorted(d)), np.array([d[k] for k in sorted(d)])) for tag, d in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("log_dir", help="folder with TensorBoard event files, or a text log file")
    ap.add_argument("--out", default="bundle/docs/training_curves.png")
    ap.add_argument("--smooth", type=int, default=25, help="moving-average window for the loss")
    args = ap.parse_args()
    s = log_scalars(args.log_dir) if Path(args.log_dir).is_file() else scalars(args.log_dir)
    if not s:
        raise SystemExit(f"no training scalars found in {args.log_dir}")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if "train_loss" in s:
        x, y = s["train_loss"]
        ax1.plot(x, y, color="0.8", lw=0.8, label="per iteration")
        if len(y) >= args.smooth:
            k = np.ones(args.smooth) / args.smooth
            ax1.plot(x[args.smooth - 1:], np.convolve(y, k, mode="valid"), color="C0", label=f"mean of {args.smooth}")
        ax1.set(xlabel="iteration", ylabel="DiceCE loss", title="training loss")
        ax1.legend()
    for tag, color in (("val_mean_dice", "C1"), ("train_mean_dice", "C2")):
        if tag in s:
            ax2.plot(*s[tag], "o-", color=color, label=tag)
    ax2.set(xlabel="epoch", ylabel="Dice", title="Dice (validation: whole slices + post-processing)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    for tag in ("val_mean_dice",):
        if tag in s:
            print(f"{tag}: best {s[tag][1].max():.4f} at epoch {int(s[tag][0][s[tag][1].argmax()])}; last {s[tag][1][-1]:.4f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
