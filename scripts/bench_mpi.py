#!/usr/bin/env python
"""Benchmark MPI inference: makespan of dynamic vs static dispatch (2 ranks) and throughput 1 vs 2 ranks.

Writes synthetic slices of mixed sizes (``tests/helpers.make_slice``) in a random and in an
alternating big/small order (round-robin's worst case), then runs the bundle's merged
``inference.json`` + ``mpi_inference.json`` under ``mpiexec -n R``. Networks:

- ``unet`` (default): small random-weight ``PLIUNet``; compute grows with the slice area.
- ``sleep``: sleeps in proportion to the window area without using a core, which isolates the
  dispatch itself from CPU contention (e.g. a machine shared with other jobs).

Makespan = barrier before ``run`` to barrier after it on rank 0 (imports and start-up excluded).
Results go to stdout and a section of ``bundle/docs/bench_mpi.md`` (one section per network).

    .venv/bin/python scripts/bench_mpi.py                  # ~2 min on 2 cores
    .venv/bin/python scripts/bench_mpi.py --network sleep --orders alternating
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [str(ROOT / "bundle/configs/inference.json"), str(ROOT / "bundle/configs/mpi_inference.json")]
META = str(ROOT / "bundle/configs/metadata.json")
SIDES = (320, 512, 768, 1024, 1536)  # slice heights; widths are 1.25x
NETWORKS = {
    "unet": {"_target_": "plimonai.networks.PLIUNet", "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16, 32]},
    "sleep": {"_target_": "bench_mpi.SleepNet", "seconds_per_mpx": 0.25},
}
NETWORK_TEXT = {
    "unet": "random-weight `PLIUNet` channels (4, 8, 16, 32)",
    "sleep": "`SleepNet`: 0.25 s of sleep per million window pixels (no CPU), threshold output",
}


class SleepNet(torch.nn.Module):
    """Costs ``seconds_per_mpx`` of wall time per million input pixels without using a core; outputs
    threshold logits (like ``tests/helpers.ThresholdNet``). Isolates dispatch from CPU contention."""

    def __init__(self, seconds_per_mpx: float = 0.25) -> None:
        super().__init__()
        self.seconds_per_mpx = seconds_per_mpx
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds_per_mpx * x[:, :1].numel() / 1e6)
        t = 40.0 * (x[:, :1] - 0.25) + 0 * self.dummy
        return torch.cat([-t, t], dim=1)


def make_slices(d: Path, n: int, seed: int, order: str) -> tuple[Path, list[tuple[int, int]]]:
    """``n`` TIFF slices of mixed sizes in ``d``; ``order`` "random" (seeded) or "alternating" (big, small,
    ...). Returns the slice list and the shapes in list order."""
    import numpy as np
    import tifffile

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import make_slice

    rng = np.random.default_rng(seed)
    sides = [SIDES[i % len(SIDES)] for i in range(n)]
    if order == "alternating":
        s = sorted(sides)
        sides = [x for pair in zip(s[::-1], s) for x in pair][:n]
    else:
        rng.shuffle(sides)
    d.mkdir(parents=True, exist_ok=True)
    names, shapes = [], []
    for i, h in enumerate(sides):
        shape = (h, int(h * 1.25))
        tifffile.imwrite(d / f"b{i:03d}.tif", make_slice(shape, seed=i)[0])
        names.append(f"b{i:03d}.tif")
        shapes.append(shape)
    (d / "list.txt").write_text("\n".join(names) + "\n")
    return d / "list.txt", shapes


def worker(a: argparse.Namespace) -> None:
    """One rank: run the workflow between two barriers; rank 0 writes the figures as JSON."""
    from monai.bundle import ConfigWorkflow

    from plimonai.distributed import rank_of, world
    from plimonai.handlers import read_summary

    comm = world()
    wf = ConfigWorkflow(
        config_file=CONFIGS, meta_file=META, workflow_type="inference", run_id="inference",
        bundle_root=str(ROOT / "bundle"), output_dir=a.output_dir, slice_list=a.slice_list, dispatch=a.dispatch,
        network_def=NETWORKS[a.network], roi_size=[512, 512], ckpt_path="", overlay_max_size=256,
    )
    wf.initialize()
    if comm is not None:
        comm.Barrier()
    t0 = time.perf_counter()
    wf.run()
    if comm is not None:
        comm.Barrier()
    wall = time.perf_counter() - t0
    if rank_of(comm) == 0:
        rows = read_summary(Path(a.output_dir) / "summary.csv")
        per_rank = {k: [r for r in rows if int(r["rank"]) == k] for k in sorted({int(r["rank"]) for r in rows})}
        res = {"wall": wall, "ok": sum(r["status"] == "ok" for r in rows),
               "threads": wf.parser.get_parsed_content("runtime")["threads"],
               "slices": [len(v) for v in per_rank.values()],
               "busy": [round(sum(float(r["seconds"]) for r in v), 2) for v in per_rank.values()]}
        Path(a.result).write_text(json.dumps(res))


def launch(nproc: int, dispatch: str, slice_list: Path, work: Path, mpiexec: str, network: str) -> dict:
    out, result = work / f"out-{nproc}-{dispatch}", work / f"res-{nproc}-{dispatch}.json"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [mpiexec, "-n", str(nproc), sys.executable, __file__, "--worker", "--slice_list", str(slice_list),
           "--output_dir", str(out), "--dispatch", dispatch, "--result", str(result), "--network", network]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return json.loads(result.read_text())


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def machine() -> str:
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        models = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")]
        cpu = models[0] if models else cpu
    return f"{_cores()} cores usable ({os.cpu_count()} logical CPUs, {cpu}); load average {_load():.1f} at start"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--network", choices=sorted(NETWORKS), default="unet")
    p.add_argument("--orders", default="random,alternating",
                   help="slice orders to compare static and dynamic on (the first also runs 1 rank)")
    p.add_argument("--repeat", type=int, default=1, help="runs per configuration; the fastest counts")
    p.add_argument("--doc", default=str(ROOT / "bundle/docs/bench_mpi.md"), help="markdown report ('' to skip)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for k in ("slice_list", "output_dir", "dispatch", "result"):
        p.add_argument(f"--{k}", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)

    local = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(local) if local.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit("mpiexec not found (pip install mpi4py mpich)")
    orders = [o.strip() for o in a.orders.split(",") if o.strip()]
    env_machine = machine()
    print(f"{env_machine}; network {a.network}")
    runs, mpix = {}, 0.0
    with tempfile.TemporaryDirectory(prefix="bench_mpi_") as tmp:
        work = Path(tmp)
        for k, order in enumerate(orders):
            slice_list, shapes = make_slices(work / order, a.slices, a.seed, order)
            mpix = sum(h * w for h, w in shapes) / 1e6
            print(f"{a.slices} slices, {order} order, {mpix:.1f} Mpx: heights {[s[0] for s in shapes]}")
            for nproc, dispatch in ((1, "dynamic"), (2, "static"), (2, "dynamic"))[(0 if k == 0 else 1):]:
                t0 = time.perf_counter()
                tries = [launch(nproc, dispatch, slice_list, work, mpiexec, a.network) for _ in range(max(1, a.repeat))]
                runs[(order, nproc, dispatch)] = r = min(tries, key=lambda t: t["wall"])
                r["slices_per_hour"] = 3600 * a.slices / r["wall"]
                print(f"  {nproc} rank(s) {dispatch if nproc > 1 else '-':8s}: makespan {r['wall']:6.1f} s, "
                      f"slices per rank {r['slices']}, busy s per rank {r['busy']}, {r['threads']} threads/rank  "
                      f"({time.perf_counter() - t0:.0f} s with start-up)")
    ratios = {o: runs[(o, 2, "static")]["wall"] / runs[(o, 2, "dynamic")]["wall"] for o in orders}
    one, two = runs[(orders[0], 1, "dynamic")], runs[(orders[0], 2, "dynamic")]
    speedup = one["wall"] / two["wall"]
    for o, r in ratios.items():
        print(f"makespan static / dynamic, 2 ranks, {o} order: {r:.2f}")
    print(f"throughput ({orders[0]} order): 1 rank {one['slices_per_hour']:.0f} slices/h, 2 ranks dynamic "
          f"{two['slices_per_hour']:.0f} slices/h ({speedup:.2f}x)")
    if a.doc:
        write_doc(Path(a.doc), a, env_machine, mpix, runs, ratios, speedup, orders[0])
        print(f"wrote {a.doc}")


HEADER = """# MPI inference benchmark

Written by `scripts/bench_mpi.py` (one section per `--network`, replaced on each run).

- Data: synthetic slices (`tests/helpers.make_slice`), heights from {sides} px (width 1.25x), in a
  *random* order and an *alternating* big/small order (round-robin's worst case).
- Makespan: barrier before `run` to barrier after it on rank 0 (imports and start-up excluded);
  threads per rank from `plimonai.distributed.cores_per_rank`; busy = sum of per-slice seconds
  (load + compute) per rank; all masks and overlays written, roi 512.
"""


def write_doc(path: Path, a, env_machine: str, mpix: float, runs: dict, ratios: dict, speedup: float, first: str) -> None:
    """Replace this network's ``## Network: ...`` section of ``path`` (other sections are kept)."""
    title = f"## Network: {a.network}"
    lines = [
        title, "",
        f"`{' '.join(['python', 'scripts/bench_mpi.py', *sys.argv[1:]])}`"
        f" on {time.strftime('%Y-%m-%d')}: {NETWORK_TEXT[a.network]}; {a.slices} slices, {mpix:.1f} Mpx; "
        f"{env_machine}.", "",
        "| order | ranks | dispatch | makespan (s) | slices/hour | slices per rank | busy s per rank |",
        "|---|---|---|---|---|---|---|",
    ]
    for (order, nproc, dispatch), r in runs.items():
        lines.append(f"| {order} | {nproc} | {dispatch if nproc > 1 else '-'} | {r['wall']:.1f} | "
                     f"{r['slices_per_hour']:.0f} | {r['slices']} | {r['busy']} |")
    lines.append("")
    lines += [f"- **Makespan static / dynamic, 2 ranks, {o} order: {r:.2f}** (> 1: dynamic finishes first)."
              for o, r in ratios.items()]
    lines.append(f"- **Throughput 2 ranks (dynamic) / 1 rank, {first} order: {speedup:.2f}x.**")
    if _load() > _cores() / 2:
        lines.append(f"- Caveat: the machine was busy (load average {_load():.1f} on {_cores()} cores at the end), "
                     "so compute-bound figures vary from run to run; `--repeat N` keeps the fastest of N runs.")
    sections = {}
    if path.exists():
        for chunk in path.read_text().split("\n## ")[1:]:
            sections["## " + chunk.split("\n", 1)[0]] = "## " + chunk.rstrip("\n")
    sections[title] = "\n".join(lines)
    body = [HEADER.format(sides=list(SIDES))] + [sections[t] for t in sorted(sections)]
    path.write_text("\n".join(body).rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
