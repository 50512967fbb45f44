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


def test_accelerator_settings_cpu_and_mocked_cuda(monkeypatch):
    import torch

    from plimonai.runtime import accelerator_settings, window_bytes

    cpu = accelerator_settings("cpu")
    assert cpu["amp"] is False and cpu["sw_batch_size"] is None and cpu["pin_memory"] is False
    per = window_bytes((1024, 1024), (8, 16, 32, 64, 128))
    assert window_bytes((1024, 1024), (16, 32, 64, 128, 256)) > 1.9 * per  # wider nets: fewer windows a batch
    # selection logic without a GPU: pretend a card with bf16 / without, and with little / much free memory
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (int(80e9), int(80e9)))
    big = accelerator_settings("cuda:0")
    assert big["amp"] and big["amp_kwargs"]["dtype"] == torch.bfloat16 and big["pin_memory"] and big["non_blocking"]
    assert big["channels_last"] and big["sw_batch_size"] == 32  # capped
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (3 * per, int(8e9)))
    small = accelerator_settings("cuda:0")
    assert small["amp_kwargs"]["dtype"] == torch.float16 and small["sw_batch_size"] == 1
    assert torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False


def test_inference_config_wires_accelerator_settings():
    from pathlib import Path

    from monai.bundle import ConfigParser

    for cfg in ("inference.json", "evaluate.json"):
        p = ConfigParser()
        p.read_config(str(Path(__file__).resolve().parent.parent / "bundle" / "configs" / cfg))
        assert p.get_parsed_content("sw_batch_size") == 2  # CPU: the config's own batch
        assert p["evaluator"]["amp"] == "$@accel['amp']" and p.get_parsed_content("accel")["amp"] is False
