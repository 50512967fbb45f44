"""Which form of the trained network a workflow runs: the PyTorch module or an exported model.

``inference.json`` (and ``evaluate.json``) build their ``network`` with::

    "network": "$plimonai.networks.load_backend(@network_backend, @network_def, @ts_path, @device)"

- ``"eager"`` (default): the ``network_def`` module on ``device``; weights come from ``ckpt_path``
  through MONAI's ``CheckpointLoader`` (``torch.load(weights_only=True)``) and conv + batch norm are
  folded by the ``FuseConvBN`` handler. Exactly what the configs did before backends existed.
- ``"torchscript"``: the TorchScript module at ``ts_path`` (``models/model.ts``, written by
  ``python -m monai.bundle ckpt_export``), which carries its own weights: the configs disable the
  checkpoint loader and the fusion for it.
- ``"onnxruntime"``: reserved for a later release (an ONNX Runtime session wrapped as a callable
  module); it raises ``NotImplementedError`` for now.
"""

from __future__ import annotations

import os

import torch
from torch import nn

__all__ = ["BACKENDS", "PLANNED_BACKENDS", "load_backend", "uses_checkpoint"]

BACKENDS = ("eager", "torchscript")
PLANNED_BACKENDS = ("onnxruntime",)


def uses_checkpoint(backend: str) -> bool:
    """True when the backend's weights come from ``ckpt_path`` (the state dict), not from an exported model."""
    return _check(backend) == "eager"


def _check(backend: str) -> str:
    b = str(backend).strip().lower()
    if b in BACKENDS:
        return b
    if b in PLANNED_BACKENDS:
        raise NotImplementedError(
            f"network_backend {backend!r} is not implemented yet (planned); use one of {BACKENDS}")
    raise ValueError(f"unknown network_backend {backend!r}: use one of {BACKENDS}")


def load_backend(
    backend: str,
    network_def: nn.Module | None,
    ts_path: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """The network a workflow runs, for ``backend`` (see the module docstring).

    Args:
        backend: ``"eager"`` or ``"torchscript"`` (``"onnxruntime"`` is planned).
        network_def: the instantiated PyTorch network (used by ``"eager"`` only).
        ts_path: the TorchScript file (used by ``"torchscript"`` only).
        device: where the network runs.

    Returns:
        an ``nn.Module`` (a ``torch.jit.ScriptModule`` for ``"torchscript"``) on ``device``; the
        TorchScript module is in eval mode.
    """
    b = _check(backend)
    if b == "eager":
        if network_def is None:
            raise ValueError("network_backend 'eager' needs network_def")
        return network_def.to(device)
    if not ts_path or not os.path.isfile(ts_path):
        raise FileNotFoundError(
            f"network_backend 'torchscript' needs the exported model: {ts_path!r} not found "
            "(make it with `python -m monai.bundle ckpt_export network_def --filepath models/model.ts ...`)")
    # TorchScript archives hold code as well as weights: load only models from a source you trust.
    net = torch.jit.load(str(ts_path), map_location=device)
    return net.eval()
