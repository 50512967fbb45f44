"""Where the network's time goes on CPU: ONNX Runtime's per-operator profile of one 1024 x 1024 window.

    .venv/bin/python scripts/profile_network.py [--ckpt bundle/models/model.pt] [--batch 2] [--runs 3] [--rounds 5] [--out FILE.md]

Builds the network of ``bundle/configs/inference.json`` (conv + BN fused, as the inference path does), exports it
with the ONNX Runtime backend's own export and session options (``plimonai.networks.backends.export_onnx``,
``ort_session_options``, ``ort_session`` with the window size fixed). Times ``--rounds`` rounds of (fp32 matmul
peak, ``--runs`` network batches) and reports each round's share of its own peak and the median; then profiles
``--runs`` batches in a second session for the share of time per operator type and the convolution kernels' own
share of the peak (what the network would reach without the memory-bound operators between them).
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

    from plimonai.networks.backends import export_onnx, ort_session, ort_session_options
    from plimonai.networks.fusion import fuse_conv_bn
    from plimonai.runtime import setup_runtime
    from plimonai.training import load_weights

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", default=str(ROOT / "bundle/models/model.pt"))
    ap.add_argument("--batch", type=int, default=2, help="windows per run (inference.json's sw_batch_size)")
    ap.add_argument("--runs", type=int, default=3, help="network runs per round (and profiled runs)")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds, each with its own matmul peak")
    ap.add_argument("--out", default="", help="also write the report as markdown here")
    ap.add_argument("--split_decoders", type=int, default=1, help="1: the exported form (SplitDecoder), 0: concat decoders")
    ap.add_argument("--static", type=int, default=1, help="1: window size fixed in the graph (what inference runs), 0: dynamic")
    a = ap.parse_args()
    threads = setup_runtime()["threads"]
    cfg = ConfigParser()
    cfg.read_config(str(ROOT / "bundle/configs/inference.json"))
    net = cfg.get_parsed_content("network_def", lazy=False).eval()
    if a.ckpt and os.path.isfile(a.ckpt):
        net.load_state_dict(load_weights(a.ckpt))
    net = fuse_conv_bn(net)
    flops = conv_flops(net, (1024, 1024))  # the split decoders run the same convolutions
    onnx = export_onnx(net, 1, net.size_multiple, split=bool(a.split_decoders))
    hw = (1024, 1024) if a.static else None
    x = np.random.default_rng(0).random((a.batch, 1, 1024, 1024), dtype=np.float32)

    # timing: rounds of (matmul peak, network) back to back, no profiler; this host's speed drifts between
    # runs (the peak alone moves by 20-40 %), so each round's network time is set against its own peak
    sess = ort_session(onnx, ort_session_options(threads), hw)
    sess.run(None, {"image": x})  # warm-up
    rounds = []
    for _ in range(a.rounds):
        peak = matmul_peak_gflops()
        t0 = time.perf_counter()
        for _ in range(a.runs):
            sess.run(None, {"image": x})
        sec = (time.perf_counter() - t0) / a.runs / a.batch
        rounds.append((peak, sec, flops / sec / 1e9 / peak))
    del sess
    _, secs, shares = (np.array(v) for v in zip(*rounds))
    k = int(np.argsort(shares)[len(shares) // 2])  # the median round

    # where the time goes: a second session with ONNX Runtime's profiler on (it adds a little per operator)
    opts = ort_session_options(threads)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(os.environ.get("TMPDIR", "/tmp")) / "plimonai_ort_profile")
    sess = ort_session(onnx, opts, hw)
    sess.run(None, {"image": x})  # warm-up (its events are dropped below)
    for _ in range(a.runs):
        sess.run(None, {"image": x})
    events = json.load(open(sess.end_profiling()))
    runs = [e for e in events if e.get("name") == "model_run"]
    start = runs[1]["ts"] if len(runs) > 1 else 0  # skip the warm-up run
    by_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            by_op[e["args"].get("op_name", "?")] += e["dur"]
    total = sum(by_op.values()) or 1
    conv_share = (by_op.get("Conv", 0) + by_op.get("ConvTranspose", 0)) / total
    conv_share_peak = shares[k] / conv_share if conv_share else float("nan")
    lines = [
        "# Network profile (scripts/profile_network.py)",
        "",
        f"ONNX Runtime {ort.__version__}, {threads} threads, batch {a.batch} of 1024 x 1024, weights {a.ckpt}, "
        f"decoders {'split (SplitDecoder, the exported form)' if a.split_decoders else 'with concat'}, "
        f"{'static 1024 x 1024 graph (the inference form)' if a.static else 'dynamic H, W'}; "
        f"{flops / 1e9:.1f} GFLOP per window (convolutions). {a.rounds} rounds, each: the fp32 matmul peak "
        f"(2048 x 2048 product), then {a.runs} runs of the network.",
        "",
        "| round | matmul peak GFLOP/s | s per window | network GFLOP/s | share of the round's peak |",
        "|---|---|---|---|---|",
    ] + [f"| {i + 1} | {pk:.1f} | {sc:.3f} | {flops / sc / 1e9:.1f} | {100 * sh:.0f}% |" for i, (pk, sc, sh) in enumerate(rounds)] + [
        "",
        f"- median round: {secs[k]:.3f} s per window, {flops / secs[k] / 1e9:.1f} GFLOP/s, **{100 * shares[k]:.0f}% of the "
        f"matmul peak** (rounds {100 * shares.min():.0f}-{100 * shares.max():.0f}%)",
        f"- convolution kernels alone (Conv + ConvTranspose, {100 * conv_share:.0f}% of operator time in the profiled "
        f"runs): {100 * conv_share_peak:.0f}% of the peak",
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
