"""Ignite handler: mask thumbnails during the run and ``OUT/report.html`` at its end (stack QC)."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

from ignite.engine import Engine, Events

__all__ = ["QCReportHandler"]

logger = logging.getLogger(__name__)


class QCReportHandler:
    """Saves a small thumbnail of every predicted mask (``OUT/qc/thumbs/NAME.png``, for the shape
    rule) and, at ``COMPLETED``, writes ``OUT/qc/run.json`` and ``OUT/report.html``
    (:func:`plimonai.qc.write_report`).

    Attach it after :class:`~plimonai.handlers.SliceSummaryHandler` (handlers run in the order they
    were attached), so the report sees the final ``summary.csv``; under MPI every rank saves its own
    thumbnails and only the rank with ``write_report=True`` (rank 0, which wrote the gathered summary)
    writes the report. A failure while writing the report is logged and does not fail the run
    (``plimonai report OUT`` can redo it).

    Args:
        output_dir: the run's output folder.
        qc: thresholds (the ``qc`` section of inference.json).
        pred_key: the post-processed mask in the engine output dicts.
        summary: the summary handler (its totals give the wall time).
        write_report: write the report at the end (False on MPI ranks other than 0).
        enabled: False attaches nothing.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        qc: Mapping[str, Any] | None = None,
        pred_key: str = "pred",
        summary: Any = None,
        write_report: bool = True,
        enabled: bool = True,
    ) -> None:
        from plimonai.qc.stack import qc_settings

        self.output_dir, self.pred_key, self.summary = Path(output_dir), pred_key, summary
        self.qc = qc_settings(qc)
        self.write_report, self.enabled = bool(write_report), bool(enabled)
        self.report_path: Path | None = None
        self.t_start = time.perf_counter()
        self.started_at = ""

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        self.t_start = time.perf_counter()
        self.started_at = _dt.datetime.now().isoformat(timespec="seconds")

    def iteration_completed(self, engine: Engine) -> None:
        from plimonai.qc.thumbs import mask_thumbnail, save_thumbnail, thumb_path

        outs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for out in outs:
            pred = out.get(self.pred_key) if isinstance(out, dict) else None
            if out.get("status", "ok") != "ok" or pred is None:
                continue
            try:
                save_thumbnail(thumb_path(self.output_dir, str(out.get("name", ""))),
                               mask_thumbnail(pred, int(self.qc["thumb_size"])))
            except Exception as e:  # a thumbnail is not worth failing a slice for
                logger.warning("QC thumbnail of %s not written: %s", out.get("name"), e)

    def completed(self, engine: Engine) -> None:
        if not self.write_report:
            return
        from plimonai.qc.report import hardware_info, write_report, write_run_info

        try:
            totals = dict(getattr(self.summary, "totals", {}) or {})
            info = {
                "started": self.started_at,
                "finished": _dt.datetime.now().isoformat(timespec="seconds"),
                "wall_seconds": totals.get("wall_seconds", time.perf_counter() - self.t_start),
                "totals": totals,
                "hardware": hardware_info(getattr(engine, "device", None)),
            }
            write_run_info(self.output_dir, info)
            self.report_path = write_report(self.output_dir, self.qc, info)
            msg = f"plimonai: QC report {self.report_path}"
            logger.info(msg)
            print(msg, flush=True)
        except Exception as e:  # the masks are done; the report can be redone with `plimonai report OUT`
            logger.error("QC report not written: %s\n%s", e, traceback.format_exc())
            print(f"plimonai: QC report NOT written ({type(e).__name__}: {e}); run `plimonai report "
                  f"{self.output_dir}`", flush=True)
