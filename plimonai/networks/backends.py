"""Which form of the trained network a workflow runs: eager PyTorch, ONNX Runtime, ``torch.compile``
or an exported TorchScript model.

``inference.json`` (and ``evaluate.json``) build their ``network`` with::

    "network": "$plimonai.networks.load_backend(@network_backend, @network_def, @ts_path, @device)"

- ``"auto"`` (default): the fastest backend available for ``device`` (:func:`resolve_backend`):
  ONNX Runtime on CPU when ``onnxruntime`` and ``onnx`` are installed (``pip install plimonai[fast]``),
  else eager.
- ``"eager"``: the ``network_def`` module itself.
- ``"onnxruntime"``: :class:`OnnxRuntimeNetwork`, which exports the loaded (and conv+BN-fused)
  ``network_def`` to ONNX in memory on its first call and runs it in ONNX Runtime, one session per
  process and window size. CPU execution provider.
- ``"compile"``: :class:`CompiledNetwork`, ``torch.compile`` with inductor freezing on first call
  (tens of seconds of compilation; needs a C++ compiler on CPU, falls back to eager with a warning).
- ``"torchscript"``: the TorchScript module at ``ts_path`` (``models/model.ts``, written by
  ``python -m monai.bundle ckpt_export``), which carries its own weights: the configs disable the
  checkpoint loader and the fusion for it.

For every backend but ``"torchscript"`` the weights come from ``ckpt_path`` through MONAI's
``CheckpointLoader`` (``torch.load(weights_only=True)``) and conv + batch norm are folded by the
``FuseConvBN`` handler: the wrappers delegate ``state_dict``/``load_state_dict`` to the PyTorch module
(``.module``) and build their runtime form lazily, after both handlers ran.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import logging
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import split_decoders

__all__ = ["BACKENDS", "CompiledNetwork", "OnnxRuntimeNetwork", "export_onnx", "fix_spatial_shape", "load_backend", "ort_session",
           "ort_session_options", "resolve_backend", "uses_checkpoint"]

BACKENDS = ("auto", "eager", "onnxruntime", "compile", "torchscript")
logger = logging.getLogger(__name__)


def _check(backend: str) -> str:
    b = str(backend).strip().lower()
    if b not in BACKENDS:
        raise ValueError(f"unknown network_backend {backend!r}: use one of {BACKENDS}")
    return b


def onnxruntime_available() -> bool:
    """True when ONNX Runtime and the ONNX exporter's ``onnx`` package are importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def resolve_backend(backend: str, device: torch.device | str = "cpu") -> str:
    """The concrete backend ``"auto"`` stands for on ``device`` (others are returned checked).

    CPU: ``"onnxruntime"`` when installed (measured fastest here, see ``bundle/docs/bench_inference.md``),
    else ``"eager"``. CUDA: ``"eager"``.
    """
    b = _check(backend)
    if b != "auto":
        return b
    if torch.device(device).type == "cpu" and onnxruntime_available():
        return "onnxruntime"
    return "eager"


def uses_checkpoint(backend: str) -> bool:
    """True when the backend's weights come from ``ckpt_path`` (the state dict), not from an exported model."""
    return _check(backend) != "torchscript"


class _LazyRuntime(nn.Module):
    """Wraps the PyTorch network; its runtime form is built on first call and dropped when weights change."""

    def __init__(self, module: nn.Module, multiple: int = 1) -> None:
        super().__init__()
        self.module = module
        self.multiple = int(multiple)  # pad H, W to this (the exported graph has no internal padding)
        self._runtime = None

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._runtime = None
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

    def reset(self) -> None:
        """Forget the runtime form (call after changing the weights in place)."""
        self._runtime = None

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:  # as PLIUNet pads internally, so every backend sees the same pixels
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if (ph < h and pw < w) else "replicate")
        return x, h, w


def export_onnx(module: nn.Module, in_channels: int, multiple: int = 16, split: bool = True) -> bytes:
    """ONNX (opset 17, dynamic batch, height, width) of a PLIUNet-like ``module`` in eval mode, as bytes.

    ``split``: decoders without the concat (:func:`~plimonai.networks.fusion.split_decoders`, same outputs), ~9 % less
    time per window in ONNX Runtime (``scripts/profile_network.py``). Traced on a small ``4 * multiple`` square probe
    (the axes are dynamic; tracing a whole 1024 window cost ~1.3 s per process). ``module`` is not changed.
    """
    module.eval()
    exported = split_decoders(copy.deepcopy(module)) if split else module
    probe = torch.zeros(1, in_channels, 4 * multiple, 4 * multiple)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():  # trace-based exporter: the dynamo one needs onnxscript
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # PLIUNet's pad branch: inputs come padded
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter: no onnxscript dependency
        torch.onnx.export(exported, probe, buf, dynamo=False, input_names=["image"], output_names=["pred"],
                          opset_version=17,
                          dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}, "pred": {0: "b", 2: "h", 3: "w"}})
    return buf.getvalue()


def fix_spatial_shape(model: bytes, h: int, w: int) -> bytes:
    """The ONNX ``model`` of :func:`export_onnx` with its input and output fixed to ``h x w`` (batch stays dynamic).

    With concrete sizes ONNX Runtime's shape inference proves that a decoder's two branches have one shape, so
    its NCHWc optimiser fuses their sum and ReLU into the next conv; with symbolic sizes it inserts
    Reshape / Add / Relu instead (5-9 % more time per 1024 x 1024 window, ``scripts/profile_network.py``).
    """
    import onnx

    proto = onnx.load_from_string(model)
    for v in [*proto.graph.input, *proto.graph.output]:
        dims = v.type.tensor_type.shape.dim
        for i, size in ((2, h), (3, w)):
            dims[i].ClearField("dim_param")
            dims[i].dim_value = int(size)
    del proto.graph.value_info[:]  # the tracer's symbolic intermediate shapes: ORT infers them again
    return proto.SerializeToString()


def ort_session(model: bytes, opts, hw: tuple[int, int] | None = None):
    """A CPU ``InferenceSession`` of ``model`` (:func:`export_onnx`), its spatial size fixed to ``hw`` when given."""
    import onnxruntime as ort

    return ort.InferenceSession(fix_spatial_shape(model, *hw) if hw else model, opts, providers=["CPUExecutionProvider"])


def ort_session_options(threads: int | None = None, mem_arena: bool = True):
    """The CPU session options of :class:`OnnxRuntimeNetwork`: ``threads`` intra-op (default: torch's), one
    inter-op thread, every graph optimisation, the memory arena on or off."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_cpu_mem_arena = bool(mem_arena)
    return opts


class OnnxRuntimeNetwork(_LazyRuntime):
    """ONNX Runtime (CPU) form of ``module``: ``(B, C, H, W)`` float32 -> ``(B, K, H, W)`` logits.

    Exported in memory with the trace-based exporter on the first call (once per wrapper, so per process);
    one session per padded input size (:func:`fix_spatial_shape`, a sliding window run has one), at most
    ``max_shapes`` of them, then one session with dynamic sizes for any further size. Inputs are padded to
    ``multiple`` and cropped back.
    """

    def __init__(self, module: nn.Module, multiple: int | None = None, threads: int | None = None,
                 mem_arena: bool = True, max_shapes: int = 2) -> None:
        super().__init__(module, multiple or getattr(module, "size_multiple", None) or 16)
        self.threads = threads
        self.mem_arena = mem_arena  # False: activations freed after each run (about 0.35 GB less peak, 1024 windows)
        self.max_shapes = int(max_shapes)  # each session holds its own memory arena

    def _session(self, x: torch.Tensor):
        if self._runtime is None:
            self._runtime = {"model": export_onnx(self.module, x.shape[1], self.multiple), "sessions": {}}
        sessions = self._runtime["sessions"]
        hw = tuple(x.shape[-2:])
        key = hw if (hw in sessions or len(sessions) < self.max_shapes) else None
        if key not in sessions:
            opts = ort_session_options(self.threads, self.mem_arena)
            logger.info("ONNX Runtime session built for %s (%d threads)", key or "any size", opts.intra_op_num_threads)
            sessions[key] = ort_session(self._runtime["model"], opts, key)
        return sessions[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp, h, w = self._pad(x.detach().to("cpu", torch.float32).contiguous())
        out = self._session(xp).run(["pred"], {"image": xp.numpy()})[0]
        return torch.from_numpy(out)[..., :h, :w].to(x.device)


class CompiledNetwork(_LazyRuntime):
    """``torch.compile`` form of ``module`` (inductor, weights frozen as constants), compiled on first call.

    Falls back to the eager module, with a warning, when compilation fails (e.g. no C++ compiler).
    """

    def _build(self, x: torch.Tensor):
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # weights as constants: folds them into the kernels
        self.module.eval()
        try:
            fn = torch.compile(self.module, dynamic=False)
            with torch.no_grad():
                fn(x)
            return fn
        except Exception as e:  # noqa: BLE001 -- any compiler failure: keep the run going eagerly
            logger.warning("torch.compile failed (%s: %s); running eager", type(e).__name__, e)
            return self.module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._runtime is None:
            self._runtime = self._build(x)
        return self._runtime(x)


def load_backend(
    backend: str,
    network_def: nn.Module | None,
    ts_path: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    ort_mem_arena: bool = True,
) -> nn.Module:
    """The network a workflow runs, for ``backend`` (see the module docstring).

    Args:
        backend: one of :data:`BACKENDS`.
        network_def: the instantiated PyTorch network (every backend but ``"torchscript"``).
        ts_path: the TorchScript file (``"torchscript"`` only).
        device: where the network runs.
        ort_mem_arena: ``"onnxruntime"`` only: keep ONNX Runtime's CPU memory arena (faster reuse; False
            frees activations after each run, for memory-bound runs such as streamed PM slices).

    Returns:
        an ``nn.Module`` on ``device``, ``(B, C, H, W)`` -> ``(B, K, H, W)`` logits.
    """
    b = resolve_backend(backend, device)
    if b == "torchscript":
        if not ts_path or not os.path.isfile(ts_path):
            raise FileNotFoundError(
                f"network_backend 'torchscript' needs the exported model: {ts_path!r} not found "
                "(make it with `python -m monai.bundle ckpt_export network_def --filepath models/model.ts ...`)")
        # TorchScript archives hold code as well as weights: load only models from a source you trust.
        return torch.jit.load(str(ts_path), map_location=device).eval()
    if network_def is None:
        raise ValueError(f"network_backend {backend!r} needs network_def")
    net = network_def.to(device)
    if torch.device(device).type == "cuda":
        net = net.to(memory_format=torch.channels_last)  # NHWC: faster cuDNN convolutions under AMP
    if b == "onnxruntime":
        if not onnxruntime_available():
            raise ImportError("network_backend 'onnxruntime' needs onnxruntime and onnx: pip install 'plimonai[fast]'")
        if torch.device(device).type != "cpu":
            raise ValueError("network_backend 'onnxruntime' runs on CPU here; use 'eager' or 'compile' on GPU")
        return OnnxRuntimeNetwork(net, mem_arena=ort_mem_arena)
    if b == "compile":
        return CompiledNetwork(net)
    return net
