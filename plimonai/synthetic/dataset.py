"""Write a synthetic dataset folder: images, labels, slice list, MONAI datalist, previews.

Layout (all paths stored relative to ``out_dir`` so the folder can move)::

    OUT/images/<name>.tif     uint16 slices (LAP: one page; PM: tiled BigTIFF with pyramid)
    OUT/labels/<name>.tif     uint8 masks, same name, 1 tissue / 0 background
                              (partial_labels: training slices 0/1 where labelled, 255 elsewhere)
    OUT/labels_full/<name>.tif  (partial_labels only) the complete masks of all slices
    OUT/retardation/<name>.tif  (retardation only) float32 [0, 1] retardation of each slice
                              (file_format="h5": images/ and retardation/ hold <name>.h5, /Image +
                              /pyramid/NN; labels stay TIFF)
    OUT/slices.txt            one image path per line ("images/<name>.tif")
    OUT/datalist.json         {"training": [{"image", "label"[, "retardation"]}...], "validation": [...last n_val...]}
    OUT/previews/<name>.png   image | mask | contour overlay, downsampled
    OUT/synthetic_info.json   generator settings and per-slice parameters
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import tifffile

from .classes import parse_section_class
from .contrast import check_contrast
from .formats import LAP_PIXEL_UM, write_h5_image
from .lap import LAP_SHAPE, render_plan, render_retardation
from .partial import partial_label
from .pm import PM_SHAPE, write_pm_slice
from .render import OUTPUT_FORMATS, draw_hard, plan_slice

FILE_FORMATS = ("tif", "h5")

__all__ = ["generate_dataset", "parse_shape", "save_preview"]


def parse_shape(shape: object, default: tuple[int, int]) -> tuple[int, int]:
    """Accept None, an int (square), "H,W" / "HxW" strings or a 2-sequence; return (H, W)."""
    if shape is None:
        return tuple(default)
    if isinstance(shape, (int, np.integer)):
        return (int(shape), int(shape))
    if isinstance(shape, str):
        parts = [p for p in shape.replace("x", ",").replace("X", ",").replace(" ", ",").strip("()[]").split(",") if p]
        shape = [int(p) for p in parts]
    vals = [int(v) for v in shape]  # type: ignore[union-attr]
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 16:
        raise ValueError(f"shape must be (H, W) with H, W >= 16, got {shape!r}")
    return (vals[0], vals[1])


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a temporary name in the same folder, then rename onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _to_uint8(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [0.5, 99.8])
    return np.clip((img.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1.0)), 0, 255).astype(np.uint8)


def save_preview(path: str | os.PathLike, image: np.ndarray, mask: np.ndarray, height: int = 512) -> None:
    """PNG: image | mask | image with the mask contour in red, resized to ``height`` rows."""
    from PIL import Image
    from scipy import ndimage as ndi

    h, w = image.shape
    ph = min(height, h)
    pw = max(1, int(round(w * ph / h)))
    g = np.asarray(Image.fromarray(_to_uint8(image)).resize((pw, ph), Image.BILINEAR))
    m = np.asarray(Image.fromarray((mask > 0).astype(np.uint8) * 255).resize((pw, ph), Image.NEAREST)) > 0
    edge = m & ~ndi.binary_erosion(m, border_value=1)
    over = np.repeat(g[..., None], 3, axis=2)
    over[edge] = (255, 40, 40)
    gap = np.full((ph, 4, 3), 128, np.uint8)
    panel = np.concatenate([np.repeat(g[..., None], 3, 2), gap, np.repeat((m * 255).astype(np.uint8)[..., None], 3, 2),
                            gap, over], axis=1)
    _atomic(Path(path), lambda p: Image.fromarray(panel).save(p, format="PNG", optimize=True))


def _lap_item(out: Path, name: str, seed: int, shape: tuple[int, int], hard: bool,
              partial: float | None = None, section_class: str = "human", unscanned_border: float = 0.0,
              output_format: str = "uint16", file_format: str = "tif", retardation: bool = False,
              contrast: str = "standard") -> dict:
    """``partial``: also write ``labels_full/``; the label in ``labels/`` is then a partial label
    labelling about this fraction of the pixels (0.0: a complete label there too).
    ``file_format="h5"``: images (and retardation) as HDF5, labels TIFF."""
    t0 = time.perf_counter()
    plan = plan_slice(seed, shape, "lap", hard, section_class=section_class, unscanned_border=unscanned_border,
                      contrast=contrast)
    image, mask = render_plan(plan, output_format)
    desc = f"plimonai.synthetic kind=lap seed={seed} hard={hard} shape={shape[0]}x{shape[1]}"
    if "section_class" in plan.info:
        desc += f" section_class={plan.section_class}"
    files = [(image, "images"), (mask, "labels")]
    extra = {}
    if partial is not None:
        label = partial_label(mask, seed, partial) if partial > 0 else mask
        files = [(image, "images"), (label, "labels"), (mask, "labels_full")]
        extra = {"labelled_fraction": float((label != 255).mean())}
    if retardation:
        files.append((render_retardation(plan), "retardation"))
    modality = {"images": "NTransmittance" if output_format == "ntransmittance" else "Transmittance",
                "retardation": "Retardation"}
    attrs_base = {"generator": "plimonai.synthetic", "seed": int(seed), "section_class": plan.section_class,
                  "hard": bool(hard), "description": desc}
    px = LAP_PIXEL_UM * 2080.0 / min(shape)  # lengths scale with the short side
    for arr, sub in files:
        if file_format == "h5" and sub in modality:
            _atomic(out / sub / f"{name}.h5",
                    lambda p, a=arr, m=modality[sub]: write_h5_image(p, a, {**attrs_base, "modality": m}, px))
        else:
            _atomic(out / sub / f"{name}.tif",
                    lambda p, a=arr: tifffile.imwrite(p, a, compression="zlib", photometric="minisblack",
                                                      metadata=None, description=desc))
    return {"image": image, "mask": mask, "info": plan.info, "tissue_fraction": float(mask.mean()),
            "seconds": time.perf_counter() - t0, **extra}


def _pm_item(out: Path, name: str, seed: int, shape: tuple[int, int], hard: bool) -> dict:
    res = write_pm_slice(out / "images" / f"{name}.tif", out / "labels" / f"{name}.tif", shape=shape, seed=seed,
                         hard=hard)
    with tifffile.TiffFile(res["image"]) as t:
        image = t.series[0].levels[-1].asarray()
    with tifffile.TiffFile(res["mask"]) as t:
        mask = t.series[0].levels[-1].asarray()
    info = {k: v for k, v in res.items() if k not in ("image", "mask")}
    return {"image": image, "mask": mask, "info": info, "tissue_fraction": res["tissue_fraction"],
            "seconds": res["seconds"]}


def generate_dataset(
    out_dir: str | os.PathLike,
    kind: str = "lap",
    n: int = 10,
    seed: int = 0,
    n_val: int = 2,
    shape: Sequence[int] | str | int | None = None,
    preview: bool = True,
    hard_fraction: float = 0.3,
    partial_labels: bool = False,
    partial_fraction: float = 0.1,
    section_class: str = "human",
    unscanned_border: bool | float = False,
    output_format: str = "uint16",
    file_format: str = "tif",
    retardation: bool = False,
    contrast: str = "standard",
) -> dict:
    """Generate ``n`` synthetic slices (seeds seed .. seed+n-1) of ``kind`` 'lap' or 'pm' into ``out_dir``.

    Slice i is named f"{kind}_{seed+i:05d}" and is hard with probability ``hard_fraction``
    (decided from its own seed, so a slice does not depend on n). The last ``n_val`` slices form
    the validation split (clamped so at least one training slice remains when n > 1).
    ``shape`` defaults to 2080 x 2776 (LAP) or 20000 x 20000 (PM).

    ``partial_labels`` (LAP only): the training slices' labels are partial, as hand scribbles would be
    (:func:`~plimonai.synthetic.partial.partial_label`: a band along the tissue border, strokes and
    blobs, about ``partial_fraction`` of the pixels labelled 0/1, the rest 255 = unlabelled); the
    validation slices keep complete labels; ``labels_full/`` holds the complete masks of all slices.

    Options for real-looking LAP slices (LAP only; the defaults reproduce the original output byte
    for byte; see bundle/docs/synthetic_data.md):

    * ``section_class``: "human" (whole human section), "mouse", "rat", "monkey",
      "human_hemisphere", "mixed" (a class per seed) or a comma-separated list.
    * ``unscanned_border``: probability (True = 1) that a slice has zero-padded unscanned bands
      (image and label exactly 0 there).
    * ``output_format``: "uint16" camera counts or "ntransmittance" (float32 in [0, 1], glass ~0.9).
    * ``file_format``: "tif" or "h5" (images and retardation as HDF5 ``/Image`` + ``/pyramid/NN``;
      labels stay TIFF).
    * ``retardation``: also write ``retardation/<name>`` (float32 [0, 1]); datalist items get a
      "retardation" key.
    * ``contrast``: "standard" or "inverted" (stain-like: grey matter darker than white matter,
      :mod:`~plimonai.synthetic.contrast`).

    Returns a summary dict: out_dir, kind, n, n_train, n_val, shape, names, hard (per slice),
    tissue_fraction (per slice), files (datalist, slices, info), previews, seconds; with
    ``partial_labels`` also labelled_fraction (per slice, 1.0 for validation slices); with a
    ``section_class`` other than "human" also section_class (per slice).
    """
    t0 = time.perf_counter()
    if kind not in ("lap", "pm"):
        raise ValueError(f"kind must be 'lap' or 'pm', got {kind!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seed = int(seed)
    shp = parse_shape(shape, LAP_SHAPE if kind == "lap" else PM_SHAPE)
    n_val = max(0, min(int(n_val), n - 1))
    if partial_labels and kind != "lap":
        raise ValueError("partial_labels is only supported for kind='lap'")
    classes = parse_section_class(section_class)
    unscanned = float(unscanned_border)
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    file_format = str(file_format).lower().lstrip(".").replace("hdf5", "h5").replace("tiff", "tif")
    if file_format not in FILE_FORMATS:
        raise ValueError(f"file_format must be one of {FILE_FORMATS}, got {file_format!r}")
    if not 0.0 <= unscanned <= 1.0:
        raise ValueError(f"unscanned_border must be a bool or a probability in [0, 1], got {unscanned_border!r}")
    options = {}  # non-default options only (the default metadata stays byte-identical)
    if classes != ("human",):
        options["section_class"] = ",".join(classes) if len(classes) < 5 else "mixed"
    if unscanned > 0:
        options["unscanned_border"] = unscanned
    if output_format != "uint16":
        options["output_format"] = output_format
    if file_format != "tif":
        options["file_format"] = file_format
    if retardation:
        options["retardation"] = True
    if check_contrast(contrast) != "standard":
        options["contrast"] = contrast
    if options and kind != "lap":
        raise ValueError(f"{', '.join(options)} only supported for kind='lap'")
    ext = "h5" if file_format == "h5" else "tif"
    out = Path(out_dir)
    for sub in ("images", "labels") + (("previews",) if preview else ()) + (("retardation",) if retardation else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)

    names, hards, fractions, infos, previews, labelled, slice_classes = [], [], [], [], [], [], []
    make = _lap_item if kind == "lap" else _pm_item
    lap_opts = dict(section_class=classes, unscanned_border=unscanned, output_format=output_format,
                    file_format=file_format, retardation=bool(retardation), contrast=contrast)
    for i in range(n):
        s = seed + i
        name = f"{kind}_{s:05d}"
        hard = draw_hard(s, hard_fraction)
        if partial_labels:
            item = _lap_item(out, name, s, shp, hard, partial=float(partial_fraction) if i < n - n_val else 0.0,
                             **lap_opts)
            labelled.append(item["labelled_fraction"])
        elif options:
            item = _lap_item(out, name, s, shp, hard, **lap_opts)
        else:
            item = make(out, name, s, shp, hard)
        if "section_class" in item["info"]:
            slice_classes.append(item["info"]["section_class"])
        if preview:
            pth = out / "previews" / f"{name}.png"
            save_preview(pth, item["image"], item["mask"])
            previews.append(f"previews/{name}.png")
        names.append(name)
        hards.append(bool(hard))
        fractions.append(item["tissue_fraction"])
        infos.append({"name": name, "seconds": round(item["seconds"], 3), **item["info"]})
        del item

    entries = [{"image": f"images/{nm}.{ext}", "label": f"labels/{nm}.tif",
                **({"retardation": f"retardation/{nm}.{ext}"} if retardation else {})} for nm in names]
    datalist = {"training": entries[: n - n_val], "validation": entries[n - n_val :]}
    _atomic(out / "datalist.json", lambda p: p.write_text(json.dumps(datalist, indent=2) + "\n"))
    _atomic(out / "slices.txt", lambda p: p.write_text("".join(f"images/{nm}.{ext}\n" for nm in names)))
    meta = {"generator": "plimonai.synthetic", "kind": kind, "seed": seed, "n": n, "n_val": n_val,
            "shape": list(shp), "hard_fraction": hard_fraction, **options, "slices": infos}
    if partial_labels:
        meta.update(partial_labels=True, partial_fraction=float(partial_fraction), labelled_fraction=labelled)
    _atomic(out / "synthetic_info.json", lambda p: p.write_text(json.dumps(meta, indent=1, default=str) + "\n"))
    summary = {
        "out_dir": str(out),
        "kind": kind,
        "n": n,
        "n_train": n - n_val,
        "n_val": n_val,
        "shape": shp,
        "names": names,
        "hard": hards,
        "tissue_fraction": fractions,
        "files": {"datalist": "datalist.json", "slices": "slices.txt", "info": "synthetic_info.json"},
        "previews": previews,
        "seconds": time.perf_counter() - t0,
    }
    if partial_labels:
        summary["labelled_fraction"] = labelled
    if slice_classes:
        summary["section_class"] = slice_classes
    if retardation:
        summary["files"]["retardation"] = "retardation/"
    return summary
