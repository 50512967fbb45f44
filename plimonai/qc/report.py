"""``OUT/report.html``: a self-contained quality-control report of an inference output folder.

The report reads what the run left in ``OUT`` (``summary.csv``, the masks, the overlays,
``qc/thumbs/`` and ``qc/run.json``), so it can be written at the end of a run
(:class:`~plimonai.handlers.QCReportHandler`) or later for any folder, finished or not
(``plimonai report OUT``): masks without a summary row (a run that was killed) are counted from the
files, failed slices and gaps in the section numbers are listed.

Contents: the run summary (slices done / failed / skipped, time, hardware), plots of tissue area,
pieces, confidence and shape overlap along the stack with the flagged slices marked, a thumbnail
strip (previous | slice | next, mask contour in red) for every flagged slice and for a sample of
the others, links to the full overlays and masks, and the thresholds. Plots and thumbnails are
embedded as base64 images; there is no script and nothing is loaded from the web. ``OUT/qc/qc.csv``
gets the per-slice QC figures and flags.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

import numpy as np

from .stack import _num, flag_stack, qc_settings
from .thumbs import mask_name, mask_thumbnail, read_mask, read_thumbnail, save_thumbnail, thumb_path

__all__ = ["REPORT_NAME", "QC_CSV", "RUN_INFO", "hardware_info", "load_records", "write_run_info", "write_report"]

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
QC_CSV = Path("qc") / "qc.csv"
RUN_INFO = Path("qc") / "run.json"
QC_FIELDS = ["position", "section", "slice", "status", "tissue_area_px", "area_ref", "area_rel", "components",
             "pieces", "pieces_range", "largest_share", "shape_iou", "confidence", "tta_dice", "glass_level", "flags", "reasons"]


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------
def hardware_info(device: Any = None) -> dict:
    """Host, CPU, threads, device (GPU name) and library versions of this process."""
    import torch

    info: dict[str, Any] = {"host": platform.node(), "platform": platform.platform(terse=True),
                            "python": platform.python_version(), "torch": torch.__version__}
    try:
        import monai

        info["monai"] = monai.__version__
    except Exception:  # pragma: no cover
        pass
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 0
    info.update(cpu=cpu or "unknown", cores=cores, torch_threads=torch.get_num_threads())
    dev = str(device) if device is not None else "cpu"
    info["device"] = dev
    if dev.startswith("cuda") and torch.cuda.is_available():
        try:
            info["gpu"] = torch.cuda.get_device_name(torch.device(dev))
        except Exception:  # pragma: no cover
            pass
    return info


def write_run_info(out_dir: str | os.PathLike, info: Mapping[str, Any]) -> Path:
    from plimonai.io.writers import atomic_path

    path = Path(out_dir) / RUN_INFO
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(dict(info), indent=1, default=str) + "\n")
    return path


def _read_run_info(out_dir: Path) -> dict:
    p = out_dir / RUN_INFO
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except (OSError, ValueError):
        return {}


def _local(out_dir: Path, p: str | None) -> Path | None:
    """An output file recorded by the run: as recorded, else the same name in ``out_dir`` (folder moved)."""
    if not p:
        return None
    path = Path(p)
    if path.is_file():
        return path
    alt = out_dir / path.name
    return alt if alt.is_file() else None


def load_records(out_dir: str | os.PathLike, thumb_size: int = 256) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Per-slice records of an output folder and their mask thumbnails.

    Records are the ``summary.csv`` rows plus one row (``status="ok"``, ``note``) per mask file that
    has none (an unfinished run); rows without figures but with a mask file get ``tissue_area_px``
    and ``components`` counted from it. Thumbnails come from ``qc/thumbs/`` or are made from the mask
    files (and saved there).
    """
    from plimonai.handlers.summary import read_summary
    from plimonai.transforms.post import component_stats

    out = Path(out_dir)
    rows = read_summary(out / "summary.csv")
    known = {r.get("slice") for r in rows}
    extra = []
    for p in sorted(out.iterdir()) if out.is_dir() else []:
        name = mask_name(p) if p.is_file() else None
        if name and name not in known:
            ov = out / f"{name}_overlay.png"
            extra.append({"slice": name, "image": "", "status": "ok", "mask": str(p),
                          "overlay": str(ov) if ov.is_file() else "", "note": "no summary row (unfinished run?)"})
            known.add(name)
    records = [dict(r) for r in rows] + extra
    thumbs: dict[str, np.ndarray] = {}
    for r in records:
        if r.get("status", "ok") not in ("ok", "skipped"):
            continue
        name = r.get("slice", "")
        mpath = _local(out, r.get("mask")) or _guess_mask(out, name)
        if mpath is not None:
            r["mask"] = str(mpath)
        if _num(r.get("tissue_area_px")) is None and mpath is not None:
            try:
                m = read_mask(mpath)
                r.update(tissue_area_px=int(m.sum()), components=component_stats(m)[0], height=m.shape[0],
                         width=m.shape[1])
                thumbs[name] = mask_thumbnail(m, thumb_size)
            except Exception as e:  # an unreadable mask must not stop the report
                r["note"] = f"mask unreadable: {e}"
        tp = thumb_path(out, name)
        if name not in thumbs and tp.is_file():
            try:
                thumbs[name] = read_thumbnail(tp)
            except Exception:
                pass
        if name not in thumbs and mpath is not None:
            try:
                thumbs[name] = mask_thumbnail(read_mask(mpath, min_side=thumb_size), thumb_size)
            except Exception as e:
                r.setdefault("note", f"mask unreadable: {e}")
        if name in thumbs and not tp.is_file():
            try:
                save_thumbnail(tp, thumbs[name])
            except OSError:
                pass
    return records, thumbs


def _guess_mask(out: Path, name: str) -> Path | None:
    if not name:
        return None
    for ext in (".tif", ".tiff", ".nii.gz", ".nii", ".h5", ".hdf5"):
        p = out / f"{name}_mask{ext}"
        if p.is_file():
            return p
    return None


# ------------------------------------------------------------------------------------------------
# pictures
# ------------------------------------------------------------------------------------------------
def _png_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(recs: list[dict], missing: Sequence[int]) -> str:
    """The four stack plots as a base64 PNG."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures stay untouched

    by_section = all(r["section"] is not None for r in recs) and bool(recs)
    x = np.array([r["section"] if by_section else r["position"] for r in recs], float)
    use = [r["usable"] for r in recs]
    flagged = [bool(r["flags"]) for r in recs]
    failed = [r.get("status") == "failed" for r in recs]

    def series(key: str) -> np.ndarray:
        vals = [_num(r.get(key)) for r in recs]
        return np.array([v if use[i] and v is not None else np.nan for i, v in enumerate(vals)], float)

    area = series("tissue_area_px")
    ref = np.array([r["area_ref"] if r["area_ref"] is not None else np.nan for r in recs], float)
    pieces = np.array([r["pieces"] if use[i] and r.get("pieces") is not None else np.nan
                       for i, r in enumerate(recs)], float)
    conf = series("confidence")
    tta = series("tta_dice")
    iou = np.array([r["shape_iou"] if r["shape_iou"] is not None else np.nan for r in recs], float)
    glass = series("glass_level")
    panels = [("tissue area (px)", [(area, "area", "-o"), (ref, "neighbours' median", "--")]),
              ("pieces", [(pieces, "pieces (>= piece_min_fraction of the tissue)", "-o")]),
              ("confidence", [(conf, "confidence", "-o")] + ([(tta, "TTA Dice", "-s")] if np.isfinite(tta).any() else [])),
              ("shape overlap (IoU)", [(iou, "IoU with neighbours", "-o")])]
    if np.isfinite(glass).any():
        panels.append(("glass level", [(glass, "glass level (exposure)", "-o")]))
    fig = Figure(figsize=(11, 2.1 * len(panels) + 0.6))
    axes = fig.subplots(len(panels), 1, sharex=True)
    for ax, (title, lines) in zip(axes, panels):
        for y, label, style in lines:
            ax.plot(x, y, style, ms=3, lw=1, label=label)
        main = lines[0][0]
        fx = x[np.array(flagged, bool)]
        fy = main[np.array(flagged, bool)]
        ok = np.isfinite(fy)
        if ok.any():
            ax.plot(fx[ok], fy[ok], "o", ms=9, mfc="none", mec="red", mew=1.8, label="flagged")
        for xi in x[np.array(failed, bool)]:
            ax.axvline(xi, color="red", lw=1, ls=":")
        for s in missing:
            ax.axvline(s, color="0.6", lw=1, ls=":")
        for xi, f, y in zip(x, flagged, main):
            if f and title.startswith("tissue") and np.isfinite(y):
                ax.annotate(f"{int(xi)}", (xi, y), textcoords="offset points", xytext=(0, 7), ha="center",
                            fontsize=7, color="red")
        ax.set_ylabel(title, fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        if len(lines) > 1 or ok.any():
            ax.legend(fontsize=7, loc="best")
    axes[-1].set_xlabel("section number" if by_section else "position in the slice list (no section numbers)",
                        fontsize=8)
    fig.suptitle("Along the stack (red circles: flagged; dotted red: failed; dotted grey: missing sections)",
                 fontsize=9)
    fig.tight_layout()
    return _png_b64(fig)


def _thumb_image(out: Path, rec: dict | None, thumb: np.ndarray | None, width: int) -> str | None:
    """JPEG (base64) of a slice: its overlay (downsampled) with the mask contour redrawn in red, or
    the mask thumbnail alone when the overlay is missing; ``None`` without either."""
    from PIL import Image
    from scipy import ndimage as ndi

    if rec is None:
        return None
    ov = _local(out, rec.get("overlay")) or (out / f"{rec.get('slice')}_overlay.png")
    base = None
    if ov.is_file():
        try:
            with Image.open(ov) as im:
                base = im.convert("RGB")
                base.thumbnail((width, width))
        except Exception:
            base = None
    if base is None and thumb is None:
        return None
    if base is None:
        t = Image.fromarray(np.where(thumb, 150, 235).astype(np.uint8)).convert("RGB")
        t.thumbnail((width, width), Image.NEAREST)
        base = t
    rgb = np.asarray(base).copy()
    if thumb is not None and thumb.any():
        m = np.asarray(Image.fromarray(thumb.astype(np.uint8) * 255).resize(base.size, Image.NEAREST)) > 0
        edge = m & ~ndi.binary_erosion(m, border_value=1)
        rgb[edge] = (230, 20, 20)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------------------------
# HTML
# ------------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.2em 2em;color:#222}
h1{font-size:1.4em;margin-bottom:.1em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
.sub{color:#666;font-size:.9em} table{border-collapse:collapse;font-size:.86em}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top} th{background:#f3f3f3}
.flag{color:#b00;font-weight:600} .ok{color:#070} .grid{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ccc;padding:6px;border-radius:4px;font-size:.8em;max-width:760px}
.card.flagged{border:2px solid #c00} .card img{display:block} .strip{display:flex;gap:4px;align-items:flex-start}
.strip figure{margin:0} .strip figcaption{font-size:.75em;color:#555;text-align:center}
.none{width:120px;height:90px;background:#eee;color:#888;display:flex;align-items:center;justify-content:center}
.plot{max-width:100%} code{background:#f3f3f3;padding:0 3px}
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _href(out: Path, p: str | None) -> str | None:
    path = _local(out, p)
    if path is None:
        return None
    try:
        rel = os.path.relpath(path, out)
    except ValueError:  # another drive (Windows)
        rel = str(path)
    return quote(rel.replace(os.sep, "/"))


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "unknown"
    s = float(s)
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def _label(r: dict) -> str:
    return f"s{r['section']}" if r.get("section") is not None else f"#{r['position'] + 1}"


def _figure(out: Path, rec: dict | None, thumbs: Mapping[str, np.ndarray], width: int, caption: str) -> str:
    if rec is None:
        return f'<figure><div class="none" style="width:{width}px">-</div><figcaption>{_e(caption)}</figcaption></figure>'
    b64 = _thumb_image(out, rec, thumbs.get(rec.get("slice", "")), width)
    img = (f'<img src="data:image/jpeg;base64,{b64}" width="{width}" alt="{_e(rec.get("slice"))}">' if b64 else
           f'<div class="none">{_e(rec.get("status", "no image"))}</div>')
    href = _href(out, rec.get("overlay"))
    if href and b64:
        img = f'<a href="{href}">{img}</a>'
    return f"<figure>{img}<figcaption>{_e(caption)}</figcaption></figure>"


def _card(out: Path, recs: list[dict], i: int, thumbs: Mapping[str, np.ndarray], with_neighbours: bool) -> str:
    r = recs[i]
    parts = []
    if with_neighbours:
        prev = next((recs[j] for j in range(i - 1, -1, -1) if recs[j]["usable"]), None)
        nxt = next((recs[j] for j in range(i + 1, len(recs)) if recs[j]["usable"]), None)
        parts.append(_figure(out, prev, thumbs, 180, f"previous: {_label(prev)}" if prev else "no previous slice"))
        parts.append(_figure(out, r, thumbs, 240, f"{_label(r)} (this slice)"))
        parts.append(_figure(out, nxt, thumbs, 180, f"next: {_label(nxt)}" if nxt else "no next slice"))
    else:
        parts.append(_figure(out, r, thumbs, 200, _label(r)))
    links = []
    for key, text in (("overlay", "overlay"), ("mask", "mask")):
        h = _href(out, r.get(key))
        if h:
            links.append(f'<a href="{h}">{text}</a>')
    reasons = "".join(f'<div class="flag">{_e(x)}</div>' for x in r["reasons"])
    cls = "card flagged" if r["flags"] else "card"
    name_id = f' id="slice-{_e(r.get("slice"))}"' if r["flags"] else ""
    return (f'<div class="{cls}"{name_id}><div><b>{_e(_label(r))}</b> <code>{_e(r.get("slice"))}</code> '
            f'{" · ".join(links)}</div>{reasons}<div class="strip">{"".join(parts)}</div></div>')


def _kv_table(items: Sequence[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in items) + "</table>"


def _write_qc_csv(out: Path, recs: list[dict]) -> Path:
    from plimonai.io.writers import atomic_path

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=QC_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in recs:
        row = dict(r)
        row["area_rel"] = f"{r['area_rel']:.4f}" if r["area_rel"] is not None else ""
        row["area_ref"] = f"{r['area_ref']:.0f}" if r["area_ref"] is not None else ""
        row["shape_iou"] = f"{r['shape_iou']:.4f}" if r["shape_iou"] is not None else ""
        row["pieces_range"] = "-".join(map(str, r["pieces_range"])) if r["pieces_range"] else ""
        row["largest_share"] = f"{r['largest_share']:.4f}" if r.get("largest_share") is not None else ""
        row["flags"] = ";".join(r["flags"])
        row["reasons"] = " | ".join(r["reasons"])
        row["section"] = "" if r["section"] is None else r["section"]
        w.writerow(row)
    path = out / QC_CSV
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return path


def write_report(
    out_dir: str | os.PathLike,
    qc: Mapping[str, Any] | None = None,
    run_info: Mapping[str, Any] | None = None,
    filename: str = REPORT_NAME,
) -> Path:
    """Write ``OUT/report.html`` (and ``OUT/qc/qc.csv``) for an output folder; returns the report path.

    Args:
        out_dir: the inference output folder.
        qc: thresholds overriding :data:`~plimonai.qc.stack.DEFAULT_QC` (the ``qc`` section of inference.json).
        run_info: run facts (``wall_seconds``, ``hardware``, ...); default: ``OUT/qc/run.json`` if present.
        filename: report file name in ``out_dir``.
    """
    from plimonai.io.writers import atomic_path

    t0 = time.perf_counter()
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"output folder not found: {out}")
    cfg = qc_settings(qc)
    records, thumbs = load_records(out, int(cfg["thumb_size"]))
    recs = flag_stack(records, thumbs, cfg)
    info = dict(run_info) if run_info is not None else _read_run_info(out)
    sections = [r["section"] for r in recs]
    missing: list[int] = []
    if recs and all(s is not None for s in sections):
        have = set(sections)
        missing = [s for s in range(min(have), max(have) + 1) if s not in have]
    _write_qc_csv(out, recs)

    status = {s: sum(r.get("status") == s for r in recs) for s in ("ok", "failed", "skipped")}
    no_row = sum(1 for r in recs if r.get("note", "").startswith("no summary row"))
    flagged = [i for i, r in enumerate(recs) if r["flags"]]
    slice_seconds = sum(_num(r.get("seconds")) or 0.0 for r in recs if r.get("status") in ("ok", "failed"))
    hw = info.get("hardware") or {}
    hw_text = ", ".join(f"{k}: {v}" for k, v in hw.items() if k in ("host", "cpu", "cores", "device", "gpu",
                                                                     "torch_threads", "torch", "monai")) \
        or "not recorded (report made outside the run)"
    ranks = sorted({r.get("rank") for r in recs if r.get("rank") not in (None, "")})
    summary_items = [
        ("output folder", f"<code>{_e(out.resolve())}</code>"),
        ("slices in the stack", len(recs)),
        ("done (this run)", status["ok"] - no_row),
        ("failed", f'<span class="{"flag" if status["failed"] else "ok"}">{status["failed"]}</span>'),
        ("skipped (done earlier)", status["skipped"]),
    ]
    if no_row:
        summary_items.append(("masks without a summary row", f"{no_row} (run not finished?)"))
    if missing:
        shown = ", ".join(map(str, missing[:40])) + (" ..." if len(missing) > 40 else "")
        summary_items.append(("missing section numbers", f"{len(missing)}: {_e(shown)}"))
    summary_items += [
        ("flagged for inspection", f'<span class="{"flag" if flagged else "ok"}">{len(flagged)}</span>'
                                   + (": " + ", ".join(f'<a href="#slice-{_e(recs[i].get("slice"))}">'
                                                       f'{_e(_label(recs[i]))}</a>' for i in flagged[:200])
                                      if flagged else "")),
        ("wall time", _fmt_seconds(info.get("wall_seconds"))),
        ("sum of slice times", _fmt_seconds(slice_seconds)),
        ("hardware", _e(hw_text)),
    ]
    if ranks:
        summary_items.append(("MPI ranks", len(ranks)))
    if info.get("finished"):
        summary_items.append(("run finished", _e(info["finished"])))
    summary_items.append(("order", "by section number" if recs and all(s is not None for s in sections)
                          else "list order (not every name has a section number <code>_sNNNN_</code>)"))

    flag_rows = "".join(
        f'<tr><td>{_e(_label(recs[i]))}</td><td><a href="#slice-{_e(recs[i].get("slice"))}">'
        f'{_e(recs[i].get("slice"))}</a></td><td>{_e(recs[i].get("status"))}</td>'
        f'<td>{"<br>".join(_e(x) for x in recs[i]["reasons"])}</td></tr>' for i in flagged)
    flag_table = ("<table><tr><th>section</th><th>slice</th><th>status</th><th>reasons</th></tr>"
                  f"{flag_rows}</table>") if flagged else '<p class="ok">No slice flagged.</p>'
    others = [i for i, r in enumerate(recs) if r["usable"] and not r["flags"]]
    n_sample = max(0, int(cfg["sample_others"]))
    if len(others) > n_sample:
        pick = sorted({int(round(v)) for v in np.linspace(0, len(others) - 1, n_sample)}) if n_sample else []
        others = [others[k] for k in pick]
    n_cards = max(0, int(cfg["max_flagged_thumbnails"]))
    flagged_cards = "".join(_card(out, recs, i, thumbs, True) for i in flagged[:n_cards])
    if len(flagged) > n_cards:
        flagged_cards += (f'<p class="flag">... and {len(flagged) - n_cards} more flagged slices without thumbnails '
                          f'here (max_flagged_thumbnails); all are in the table above and in {_e(QC_CSV)}.</p>')
    other_cards = "".join(_card(out, recs, i, thumbs, False) for i in others)
    plots = _plots(recs, missing) if recs else None
    thresholds = _kv_table([(k, _e(v)) for k, v in cfg.items()])
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>plimonai QC report: {_e(out.name)}</title>
<style>{_CSS}</style></head><body>
<h1>plimonai quality control: {_e(out.name)}</h1>
<div class="sub">generated {_e(now)} · <code>plimonai report {_e(out)}</code> regenerates it</div>
<h2>Run summary</h2>{_kv_table(summary_items)}
<h2 id="flagged">Flagged slices ({len(flagged)})</h2>{flag_table}
<h2>Along the stack</h2>
{f'<img class="plot" alt="QC plots" src="data:image/png;base64,{plots}">' if plots else '<p>No slice yet.</p>'}
<h2>Flagged slices: previous | slice | next</h2>
<div class="grid">{flagged_cards or '<p class="ok">None.</p>'}</div>
<h2>A sample of the other slices ({len(others)})</h2>
<div class="grid">{other_cards or '<p>None.</p>'}</div>
<h2>Thresholds</h2>{thresholds}
<p class="sub">Rules: see <code>plimonai/qc/stack.py</code>; per-slice figures in <code>{_e(QC_CSV)}</code>.
Report written in {time.perf_counter() - t0:.1f} s.</p>
</body></html>
"""
    path = out / filename
    with atomic_path(path) as tmp:
        tmp.write_text(body, encoding="utf-8")
    logger.info("QC report: %s (%d flagged of %d)", path, len(flagged), len(recs))
    return path
