"""Seconds per training iteration (and per 1024 x 1024 inference forward) under each allocator setting.

    .venv/bin/python scripts/bench_training.py [--steps 12] [--out bundle/docs/bench_training.md]

Every variant runs in its own process (allocator settings are per process), on the same seeded
batch: the shipped training step (PLIUNet 8..128 from inference.json, 4 x 512 x 512 crops of a
synthetic LAP slice, DiceCE, AdamW), ``--steps`` timed iterations after 2 warm-up ones, then the
loss after those steps (equal across variants: the allocator must not change the arithmetic),
and eager forwards of one 1024 x 1024 window. Variants:

- glibc default (``PLIMONAI_ALLOCATOR=default``: what plain PyTorch gets),
- glibc + ``mallopt`` at run time (plimonai's default, ``plimonai.runtime.tune_allocator``),
- glibc + ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables,
- jemalloc and tcmalloc preloaded (``LD_PRELOAD``) where installed (Debian: ``libjemalloc2``,
  ``libtcmalloc-minimal4``), jemalloc also with decay disabled (``MALLOC_CONF``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(steps: int, forwards: int) -> dict:
    import numpy as np
    import torch
    from monai.bundle import ConfigParser
    from monai.losses import DiceCELoss

    from plimonai.runtime import setup_runtime
    from plimonai.synthetic import make_lap_slice
    from plimonai.transforms.intensity import NormalizeTransmittance

    info = setup_runtime()  # honours PLIMONAI_ALLOCATOR=default and a preloaded allocator
    cfg = ConfigParser()
    cfg.read_config(str(ROOT / "bundle/configs/inference.json"))
    img, mask = make_lap_slice(123)
    x = NormalizeTransmittance()(torch.from_numpy(img.astype(np.float32))[None])
    x = torch.as_tensor(np.asarray(x))
    corners = [(400, 600), (900, 1300), (1200, 400), (300, 1800)]
    xb = torch.stack([x[:, y:y + 512, c:c + 512] for y, c in corners])
    yb = torch.stack([torch.from_numpy(mask[None, y:y + 512, c:c + 512].astype(np.int64)) for y, c in corners])
    torch.manual_seed(0)
    net = cfg.get_parsed_content("network_def", lazy=False).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-5)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True)
    compiled = os.environ.get("PLIMONAI_BENCH_COMPILE") == "1"
    model = torch.compile(net) if compiled else net  # compiled on the first (warm-up) step

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return float(loss)

    t = time.perf_counter()
    for _ in range(2):
        step()
    warmup_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        loss = step()
    train_s = (time.perf_counter() - t) / steps
    net.eval()
    win = torch.rand(1, 1, 1024, 1024, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        net(win)
        t = time.perf_counter()
        for _ in range(forwards):
            net(win)
    fwd_s = (time.perf_counter() - t) / forwards
    return {"train_s": train_s, "loss": loss, "forward_s": fwd_s, "warmup_s": warmup_s, "threads": info["threads"],
            "allocator_tuned": info["allocator_tuned"]}


def find_lib(pattern: str) -> str | None:
    hits = sorted(glob.glob(f"/usr/lib/*/{pattern}") + glob.glob(f"/usr/lib/{pattern}") + glob.glob(f"/usr/local/lib/{pattern}"))
    return hits[0] if hits else None


def variants() -> list[tuple[str, dict]]:
    off = {"PLIMONAI_ALLOCATOR": "default"}
    out = [
        ("glibc default (plain PyTorch)", off),
        ("glibc + mallopt at run time (plimonai default)", {}),
        ("glibc + MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ env", {**off, "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
                                                                      "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}),
    ]
    je, tc = find_lib("libjemalloc.so.2"), find_lib("libtcmalloc_minimal.so.4") or find_lib("libtcmalloc.so.4")
    if je:
        out.append(("jemalloc preloaded (defaults)", {"LD_PRELOAD": je}))
        out.append(("jemalloc preloaded, decay off (MALLOC_CONF)",
                    {"LD_PRELOAD": je, "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}))
    if tc:
        out.append(("tcmalloc preloaded", {"LD_PRELOAD": tc}))
    # the allocator default plus torch.compile of the training step (what MONAI's SupervisedTrainer(compile=True)
    # does; train.json does not switch it on); the forward column stays eager
    out.append(("glibc + mallopt + torch.compile (training step)", {"PLIMONAI_BENCH_COMPILE": "1"}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--forwards", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bundle/docs/bench_training.md"))
    ap.add_argument("--variants", type=int, default=0,
                    help="only the first N rows (2: plain PyTorch and the plimonai default, e.g. for long --steps)")
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.steps, args.forwards)))
        return
    results = []
    for name, env in variants()[: args.variants or None]:
        e = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "PLIMONAI_ALLOCATOR")}
        e.update(env)
        r = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps), "--forwards", str(args.forwards)],
                           env=e, capture_output=True, text=True, cwd=ROOT)
        line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
        if r.returncode or not line:
            print(f"{name}: failed\n{r.stderr[-2000:]}")
            continue
        res = json.loads(line[0][7:])
        results.append((name, res))
        print(f"{name}: {res['train_s']:.2f} s/iter, loss {res['loss']:.5f}, forward {res['forward_s']:.2f} s", flush=True)
    base = results[0][1]
    lines = [
        "# Training and allocator benchmark (scripts/bench_training.py)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {base['threads']} torch threads. One training "
        f"iteration = PLIUNet 8..128, 4 x 512 x 512 crops, DiceCE, AdamW (the shipped model's recipe); mean of "
        f"{args.steps} iterations after 2 warm-up ones, same seeded batch in every process. Forward = eager "
        f"1024 x 1024 window, inference mode, mean of {args.forwards}.",
        "",
        "| allocator | s / training iteration | speed-up | loss after the steps | 2 warm-up iterations (s) "
        "| s / 1024 forward (eager) | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results:
        lines.append(f"| {name} | {r['train_s']:.2f} | {base['train_s'] / r['train_s']:.2f}x | {r['loss']:.5f} "
                     f"| {r['warmup_s']:.1f} | {r['forward_s']:.2f} | {base['forward_s'] / r['forward_s']:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
