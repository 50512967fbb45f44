#!/usr/bin/env python
"""Benchmark MPI inference: makespan of dynamic vs static dispatch (2 ranks) and throughput 1 vs 2 ranks.

Writes synthetic slices of mixed sizes (``tests/helpers.make_slice``), then runs the bundle's merged
``inference.json`` + ``mpi_inference.json`` under ``mpiexec -n R`` with a small random-weight
``PLIUNet`` (cost grows with the slice area, like the real one). Makespan = barrier before
``run`` to barrier after it on rank 0 (start-up and imports excluded). Results go to stdout and
``bundle/docs/bench_mpi.md``.

    .venv/bin/python scripts/bench_mpi.py                  # ~2-3 min on 2 cores
    .venv/bin/python scripts/bench_mpi.py --slices 32 --orders random
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

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [str(ROOT / "bundle/configs/inference.json"), str(ROOT / "bundle/configs/mpi_inference.json")]
META = str(ROOT / "bundle/configs/metadata.json")
SIDES = (320, 512, 768, 1024, 1536)  # slice heights; widths are 1.25x
NETWORK = {"_target_": "plimonai.networks.PLIUNet", "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16, 32]}


def make_slices(d: Path, n: int, seed: int, order: str) -> tuple[Path, list[tuple[int, int]]]:
    """``n`` TIFF slices of mixed sizes in ``d``; ``order`` "random" (seeded) or "alternating" (big, small,
    ...: round-robin's worst case). Returns the slice list and the shapes in list order."""
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
        network_def=NETWORK, roi_size=[512, 512], ckpt_path="", overlay_max_size=256,
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
        ranks = sorted({int(r["rank"]) for r in rows})
        per_rank = {k: [r for r in rows if int(r["rank"]) == k] for k in ranks}
        res = {"wall": wall, "ok": sum(r["status"] == "ok" for r in rows),
               "threads": wf.parser.get_parsed_content("runtime")["threads"],
               "slices": {k: len(v) for k, v in per_rank.items()},
               "busy": {k: round(sum(float(r["seconds"]) for r in v), 2) for k, v in per_rank.items()}}
        Path(a.result).write_text(json.dumps(res))


def launch(nproc: int, dispatch: str, slice_list: Path, work: Path, mpiexec: str) -> dict:
    out, result = work / f"out-{nproc}-{dispatch}", work / f"res-{nproc}-{dispatch}.json"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [mpiexec, "-n", str(nproc), sys.executable, __file__, "--worker", "--slice_list", str(slice_list),
           "--output_dir", str(out), "--dispatch", dispatch, "--result", str(result)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return json.loads(result.read_text())


def machine() -> str:
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        models = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
        cpu = models[0] if models else cpu
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cores} cores usable ({os.cpu_count()} logical CPUs, {cpu}); load average {load:.1f} at start"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--orders", default="random,alternating",
                   help="slice orders to compare static and dynamic on (the first also runs 1 rank)")
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
    print(env_machine)
    runs, mpix = {}, 0.0
    with tempfile.TemporaryDirectory(prefix="bench_mpi_") as tmp:
        work = Path(tmp)
        for k, order in enumerate(orders):
            slice_list, shapes = make_slices(work / order, a.slices, a.seed, order)
            mpix = sum(h * w for h, w in shapes) / 1e6
            print(f"{a.slices} slices, {order} order, {mpix:.1f} Mpx: heights {[s[0] for s in shapes]}")
            for nproc, dispatch in ((1, "dynamic"), (2, "static"), (2, "dynamic"))[(0 if k == 0 else 1):]:
                t0 = time.perf_counter()
                runs[(order, nproc, dispatch)] = r = launch(nproc, dispatch, slice_list, work, mpiexec)
                r["slices_per_hour"] = 3600 * a.slices / r["wall"]
                print(f"  {nproc} rank(s) {dispatch if nproc > 1 else '-':8s}: makespan {r['wall']:6.1f} s, "
                      f"slices per rank {list(r['slices'].values())}, busy s per rank {list(r['busy'].values())}, "
                      f"{r['threads']} threads/rank  ({time.perf_counter() - t0:.0f} s with start-up)")
    ratios = {o: runs[(o, 2, "static")]["wall"] / runs[(o, 2, "dynamic")]["wall"] for o in orders}
    one = runs[(orders[0], 1, "dynamic")]
    speedup = one["wall"] / runs[(orders[0], 2, "dynamic")]["wall"]
    for o, r in ratios.items():
        print(f"makespan static / dynamic, 2 ranks, {o} order: {r:.2f}")
    print(f"throughput ({orders[0]} order): 1 rank {one['slices_per_hour']:.0f} slices/h, 2 ranks dynamic "
          f"{runs[(orders[0], 2, 'dynamic')]['slices_per_hour']:.0f} slices/h ({speedup:.2f}x)")
    if a.doc:
        write_doc(Path(a.doc), a, env_machine, mpix, runs, ratios, speedup, orders[0])
        print(f"wrote {a.doc}")


def write_doc(path: Path, a, env_machine: str, mpix: float, runs: dict, ratios: dict, speedup: float, first: str) -> None:
    cmd = " ".join(["python", "scripts/bench_mpi.py"] + sys.argv[1:])
    lines = [
        "# MPI inference benchmark", "",
        f"`{cmd}` on {time.strftime('%Y-%m-%d')}.", "",
        f"- Machine: {env_machine}.",
        f"- Data: {a.slices} synthetic slices (`tests/helpers.make_slice`), heights from {list(SIDES)} px (width 1.25x), "
        f"{mpix:.1f} Mpx in all; *random* order (seed {a.seed}) and *alternating* big/small order (round-robin's worst case).",
        "- Network: random-weight `PLIUNet` channels (4, 8, 16, 32), roi 512, full post-processing and mask/overlay writing.",
        "- Makespan: barrier before `run` to barrier after it on rank 0 (imports and start-up excluded); threads per "
        "rank from `plimonai.distributed.cores_per_rank`; busy = sum of per-slice seconds (load + compute) per rank.", "",
        "| order | ranks | dispatch | makespan (s) | slices/hour | slices per rank | busy s per rank |",
        "|---|---|---|---|---|---|---|",
    ]
    for (order, nproc, dispatch), r in runs.items():
        lines.append(f"| {order} | {nproc} | {dispatch if nproc > 1 else '-'} | {r['wall']:.1f} | {r['slices_per_hour']:.0f} | "
                     f"{list(r['slices'].values())} | {list(r['busy'].values())} |")
    lines.append("")
    lines += [f"- **Makespan static / dynamic, 2 ranks, {o} order: {r:.2f}** (> 1: dynamic finishes first)." for o, r in ratios.items()]
    lines += [f"- **Throughput 2 ranks (dynamic) / 1 rank, {first} order: {speedup:.2f}x.**", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
