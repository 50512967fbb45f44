import pytest

from plimonai import runtime


def test_allocator_tuning_is_idempotent():
    first = runtime.tune_allocator()
    assert runtime.tune_allocator() is first


@pytest.mark.parametrize(
    "env,affinity,expected",
    [
        ({}, 8, 8),
        ({"SLURM_CPUS_PER_TASK": "4"}, 8, 4),
        ({"LOCAL_WORLD_SIZE": "2"}, 8, 4),
        ({"SLURM_CPUS_PER_TASK": "32", "LOCAL_WORLD_SIZE": "4"}, 64, 8),
        ({"MPI_LOCALNRANKS": "3"}, 2, 1),
        ({"PLIMONAI_NUM_THREADS": "5", "LOCAL_WORLD_SIZE": "4"}, 8, 5),
    ],
)
def test_available_cores(monkeypatch, env, affinity, expected):
    for var in ("SLURM_CPUS_PER_TASK", "LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "PLIMONAI_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(affinity)))
    assert runtime.available_cores() == expected


def test_configure_threads_sets_torch(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        assert runtime.configure_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
