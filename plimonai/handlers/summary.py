"""Ignite handler writing the run's ``summary.csv`` (one row per slice) and printing the totals."""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from plimonai.io.background import PENDING_KEY, first_error

__all__ = ["SUMMARY_FIELDS", "SliceSummaryHandler", "read_summary", "raise_if_failed"]

logger = logging.getLogger(__name__)

SUMMARY_FIELDS = [
    "slice", "image", "status", "tissue_area_px", "components", "height", "width",
    "confidence", "tta_dice", "glass_level",
    "file_pixel_size_um", "resample_factor", "seconds", "mask", "overlay", "error",
]


def read_summary(path: str | os.PathLike) -> list[dict]:
    """Rows of an existing ``summary.csv`` (empty list if absent)."""
    p = Path(path)
    if not p.is_file():
        return []
    with p.open(newline="") as f:
        return list(csv.DictReader(f))


def _write_csv_atomic(path: Path, rows: list[dict], fields: Sequence[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


class SliceSummaryHandler:
    """Collects one row per slice from ``SliceEvaluator`` outputs and writes ``summary.csv``.

    Args:
        output_dir: folder of ``summary.csv``.
        dataset: the ``SliceDataset`` (its ``skipped`` slices get rows too, keeping an earlier run's
            figures when its summary is there).
        pred_key: the post-processed (1, H, W) mask in each output dict.
        gather_fn: under MPI, a function that gathers every rank's rows on rank 0 (returns ``None``
            on other ranks, which then write nothing).
        filename: summary file name.
        fields: CSV columns (default ``SUMMARY_FIELDS``; e.g. add ``"rank"`` under MPI).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        dataset=None,
        pred_key: str = "pred",
        gather_fn: Callable[[list[dict]], list[dict] | None] | None = None,
        filename: str = "summary.csv",
        fields: Sequence[str] | None = None,
    ) -> None:
        self.output_dir, self.dataset, self.pred_key = Path(output_dir), dataset, pred_key
        self.gather_fn, self.filename = gather_fn, filename
        self.fields = list(fields) if fields else list(SUMMARY_FIELDS)
        self.rows: list[dict] = []
        self._pending: list[tuple[dict, list]] = []
        self.t_start = time.perf_counter()
        self.totals: dict = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)
        engine.state.summary = self  # lets `raise_if_failed` find it

    def started(self, engine: Engine) -> None:
        self.rows, self._pending, self.t_start = [], [], time.perf_counter()
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def row_from_output(self, out: dict) -> dict:
        row = {
            "slice": out.get("name", ""),
            "image": out.get("image_path", ""),
            "status": out.get("status", "ok"),
            "seconds": f"{float(out.get('seconds', 0.0)):.3f}",
            "error": out.get("error", ""),
            "mask": out.get("mask_path", ""),
            "overlay": out.get("overlay_path", ""),
            # from RestoreSliceGridd: the file's stated pixel size (reported, not used by default), the zoom applied
            "file_pixel_size_um": out.get("file_pixel_size_um", ""),
            "resample_factor": out.get("resample_factor", ""),
        }
        pred = out.get(self.pred_key)
        if row["status"] == "ok" and out.get("tissue_area_px") is not None:  # streamed slices: counted while written
            row.update(tissue_area_px=int(out["tissue_area_px"]), components=int(out.get(f"{self.pred_key}_components", 0)),
                       height=int(out["height"]), width=int(out["width"]))
        elif row["status"] == "ok" and pred is not None:
            m = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
            m = m.reshape(m.shape[-2:]) if m.ndim > 2 else m
            n = out.get(f"{self.pred_key}_components")  # counted by the post-processing; else label here
            if n is None:
                from plimonai.transforms.post import component_stats

                n = component_stats(m > 0)[0]
            row.update(tissue_area_px=int(np.count_nonzero(m)), components=int(n), height=m.shape[0], width=m.shape[1])
        for key in ("confidence", "tta_dice", "glass_level"):  # stack QC figures from plimonai.qc.SliceConfidenced
            if out.get(key) is not None:
                row[key] = f"{float(out[key]):.6g}"
        return row

    def iteration_completed(self, engine: Engine) -> None:
        self.resolve_writes(wait=False)
        outs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for out in outs:
            row = self.row_from_output(out)
            self.rows.append(row)
            if out.get(PENDING_KEY):  # mask/overlay still being written in the background (plimonai.io.BackgroundWriter)
                self._pending.append((row, out.pop(PENDING_KEY)))
            elif row["status"] != "ok":
                logger.error("FAILED %s: %s", row["image"], row["error"])

    def resolve_writes(self, wait: bool = True) -> None:
        """Settle background writes (all when ``wait``, else the finished ones): a failed write fails its slice."""
        keep = []
        for row, futures in self._pending:
            if not wait and not all(f.done() for f in futures):
                keep.append((row, futures))
                continue
            err = first_error(futures)
            if err:
                row.update(status="failed", error=f"writing outputs: {err}")
                logger.error("FAILED %s: %s", row["image"], row["error"])
        self._pending = keep

    def skipped_rows(self) -> list[dict]:
        skipped = list(getattr(self.dataset, "skipped", []) or [])
        if not skipped:
            return []
        previous = {r.get("image"): r for r in read_summary(self.output_dir / self.filename)}
        rows = []
        for rec in skipped:
            row = dict(previous.get(rec["image"], {}))
            row.update(slice=rec["name"], image=rec["image"], status="skipped", error="")
            rows.append(row)
        return rows

    def completed(self, engine: Engine) -> None:
        self.resolve_writes(wait=True)
        rows = self.rows
        if self.gather_fn is not None:
            rows = self.gather_fn(rows)
            if rows is None:  # not the writing rank
                return
        rows = self.skipped_rows() + rows
        order = {p: i for i, p in enumerate(getattr(self.dataset, "all_paths", []))}
        rows.sort(key=lambda r: order.get(r.get("image"), len(order)))
        _write_csv_atomic(self.output_dir / self.filename, rows, self.fields)
        wall = time.perf_counter() - self.t_start
        n = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "skipped")}
        self.totals = {"done": n["ok"], "failed": n["failed"], "skipped": n["skipped"], "wall_seconds": wall,
                       "slices_per_hour": 3600.0 * n["ok"] / wall if wall > 0 else 0.0}
        msg = (f"plimonai: {n['ok']} slices done, {n['failed']} failed, {n['skipped']} skipped in {wall:.1f} s "
               f"({self.totals['slices_per_hour']:.1f} slices/hour); summary: {self.output_dir / self.filename}")
        logger.info(msg)
        print(msg, flush=True)


def raise_if_failed(evaluator: Engine) -> None:
    """Raise ``RuntimeError`` after the run if any slice failed (so the command exits non-zero)."""
    summary = getattr(evaluator.state, "summary", None)
    if summary is None:
        return
    failed = [r for r in summary.rows if r["status"] == "failed"]
    if failed:
        names = ", ".join(r["slice"] for r in failed[:10])
        print(f"plimonai: {len(failed)} slice(s) FAILED: {names}", flush=True)
        raise RuntimeError(f"{len(failed)} slice(s) failed ({names}); reasons in {summary.output_dir / summary.filename}")
