"""The inference evaluator: MONAI's ``SupervisedEvaluator`` with per-slice failure isolation."""

from __future__ import annotations

import logging
import time
import traceback

import torch

from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator
from monai.networks.utils import eval_mode

__all__ = ["SliceEvaluator"]

logger = logging.getLogger(__name__)


def _first(v):
    return v[0] if isinstance(v, (list, tuple)) else v


class SliceEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` that turns a failing slice into a ``status="failed"`` record.

    A slice that failed to load arrives as a record with ``error`` (see ``SliceDataset``); an
    exception in the network, inferer or post-processing is caught here. Either way the engine goes
    on with the next slice, and ``engine.state.output`` is a one-item list of dicts with ``status``
    (``"ok"``/``"failed"``), ``error``, ``name``, ``image_path`` and ``seconds`` for the handlers.
    Works with ``batch_size=1`` (whole slices of different sizes cannot be batched anyway).

    ``stream_inferer``: records flagged ``stream`` by the dataset (huge PM slices, see
    :class:`plimonai.inferers.StreamingSliceInferer`) go to it instead of the in-memory
    inferer and post-processing; it writes the outputs and returns the record for the handlers.
    """

    def __init__(self, *args, stream_inferer=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stream_inferer = stream_inferer

    def run(self) -> None:  # type: ignore[override]
        """Run over the slices; with none pending (all done before) fire only ``STARTED`` and ``COMPLETED``,
        so the summary (skipped rows) is still written, where MONAI's ``run`` would return silently."""
        if self.state.epoch_length == 0:
            self.state.iteration = self.state.epoch = 0
            self._fire_event(Events.STARTED)
            self._fire_event(Events.COMPLETED)
            return
        super().run()

    def _iteration(self, engine: Engine, batchdata: dict) -> list[dict]:
        t0 = time.perf_counter()
        name = str(_first(batchdata.get("name", "?")))
        path = _first(batchdata.get("image_path", batchdata.get("path", "")))
        load_s = float(_first(batchdata.get("load_seconds", 0.0)))
        err = batchdata.get("error")
        if err:
            return self._failed(engine, name, path, str(_first(err)), load_s, t0)
        stream = self.stream_inferer is not None and bool(_first(batchdata.get("stream", False)))
        try:
            with torch.inference_mode():  # lighter than no_grad; nothing here needs autograd
                if stream:
                    with eval_mode(self.network):
                        engine.state.output = [self.stream_inferer(path, self.network, engine.state.device, self.amp, self.amp_kwargs)]
                    engine.state.batch = engine.state.output
                else:
                    super()._iteration(engine, batchdata)
        except Exception as e:  # isolate the slice; the others still run
            logger.debug(traceback.format_exc())
            return self._failed(engine, name, path, f"{type(e).__name__}: {e}", load_s, t0)
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for out in outputs:
            out.update(status="ok", error="", name=name, image_path=path, seconds=load_s + time.perf_counter() - t0)
        engine.state.output = outputs
        return outputs

    @staticmethod
    def _failed(engine: Engine, name: str, path, msg: str, load_s: float, t0: float) -> list[dict]:
        logger.error("slice %s failed: %s", name, msg)
        rec = {"status": "failed", "error": msg, "name": name, "image_path": path, "seconds": load_s + time.perf_counter() - t0}
        engine.state.batch = [rec]
        engine.state.output = [rec]
        return engine.state.output
