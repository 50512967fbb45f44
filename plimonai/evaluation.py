"""Side-by-side comparison of evaluation runs: one per-slice CSV and a markdown summary table.

``MetricsSaver`` writes one ``<metric name>_raw.csv`` per metric (one row per slice); for reading
the network against the baseline, this module joins them into ``per_slice.csv`` and summarises them
in ``summary.md`` (MONAI has no cross-metric report). Metric names are ``<method>_<measure>``, e.g.
``val_dice`` (the network; prefix ``val``), ``otsu_hd95``, ``otsu_post_bf1``.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from plimonai.data import slice_name

__all__ = ["MEASURES", "read_metric_details", "write_comparison"]

MEASURES = ("dice", "hd95", "bf1")
MODEL_PREFIX = "val"
RAW_SUFFIX = "_raw.csv"


def _split_name(name: str, measures: Sequence[str]) -> tuple[str, str] | None:
    """``"otsu_post_dice"`` -> ``("otsu_post", "dice")``; ``None`` if no known measure ends it."""
    for m in sorted(measures, key=len, reverse=True):
        if name.endswith("_" + m):
            return name[: -len(m) - 1], m
    return None


def _to_float(s: str) -> float:
    try:
        return float(s)
    except (TypeError, ValueError):
        return float("nan")


def read_metric_details(path: str | os.PathLike) -> tuple[list[str], list[float]]:
    """``(filenames, values)`` of a ``MetricsSaver`` ``*_raw.csv``; the value is its ``mean`` column
    (the class average; with ``include_background=False`` and two classes, the tissue score)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["filename"] for r in rows], [_to_float(r.get("mean", "nan")) for r in rows]


def _fmt(v: float, digits: int = 4) -> str:
    return "nan" if math.isnan(v) else f"{v:.{digits}f}"


def write_comparison(
    output_dir: str | os.PathLike,
    metric_names: Sequence[str] | None = None,
    measures: Sequence[str] = MEASURES,
    print_table: bool = True,
) -> str:
    """Join the ``MetricsSaver`` per-slice files of ``output_dir`` into ``per_slice.csv`` and
    ``summary.md``.

    Args:
        output_dir: the ``MetricsSaver`` folder; both files are written there.
        metric_names: metric names to include (``<name>_raw.csv`` must exist; an empty list, as from
            an evaluator that ran no iteration, is an error); default: every ``*_raw.csv`` whose
            name ends in one of ``measures``.
        measures: the measure suffixes, in table order.
        print_table: also print the markdown table.

    ``per_slice.csv`` columns: ``slice``, then ``<measure>`` for the network (prefix ``val``) and
    ``<method>_<measure>`` for the others, then ``image`` (the full path). ``summary.md``: a
    measure x method table of ``mean ± std`` over the slices with a finite value (the count is
    added where some slices have none, e.g. HD95 of an empty mask).

    Returns:
        The markdown table.
    """
    out = Path(output_dir)
    if metric_names is not None and len(metric_names) == 0:
        raise ValueError(f"no metrics to compare in {out}: no slice was evaluated (empty datalist?)")
    if metric_names is None:
        metric_names = sorted(p.name[: -len(RAW_SUFFIX)] for p in out.glob("*" + RAW_SUFFIX))
    parsed = {n: _split_name(n, measures) for n in metric_names}
    parsed = {n: mm for n, mm in parsed.items() if mm is not None}
    if not parsed:
        raise FileNotFoundError(f"no per-slice metric files (*{RAW_SUFFIX}) for {list(measures)} in {out}")
    methods = sorted({m for m, _ in parsed.values()}, key=lambda m: (m != MODEL_PREFIX, m))
    ordered = sorted(parsed, key=lambda n: (methods.index(parsed[n][0]), list(measures).index(parsed[n][1])))

    files, values = None, {}
    for name in ordered:
        fnames, vals = read_metric_details(out / f"{name}{RAW_SUFFIX}")
        if files is None:
            files = fnames
        elif fnames != files:  # all handlers see the same iterations; anything else is a stale file
            raise ValueError(f"{name}{RAW_SUFFIX} lists other slices than {ordered[0]}{RAW_SUFFIX} in {out}")
        values[name] = vals
    files = files or []

    def column(name: str) -> str:
        method, measure = parsed[name]
        return measure if method == MODEL_PREFIX else name

    with open(out / "per_slice.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slice"] + [column(n) for n in ordered] + ["image"])
        for i, fn in enumerate(files):
            w.writerow([slice_name(fn)] + [_fmt(values[n][i]) for n in ordered] + [fn])

    label = {m: ("model" if m == MODEL_PREFIX else m) for m in methods}
    lines = [
        f"Evaluation on {len(files)} slices: mean ± std per slice.",
        "",
        "| metric | " + " | ".join(label[m] for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for measure in measures:
        cells = []
        for method in methods:
            name = next((n for n, mm in parsed.items() if mm == (method, measure)), None)
            if name is None:
                cells.append("")
                continue
            v = np.asarray(values[name], dtype=float)
            v = v[np.isfinite(v)]
            cell = f"{v.mean():.4f} ± {v.std():.4f}" if v.size else "n/a"
            if v.size != len(files):
                cell += f" (n={v.size})"
            cells.append(cell)
        if any(cells):
            lines.append(f"| {measure} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(table)
    if print_table:
        print(table, flush=True)
    return table
