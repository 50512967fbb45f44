"""Progress bar over slices: Ignite's tqdm ``ProgressBar`` with the last slice's seconds and status."""

from __future__ import annotations

from ignite.engine import Engine
from ignite.handlers import ProgressBar

__all__ = ["SliceProgressBar"]


def _postfix(output) -> dict:
    outs = output if isinstance(output, list) else [output]
    last = outs[-1] if outs else {}
    return {"slice": str(last.get("name", ""))[:24], "s": round(float(last.get("seconds", 0.0)), 2), "status": last.get("status", "")}


class SliceProgressBar(ProgressBar):
    """tqdm bar: slices done / pending, ETA, and the last slice's name, seconds and status."""

    def __init__(self, desc: str = "slices", **kwargs) -> None:
        super().__init__(desc=desc, persist=True, **kwargs)

    def attach(self, engine: Engine, *args, **kwargs) -> None:  # type: ignore[override]
        super().attach(engine, output_transform=_postfix)
