"""Speed of the bundle's inference against the naive MONAI pipeline, in one process, same slices.

    .venv/bin/python scripts/bench_inference.py [--n 3] [--ckpt bundle/models/model.pt] [--out bundle/docs/bench_inference.md]
    python scripts/bench_inference.py --device cuda --backends auto --out bundle/docs/bench_inference_gpu.md   (GPU node)

naive: LoadImage -> EnsureChannelFirst -> the same normalisation -> SlidingWindowInferer(roi 1024,
       MONAI defaults: overlap 0.25, constant blending, sw_batch_size 1) under torch.no_grad ->
       argmax -> KeepLargestConnectedComponent -> SaveImage; glibc's default allocator (run first,
       before this process tunes the allocator).
ours:  the documented command's workflow (inference.json through monai.bundle's ConfigWorkflow).
Prints seconds per slice, the ratio, the network-forward share of our time, achieved GFLOP/s
against this machine's fp32 matmul peak (GPU: bf16) measured in the same run, and Dice of both vs ground truth.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from ignite.engine import Events

from plimonai.metrics import binary_dice as dice
from plimonai.training import load_weights

ROOT = Path(__file__).resolve().parent.parent


def matmul_peak_gflops(n: int = 2048, reps: int = 10, device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """Achieved GFLOP/s of an n x n matrix product on ``device`` (the roofline the network is compared to)."""
    a, b = torch.rand(n, n, device=device, dtype=dtype), torch.rand(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    torch.mm(a, b)
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def conv_flops(net: torch.nn.Module, hw: tuple[int, int], in_ch: int = 1) -> float:
    """Multiply-adds x 2 of one forward at (1, in_ch, *hw), counted with hooks on convs."""
    total = [0.0]

    def hook(m, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        if isinstance(m, torch.nn.ConvTranspose2d):
            total[0] += 2.0 * inp[0].numel() * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
        else:
            total[0] += 2.0 * out.numel() * k

    hs = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.no_grad():
        net(torch.zeros(1, in_ch, *hw))
    for h in hs:
        h.remove()
    return total[0]


class ForwardTimer(torch.nn.Module):
    """Wraps a network and accumulates the wall time and windows of its forward calls."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.seconds, self.windows = net, 0.0, 0

    def forward(self, x):
        t = time.perf_counter()
        y = self.net(x)
        if isinstance(y, torch.Tensor) and y.is_cuda:
            torch.cuda.synchronize()  # GPU kernels run asynchronously: time them, not their launch
        self.seconds += time.perf_counter() - t
        self.windows += x.shape[0]
        return y


def make_slices(folder: Path, n: int, seed: int) -> list[tuple[Path, np.ndarray]]:
    from plimonai.synthetic import make_lap_slice

    out = []
    for i in range(n):
        img, mask = make_lap_slice(seed + i)
        p = folder / f"bench_{seed + i:05d}.tif"
        tifffile.imwrite(p, img, compression="zlib")
        out.append((p, mask))
    return out


def run_naive(slices, make_net, ckpt: str | None, out_dir: Path, device: str = "cpu") -> tuple[float, list[float]]:
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import EnsureChannelFirst, KeepLargestConnectedComponent, LoadImage, SaveImage

    from plimonai.data import TiffFileReader
    from plimonai.transforms.intensity import NormalizeTransmittance

    net = make_net()
    if ckpt:
        net.load_state_dict(load_weights(ckpt))
    net.eval().to(device)
    load = LoadImage(image_only=True, reader=TiffFileReader())  # MONAI's PIL reader would transpose
    ecf, norm = EnsureChannelFirst(channel_dim="no_channel"), NormalizeTransmittance()
    inferer = SlidingWindowInferer(roi_size=(1024, 1024))
    keep = KeepLargestConnectedComponent()
    save = SaveImage(output_dir=str(out_dir), output_postfix="naive", separate_folder=False, print_log=False)
    dices, t0, stamps = [], time.perf_counter(), []
    for path, gt in slices:
        img = norm(ecf(load(str(path))))
        with torch.no_grad():
            pred = inferer(img[None].to(device), net)[0].argmax(0, keepdim=True)
        pred = keep(pred.cpu())
        save(pred.to(torch.uint8))
        dices.append(dice(pred[0].numpy(), gt))
        stamps.append(time.perf_counter())
    return (time.perf_counter() - t0) / len(slices), dices, steady(stamps)


def steady(stamps: list[float]) -> float:
    """Seconds per slice after the first (the first slice carries the run's one-off costs)."""
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")


def run_ours(slices, list_file: Path, out_dir: Path, ckpt: str | None, overrides: dict):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=str(ROOT / "bundle/configs/inference.json"), meta_file=str(ROOT / "bundle/configs/metadata.json"),
        workflow_type="inference", run_id="inference", bundle_root=str(ROOT / "bundle"), slice_list=str(list_file),
        output_dir=str(out_dir), ckpt_path=ckpt or "", overwrite=True, **overrides,
    )
    wf.initialize()
    ev = wf.parser.get_parsed_content("evaluator")
    timer = ForwardTimer(ev.network)
    ev.network = timer  # times the forward passes of the real workflow
    stamps: list[tuple[float, float]] = []  # (wall, network seconds so far) at each slice's end
    ev.add_event_handler(Events.ITERATION_COMPLETED, lambda _: stamps.append((time.perf_counter(), timer.seconds)))
    t0 = time.perf_counter()
    wf.run()
    per_slice = (time.perf_counter() - t0) / len(slices)
    dices = [dice(tifffile.imread(out_dir / f"{p.stem}_mask.tif"), gt) for p, gt in slices]
    timer.steady_s = steady([w for w, _ in stamps])
    timer.steady_net_s = steady([n for _, n in stamps])
    return per_slice, dices, timer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--seed", type=int, default=20000, help="fresh generator seeds (never used in training)")
    ap.add_argument("--ckpt", default=str(ROOT / "bundle/models/model.pt"))
    ap.add_argument("--backends", default="auto,eager,onnxruntime",
                    help="comma-separated network_backend values to run ('compile' adds ~40 s of compilation)")
    ap.add_argument("--out", default=str(ROOT / "bundle/docs/bench_inference.md"))
    ap.add_argument("--device", default="cpu", help="cpu or cuda: both pipelines run there (GPU: our AMP/channels_last path)")
    args = ap.parse_args()
    ckpt = args.ckpt if Path(args.ckpt).is_file() else None

    from monai.bundle import ConfigParser

    from plimonai.networks import resolve_backend

    cfg = ConfigParser()
    cfg.read_config(str(ROOT / "bundle/configs/inference.json"))

    def make_net() -> torch.nn.Module:
        return cfg.get_parsed_content("network_def", lazy=False)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slices = make_slices(tmp, args.n, args.seed)
        (tmp / "list.txt").write_text("\n".join(str(p) for p, _ in slices))
        naive_s, naive_d, naive_steady = run_naive(slices, make_net, ckpt, tmp / "naive", args.device)  # default allocator: before tuning
        for b in [x.strip() for x in args.backends.split(",") if x.strip()]:
            over = {"network_backend": b, "device": f"$torch.device('{args.device}')"}
            s, d, timer = run_ours(slices, tmp / "list.txt", tmp / f"ours_{b}", ckpt, over)
            rows.append((b, resolve_backend(b, args.device), s, d, timer))
    gpu = torch.device(args.device).type == "cuda"
    # GPU: our path runs in bf16/fp16 autocast, so its roofline is the half-precision matmul peak
    peak = matmul_peak_gflops(8192, 20, args.device, torch.bfloat16) if gpu else matmul_peak_gflops()
    peak_name = "bf16 matmul peak" if gpu else "fp32 matmul peak"
    card = f"{torch.cuda.get_device_name()}, " if gpu else ""
    flops = conv_flops(make_net().eval(), (1024, 1024))
    default = cfg["network_backend"]
    lines = [
        "# Inference benchmark (scripts/bench_inference.py)",
        "",
        f"Machine: {card}{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}; {args.n} fresh synthetic LAP slices 2080 x 2776 (seeds {args.seed}..{args.seed + args.n - 1}); "
        f"weights: {os.path.relpath(ckpt, ROOT) if ckpt else 'untrained'}; "
        f"device {args.device}; measured {peak_name} {peak:.1f} GFLOP/s; {flops / 1e9:.1f} GFLOP per 1024 x 1024 window. "
        f"Every run is end to end (load, normalise, windows, stitch, post-process, write mask + overlay + summary), "
        f"the first slice's one-off costs (ONNX export and session, ~1-2 s) included.",
        "",
        "Steady state: seconds per slice from the end of the first slice to the end of the last (what a long slice "
        "list costs per slice), the non-network share of that time, and the network's GFLOP/s and share of the "
        "matmul peak in it (the first slice's forward calls carry the ONNX export and session build).",
        "",
        "| pipeline | backend | s / slice | speed-up vs naive | network share | non-network overhead | steady s / slice "
        "| steady speed-up | steady overhead | steady GFLOP/s | steady % of matmul peak | mean Dice |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| naive MONAI (default allocator, overlap 0.25, constant blend, KeepLargest, SaveImage) | eager | {naive_s:.2f} | 1.00x "
        f"| | | {naive_steady:.2f} | 1.00x | | | | {np.mean(naive_d):.4f} |",
    ]
    for b, concrete, s, d, timer in rows:
        net_s = timer.seconds / args.n
        gflops = flops * timer.windows / args.n / timer.steady_net_s / 1e9  # same windows on every slice
        name = f"plimonai inference.json{' (default)' if b == default else ''}"
        label = f"{b} -> {concrete}" if b == "auto" else b
        st, st_net = timer.steady_s, timer.steady_net_s
        lines.append(f"| {name} | {label} | {s:.2f} | **{naive_s / s:.2f}x** | {100 * net_s / s:.0f}% | {100 * (1 - net_s / s):.0f}% "
                     f"| {st:.2f} | **{naive_steady / st:.2f}x** | {100 * (1 - st_net / st):.0f}% "
                     f"| {gflops:.1f} | {100 * gflops / peak:.0f}% | {np.mean(d):.4f} |")
    lines += ["", f"Windows per slice: {rows[0][4].windows / args.n:.1f} (ours: roi 1024, overlap 0.125, gaussian blending, batch 2)."]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
