"""Where the network's time goes on CPU: ONNX Runtime's per-operator profile of one 1024 x 1024 window.

    .venv/bin/python scripts/profile_network.py [--ckpt bundle/models/model.pt] [--batch 2] [--runs 3] [--out FILE.md]

Builds the network of ``bundle/configs/inference.json`` (conv + BN fused, as the inference path does), exports it
with the ONNX Runtime backend's own export and session options (``plimonai.networks.backends.export_onnx``,
``ort_session_options``), profiling on, and runs ``--runs`` profiled batches.
Prints seconds per window, GFLOP/s against the fp32 matmul peak measured in the same run, the share of time per
operator type, and the convolution kernels' own GFLOP/s (what the network would reach without the memory-bound
operators between them).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> None:
    import onnxruntime as ort
    from bench_inference import conv_flops, matmul_peak_gflops
    from monai.bundle import ConfigParser

    from plimonai.networks.backends import export_onnx, ort_session_options
    from plimonai.networks.fusion import fuse_conv_bn
    from plimonai.runtime import setup_runtime
    from plimonai.training import load_weights

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", default=str(ROOT / "bundle/models/model.pt"))
    ap.add_argument("--batch", type=int, default=2, help="windows per run (inference.json's sw_batch_size)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default="", help="also write the report as markdown here")
    ap.add_argument("--split_decoders", type=int, default=1, help="1: the exported form (SplitDecoder), 0: concat decoders")
    a = ap.parse_args()
    threads = setup_runtime()["threads"]
    cfg = ConfigParser()
    cfg.read_config(str(ROOT / "bundle/configs/inference.json"))
    net = cfg.get_parsed_content("network_def", lazy=False).eval()
    if a.ckpt and os.path.isfile(a.ckpt):
        net.load_state_dict(load_weights(a.ckpt))
    net = fuse_conv_bn(net)
    flops = conv_flops(net, (1024, 1024))  # the split decoders run the same convolutions
    opts = ort_session_options(threads)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(os.environ.get("TMPDIR", "/tmp")) / "plimonai_ort_profile")
    onnx = export_onnx(net, 1, net.size_multiple, split=bool(a.split_decoders))
    sess = ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((a.batch, 1, 1024, 1024), dtype=np.float32)
    sess.run(None, {"image": x})  # warm-up (its events are dropped below)
    t0 = time.perf_counter()
    for _ in range(a.runs):
        sess.run(None, {"image": x})
    per_window = (time.perf_counter() - t0) / a.runs / a.batch
    events = json.load(open(sess.end_profiling()))
    runs = [e for e in events if e.get("name") == "model_run"]
    start = runs[1]["ts"] if len(runs) > 1 else 0  # skip the warm-up run
    by_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            by_op[e["args"].get("op_name", "?")] += e["dur"]
    total = sum(by_op.values()) or 1
    peak = matmul_peak_gflops()
    gflops = flops / per_window / 1e9
    conv_share = (by_op.get("Conv", 0) + by_op.get("ConvTranspose", 0)) / total
    conv_gflops = flops / (per_window * conv_share) / 1e9 if conv_share else float("nan")
    lines = [
        "# Network profile (scripts/profile_network.py)",
        "",
        f"ONNX Runtime {ort.__version__}, {threads} threads, batch {a.batch} of 1024 x 1024, weights {a.ckpt}, "
        f"decoders {'split (SplitDecoder, the exported form)' if a.split_decoders else 'with concat'}; "
        f"fp32 matmul peak measured in the run {peak:.1f} GFLOP/s; {flops / 1e9:.1f} GFLOP per window (convolutions).",
        "",
        f"- {per_window:.3f} s per window: {gflops:.1f} GFLOP/s, **{100 * gflops / peak:.0f}% of the matmul peak**",
        f"- convolution kernels alone (Conv + ConvTranspose, {100 * conv_share:.0f}% of operator time): "
        f"{conv_gflops:.1f} GFLOP/s, {100 * conv_gflops / peak:.0f}% of the peak",
        "",
        "| operator | share of operator time |",
        "|---|---|",
    ] + [f"| {op} | {100 * v / total:.1f}% |" for op, v in by_op.most_common()]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)
        print(f"written {a.out}")


if __name__ == "__main__":
    main()
