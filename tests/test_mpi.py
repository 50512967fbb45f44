"""Distributed inference with MPI: `mpiexec -n 2` over small slices with the deterministic ThresholdNet.

Subprocess runs import this module (``PYTHONPATH=tests``) for the test-only networks below.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tifffile
import torch
from monai.bundle import ConfigWorkflow

from helpers import ThresholdNet, make_slice
from plimonai.distributed import LocalDispatcher, StaticDispatcher, make_dispatcher, prefetched
from plimonai.io.writers import is_temp_path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [str(ROOT / "bundle/configs/inference.json"), str(ROOT / "bundle/configs/mpi_inference.json")]
META = str(ROOT / "bundle/configs/metadata.json")
_local = Path(sys.executable).parent / "mpiexec"
MPIEXEC = str(_local) if _local.exists() else shutil.which("mpiexec")
try:
    import mpi4py  # noqa: F401
except ImportError:
    mpi4py = None
needs_mpi = pytest.mark.skipif(MPIEXEC is None or mpi4py is None, reason="needs mpi4py and mpiexec")
TIMEOUT = 180  # seconds: a hung job fails the test instead of hanging it (generous: CI machines are shared)


class SlowNet(ThresholdNet):
    """ThresholdNet that sleeps ``delay`` seconds per forward (one forward per slice with a large roi)."""

    def __init__(self, delay: float = 0.3) -> None:
        super().__init__()
        self.delay = delay

    def forward(self, x):
        time.sleep(self.delay)
        return super().forward(x)


class CrashNet(ThresholdNet):
    """Raises while being built on MPI rank ``rank``: an uncaught exception in one rank only."""

    def __init__(self, rank: int = 1) -> None:
        super().__init__()
        from mpi4py import MPI

        if MPI.COMM_WORLD.Get_rank() == rank:
            raise RuntimeError(f"injected crash on rank {rank}")


SHAPES = [(200, 250), (120, 160), (240, 200), (150, 150), (180, 230), (130, 250), (210, 170), (160, 190)]


def make_slices(d: Path, n: int, broken: bool = False) -> Path:
    """``n`` small TIFF slices (and a corrupt one, second in the list); returns the slice list."""
    d.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        img, _ = make_slice(SHAPES[i % len(SHAPES)], seed=i)
        tifffile.imwrite(d / f"s{i}.tif", img)
        names.append(f"s{i}.tif")
    if broken:
        (d / "broken.tif").write_bytes(b"\x00" * 100)
        names.insert(1, "broken.tif")
    (d / "list.txt").write_text("\n".join(names) + "\n")
    return d / "list.txt"


THRESH_NET = "{'_target_': 'helpers.ThresholdNet'}"


def command(nproc: int, slice_list: Path, out: Path, *extra: str, net: str = THRESH_NET) -> list[str]:
    """The documented command line (under ``mpiexec -n nproc`` unless ``nproc`` is 0)."""
    run = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", repr(CONFIGS),
           "--meta_file", META, "--bundle_root", str(ROOT / "bundle"), "--slice_list", str(slice_list), "--output_dir", str(out),
           "--network_def", net, "--roi_size", "[256,256]", "--ckpt_path", "", "--min_component_area", "200",
           "--max_hole_area", "100", *extra]
    return [MPIEXEC, "-n", str(nproc), *run] if nproc else run


ENV = {**os.environ, "PYTHONPATH": str(ROOT / "tests") + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "OMP_NUM_THREADS": "1"}


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)


def summary(out: Path) -> list[dict]:
    with open(out / "summary.csv") as f:
        return list(csv.DictReader(f))


def masks(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*_mask.tif"))


# ---------------------------------------------------------------- no mpiexec needed


def test_dispatchers_and_prefetch():
    assert list(LocalDispatcher().indices(3)) == [0, 1, 2]
    assert list(StaticDispatcher(1, 3).indices(8)) == [1, 4, 7]
    assert isinstance(make_dispatcher("dynamic", None), LocalDispatcher)
    with pytest.raises(ValueError):
        make_dispatcher("round-robin", None)
    assert list(prefetched(iter(range(5)), lambda i: i * i)) == [0, 1, 4, 9, 16]

    def load(i):
        if i == 2:
            raise OSError("disk gone")
        return i

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for x in prefetched(iter(range(5)), load):
            got.append(x)
    assert got == [0, 1]


def test_rank_helpers_without_mpi():
    from plimonai.distributed import cores_per_rank, install_abort_hook, rank_device, row_gatherer
    from plimonai.runtime import available_cores

    assert cores_per_rank(None) == available_cores()
    assert rank_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    hook = sys.excepthook
    install_abort_hook(None)
    assert sys.excepthook is hook  # one process: nothing to abort
    assert row_gatherer(None)([{"slice": "a"}]) == [{"slice": "a", "rank": 0}]


@pytest.mark.parametrize("no_mpi", [False, True])
def test_single_process_fallback_merged_config(tmp_path, monkeypatch, no_mpi):
    """The merged config without mpiexec (MPI singleton, or no MPI at all) runs every slice in one process."""
    if no_mpi:
        monkeypatch.setenv("PLIMONAI_MPI", "0")
    elif mpi4py is None:
        pytest.skip("needs mpi4py")
    slice_list = make_slices(tmp_path / "in", 3, broken=True)
    out = tmp_path / "out"
    wf = ConfigWorkflow(config_file=CONFIGS, meta_file=META, workflow_type="inference", run_id="inference",
                        bundle_root=str(ROOT / "bundle"), output_dir=str(out), slice_list=str(slice_list),
                        network_def={"_target_": "helpers.ThresholdNet"}, roi_size=[256, 256], ckpt_path="",
                        min_component_area=200, max_hole_area=100)
    wf.initialize()
    with pytest.raises(RuntimeError):  # the broken slice makes the run fail, after all others are done
        wf.run()
    assert isinstance(wf.parser.get_parsed_content("dispatcher"), LocalDispatcher)
    rows = summary(out)
    assert [r["slice"] for r in rows] == ["s0", "broken", "s1", "s2"]
    assert [r["status"] for r in rows] == ["ok", "failed", "ok", "ok"] and {r["rank"] for r in rows} == {"0"}
    assert masks(out) == ["s0_mask.tif", "s1_mask.tif", "s2_mask.tif"]


# ---------------------------------------------------------------- mpiexec -n 2


COUNTER_SCRIPT = """
import json, sys, time
from mpi4py import MPI
from plimonai.distributed import make_dispatcher
comm = MPI.COMM_WORLD
got = []
for i in make_dispatcher("dynamic", comm).indices(60):
    got.append(i)
    if comm.rank == 0:
        time.sleep(0.1)  # busy without MPI calls: the others' claims must not wait for it
parts = comm.gather(got, root=0)
if comm.rank == 0:
    print(json.dumps(parts))
"""


@needs_mpi
def test_dynamic_counter_exactly_once_while_rank0_busy():
    r = run([MPIEXEC, "-n", "2", sys.executable, "-c", COUNTER_SCRIPT])
    assert r.returncode == 0, r.stderr[-2000:]
    parts = json.loads(r.stdout.strip().splitlines()[-1])
    assert sorted(parts[0] + parts[1]) == list(range(60))  # every index exactly once
    assert len(parts[1]) > 3 * len(parts[0])  # rank 1 kept claiming while rank 0 was busy


@needs_mpi
def test_dynamic_dispatch_corrupt_slice_fails_alone(tmp_path):
    slice_list = make_slices(tmp_path / "in", 6, broken=True)
    out = tmp_path / "out"
    r = run(command(2, slice_list, out, net="{'_target_': 'test_mpi.SlowNet', 'delay': 0.3}"))
    log = r.stdout + r.stderr
    assert r.returncode != 0, log[-3000:]  # the corrupt slice fails the job...
    rows = summary(out)
    names = [r["slice"] for r in rows]
    assert names == ["s0", "broken", "s1", "s2", "s3", "s4", "s5"]  # one row per slice: each processed once
    status = {r["slice"]: r["status"] for r in rows}
    assert status.pop("broken") == "failed" and set(status.values()) == {"ok"}  # ...alone
    assert "broken.tif" in {r["slice"]: r["error"] for r in rows}["broken"]
    assert {r["rank"] for r in rows} == {"0", "1"}  # both ranks worked
    assert masks(out) == [f"s{i}_mask.tif" for i in range(6)]
    assert not [p for p in out.iterdir() if is_temp_path(p)]
    assert "2 ranks (dynamic dispatch)" in log and "6 slices done, 1 failed, 0 skipped" in log
    assert "1 slice(s) FAILED: broken" in log and "aborting" not in log  # a clean failure, not an abort


@needs_mpi
def test_static_dispatch_round_robin(tmp_path):
    slice_list = make_slices(tmp_path / "in", 5)
    out = tmp_path / "out"
    r = run(command(2, slice_list, out, "--dispatch", "static"))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    rows = summary(out)
    assert [r["slice"] for r in rows] == [f"s{i}" for i in range(5)] and {r["status"] for r in rows} == {"ok"}
    assert [int(r["rank"]) for r in rows] == [0, 1, 0, 1, 0]
    assert masks(out) == [f"s{i}_mask.tif" for i in range(5)]
    assert "slices per rank: [3, 2]" in r.stdout and "5 slices done, 0 failed" in r.stdout
    # stack QC: each rank saved its own thumbnails, rank 0 alone wrote the report, after the gather
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("plimonai: QC report")] == [
        f"plimonai: QC report {out / 'report.html'}"]
    assert "MPI ranks" in (out / "report.html").read_text()
    assert sorted(p.name for p in (out / "qc" / "thumbs").iterdir()) == [f"s{i}.png" for i in range(5)]


@needs_mpi
def test_uncaught_exception_aborts_all_ranks(tmp_path):
    """Rank 1 dies building its model while rank 0 waits in a collective: the job must end, not hang."""
    slice_list = make_slices(tmp_path / "in", 2)
    t0 = time.monotonic()
    r = run(command(2, slice_list, tmp_path / "out", net="{'_target_': 'test_mpi.CrashNet', 'rank': 1}"))
    assert r.returncode != 0 and time.monotonic() - t0 < TIMEOUT
    # the job ended (no hang) because rank 1 failed; once in a loaded full-suite run the hook's message
    # and the root cause were missing from the captured stderr (only MONAI's wrapper line): see the notes
    assert "CrashNet" in r.stderr or "injected crash on rank 1" in r.stderr


def _job_pids(marker: str) -> list[int]:
    """Processes whose command line contains ``marker`` (this test's unique output folder)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if marker in (p / "cmdline").read_bytes().decode(errors="ignore"):
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


@needs_mpi
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_kill_and_resume(tmp_path):
    n = 8
    slice_list = make_slices(tmp_path / "in", n)
    out = tmp_path / "out"
    cmd = command(2, slice_list, out, net="{'_target_': 'test_mpi.SlowNet', 'delay': 0.6}")
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while (len(masks(out)) if out.is_dir() else 0) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "job ended or stalled before 2 masks"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # mpiexec; Hydra then kills the ranks
        proc.wait()
    deadline = time.monotonic() + 20
    while (pids := _job_pids(str(out))) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:  # ranks of this job that outlived their launcher
        os.kill(pid, signal.SIGKILL)

    done = masks(out)
    assert 2 <= len(done) < n, done
    assert not (out / "summary.csv").exists()  # killed before the end
    mtimes = {m: (out / m).stat().st_mtime_ns for m in done}
    for m in done:  # only complete masks carry the final name
        assert tifffile.imread(out / m).shape == SHAPES[int(m[1:].split("_")[0])]
    todo = sorted(set(f"s{i}" for i in range(n)) - {m.split("_")[0] for m in done})
    (out / f".{todo[0]}_mask.tif.tmp-999999").write_bytes(b"II*\x00half")  # a half-written mask: not done

    r = run(command(2, slice_list, out))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    rows = summary(out)
    assert [r["slice"] for r in rows] == [f"s{i}" for i in range(n)]
    status = {r["slice"]: r["status"] for r in rows}
    assert {s for s, v in status.items() if v == "skipped"} == {m.split("_")[0] for m in done}
    assert {s for s, v in status.items() if v == "ok"} == set(todo)  # the rest, once each
    assert masks(out) == [f"s{i}_mask.tif" for i in range(n)]
    assert {m: (out / m).stat().st_mtime_ns for m in done} == mtimes  # nothing redone
    assert tifffile.imread(out / f"{todo[0]}_mask.tif").shape == SHAPES[int(todo[0][1:])]
    assert f"{len(todo)} slices done, 0 failed, {len(done)} skipped" in r.stdout
