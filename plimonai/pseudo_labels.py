"""Pseudo-labels for PM slices from the LAP-scale model: training crops without hand-made full labels.

Recipe (bundle/docs/finetune.md, "PM slices without full labels"):

1. :func:`pm_pseudo_labels` runs the shipped (LAP-scale) model on a downsampled pyramid level of
   each PM slice (the level whose short side is closest to ``target_short_side``, i.e. LAP scale),
   turns its logits into a coarse label with the inference area rules, and marks as unlabelled
   (``ignore_value``, 255) every pixel that is uncertain: within ``band_px`` model pixels of the
   predicted border, with a logit margin ``|logit_1 - logit_0|`` below ``margin``, or changed by the
   area rules. The coarse label is upsampled (nearest) to full resolution, and ``crop`` x ``crop``
   full-resolution crops (image + label TIFFs) are written with a ``datalist.json``.
2. ``finetune.json`` (+ ``finetune_pm.json``) adapts the model to full-resolution PM crops on them:
   the loss and the Dice ignore the 255 band, so the border itself is learnt from the texture on
   both sides and from step 3.
3. The same command on the few hand-labelled tiles (``--init_ckpt`` = step 2's model) refines it.

Why custom: MONAI has no pseudo-labelling for pyramidal slices; the parts are MONAI's / the
bundle's (``inference.json``'s ``network_def`` and ``inferer``, ``NormalizeTransmittance``,
``TissueMaskPostprocess``, :func:`plimonai.qc.confidence.border_band`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tifffile
import torch

__all__ = ["choose_level", "coarse_pseudo_label", "upsample_window", "select_crops", "predict_logits",
           "pm_pseudo_labels", "IGNORE_VALUE"]

IGNORE_VALUE = 255
ROOT = Path(__file__).resolve().parent.parent
INFERENCE_CONFIG = ROOT / "bundle" / "configs" / "inference.json"


def choose_level(level_shapes: Sequence[tuple[int, int]], target_short_side: int = 2080) -> int:
    """Index of the pyramid level (``level_shapes[0]`` = full resolution) whose short side is closest to
    ``target_short_side`` (log scale, ties to the finer level)."""
    if not level_shapes:
        raise ValueError("no levels")
    costs = [abs(np.log2(max(1, min(s)) / float(target_short_side))) for s in level_shapes]
    return int(np.argmin(costs))


def coarse_pseudo_label(
    logits: torch.Tensor | np.ndarray,
    valid: np.ndarray | None = None,
    band_px: int = 3,
    margin: float = 2.2,
    min_component_area: int = 3000,
    max_hole_area: int = 1500,
    ignore_value: int = IGNORE_VALUE,
) -> np.ndarray:
    """(2, h, w) two-class logits (or (h, w) tissue margin) -> (h, w) uint8 label: 1 tissue, 0 background,
    ``ignore_value`` where uncertain.

    The label is the area-rule cleaned mask (:class:`~plimonai.transforms.post.TissueMaskPostprocess`,
    areas in pixels of ``logits``); uncertain = within ``band_px`` (Chebyshev) of its border, or
    ``|margin| < margin``, or where the area rules changed the network's decision. ``valid`` (h, w),
    non-zero = scanned: unscanned pixels are background (0), never uncertain.
    """
    from plimonai.qc.confidence import border_band, logit_margin
    from plimonai.transforms.post import TissueMaskPostprocess

    d = logit_margin(torch.as_tensor(np.asarray(logits)) if isinstance(logits, np.ndarray) else logits)
    raw = (d > 0).cpu().numpy()
    v = np.ones_like(raw) if valid is None else (np.asarray(valid).reshape(raw.shape) > 0)
    post = TissueMaskPostprocess(min_component_area, max_hole_area)(raw & v, v).astype(bool)
    uncertain = border_band(torch.from_numpy(post), int(band_px)).numpy()
    uncertain |= (d.abs() < float(margin)).cpu().numpy()
    uncertain |= post != (raw & v)
    uncertain &= v
    out = post.astype(np.uint8)
    out[uncertain] = ignore_value
    return out


def upsample_window(coarse: np.ndarray, full_shape: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Nearest-neighbour upsampling of ``coarse`` (h, w), a downsampled version of a ``full_shape`` image,
    cut to the full-resolution window ``[y0:y1, x0:x1]``: (y1 - y0, x1 - x0), ``coarse``'s dtype.
    Full pixel ``y`` takes coarse row ``floor(y * h / H)`` (any level ratio, e.g. 2**k with ceil sizes)."""
    h, w = coarse.shape
    H, W = full_shape
    iy = np.minimum((np.arange(y0, y1, dtype=np.int64) * h) // H, h - 1)
    ix = np.minimum((np.arange(x0, x1, dtype=np.int64) * w) // W, w - 1)
    return coarse[iy[:, None], ix[None, :]]


def select_crops(
    coarse: np.ndarray,
    full_shape: tuple[int, int],
    crop: int,
    max_crops: int,
    seed: int = 0,
    min_labelled: float = 0.25,
    ignore_value: int = IGNORE_VALUE,
) -> list[tuple[int, int, str]]:
    """Full-resolution crop origins ``(y0, x0, kind)`` on a ``crop`` grid, at most ``max_crops``.

    Only crops with at least ``min_labelled`` of their pixels labelled count. ``kind``: ``"border"`` (both
    classes, or some unlabelled pixels: the uncertain band), else ``"tissue"`` or ``"background"``. About
    60 % border crops, 20 % each of the others (the rest filled from whatever is left), seeded shuffle.
    """
    H, W = full_shape
    groups: dict[str, list[tuple[int, int]]] = {"border": [], "tissue": [], "background": []}
    for y0 in range(0, max(1, H - crop + 1), crop):
        for x0 in range(0, max(1, W - crop + 1), crop):
            lab = upsample_window(coarse, full_shape, y0, min(H, y0 + crop), x0, min(W, x0 + crop))
            labelled = lab != ignore_value
            if labelled.mean() < min_labelled:
                continue
            has_t, has_b = bool((lab == 1).any()), bool((lab == 0).any())
            kind = "border" if (has_t and has_b) or not labelled.all() else ("tissue" if has_t else "background")
            groups[kind].append((y0, x0))
    rng = np.random.default_rng(seed)
    for g in groups.values():
        rng.shuffle(g)
    quota = {"border": round(0.6 * max_crops), "tissue": round(0.2 * max_crops)}
    quota["background"] = max_crops - quota["border"] - quota["tissue"]
    chosen = {k: g[: quota[k]] for k, g in groups.items()}
    rest = [(y, x, k) for k, g in groups.items() for (y, x) in g[quota[k]:]]
    out = [(y, x, k) for k, g in chosen.items() for (y, x) in g]
    out += rest[: max(0, max_crops - len(out))]
    return out


def predict_logits(image: np.ndarray, network: torch.nn.Module, inferer: Any,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, np.ndarray]:
    """(h, w) slice array (any supported dtype) -> ((2, h, w) float32 logits on CPU, (h, w) bool valid mask):
    the inference preprocessing (:class:`~plimonai.transforms.intensity.NormalizeTransmittance`) and
    ``inferer`` (e.g. inference.json's sliding window) with ``network`` in eval mode."""
    from plimonai.transforms.intensity import NormalizeTransmittance

    x, valid = NormalizeTransmittance()(torch.from_numpy(np.asarray(image, dtype=np.float32))[None], return_valid=True)
    network.eval()
    with torch.inference_mode():
        logits = inferer(_plain(x)[None].to(device), network)
    return _plain(logits)[0].float().cpu(), _plain(valid).numpy().reshape(image.shape) > 0


def _plain(t: Any) -> torch.Tensor:
    """A plain tensor from a MetaTensor / tensor / array."""
    t = t.as_tensor() if hasattr(t, "as_tensor") else t
    return t if isinstance(t, torch.Tensor) else torch.as_tensor(np.asarray(t))


def _load_model(config_file: str | os.PathLike, ckpt_path: str, overrides: dict | None, device: torch.device):
    """``network_def`` (weights from ``ckpt_path`` unless empty), ``inferer`` and area rules of a bundle config."""
    from monai.bundle import ConfigParser

    from plimonai.training import load_weights

    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["device"] = f"$torch.device('{device}')"
    for k, v in (overrides or {}).items():
        parser[k] = v
    network = parser.get_parsed_content("network_def", instantiate=True).to(device)
    if ckpt_path:
        network.load_state_dict(load_weights(ckpt_path, map_location=device))
    inferer = parser.get_parsed_content("inferer", instantiate=True)
    return network, inferer, int(parser.get_parsed_content("min_component_area")), int(
        parser.get_parsed_content("max_hole_area"))


def _write_tiff(path: Path, arr: np.ndarray) -> None:
    from plimonai.io.writers import atomic_path

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, arr, compression="zlib", photometric="minisblack", metadata=None)


def pm_pseudo_labels(
    images: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    ckpt_path: str = "",
    config_file: str | os.PathLike = INFERENCE_CONFIG,
    overrides: dict | None = None,
    level: int | None = None,
    target_short_side: int = 2080,
    band_px: int = 3,
    margin: float = 2.2,
    crop: int = 1024,
    max_crops: int = 48,
    n_val: int = 2,
    min_labelled: float = 0.25,
    validation_datalist: str | os.PathLike | None = None,
    seed: int = 0,
    ignore_value: int = IGNORE_VALUE,
    device: str | torch.device | None = None,
) -> dict:
    """Write pseudo-labelled full-resolution crops of PM slices and a ``datalist.json`` for finetune.json.

    Args:
        images: PM slices, single-channel TIFFs (tiled, with a pyramid as from
            :func:`plimonai.synthetic.write_pm_slice`; without one, level 0 is used).
        out_dir: output folder: ``images/<slice>_y<Y>_x<X>.tif`` (the file's dtype), ``labels/<same>.tif``
            (uint8 0/1/``ignore_value``), ``coarse/<slice>.tif`` (the coarse label, for checking),
            ``datalist.json``, ``pseudo_labels.json`` (settings and per-slice figures).
        ckpt_path: the LAP-scale weights ("" keeps the config's network as built, e.g. a test stand-in).
        config_file, overrides: the bundle config giving ``network_def``, ``inferer``, ``min_component_area``
            and ``max_hole_area`` (any id can be overridden, e.g. ``{"network_def": {...}}``).
        level: pyramid level to run the model on (None: :func:`choose_level` with ``target_short_side``).
        band_px, margin: uncertain band half-width (pixels of that level) and logit margin
            (:func:`coarse_pseudo_label`).
        crop, max_crops, min_labelled, seed: crops per slice (:func:`select_crops`).
        n_val: crops per slice, taken from the border crops, that go to ``validation`` (with
            ``validation_datalist`` none: those entries, e.g. hand-labelled tiles, are the validation set).
        validation_datalist: a datalist whose ``validation`` (else ``training``) entries become the
            validation list (paths made absolute).

    Returns:
        dict: out_dir, datalist, slices (per slice: level, level_shape, factor, labelled_fraction,
        tissue_fraction, crops), n_training, n_validation.
    """
    from plimonai.data import load_datalist
    from plimonai.data.tiled import TiledTiffImage
    from plimonai.io.writers import atomic_path

    out = Path(out_dir)
    dev = torch.device(device) if device is not None else torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    network, inferer, min_area, max_hole = _load_model(config_file, ckpt_path, overrides, dev)
    training, validation, per_slice = [], [], []
    for path in images:
        path = Path(path)
        name = path.name.split(".")[0]
        with TiledTiffImage(path) as tif:
            k = choose_level(tif.level_shapes, target_short_side) if level is None else int(level)
            if not 0 <= k < len(tif.level_shapes):
                raise ValueError(f"{path}: level {k} requested, the file has {len(tif.level_shapes)} level(s)")
            logits, valid = predict_logits(tif.read_level(k), network, inferer, dev)
            # area rules are in model (LAP-scale) pixels: the level the model ran on
            coarse = coarse_pseudo_label(logits, valid, band_px, margin, min_area, max_hole, ignore_value)
            _write_tiff(out / "coarse" / f"{name}.tif", coarse)
            crops = select_crops(coarse, tif.shape, crop, max_crops, seed, min_labelled, ignore_value)
            entries = []
            for y0, x0, kind in crops:
                y1, x1 = min(tif.shape[0], y0 + crop), min(tif.shape[1], x0 + crop)
                stem = f"{name}_y{y0:06d}_x{x0:06d}"
                _write_tiff(out / "images" / f"{stem}.tif", tif.read(y0, y1, x0, x1, 0))
                _write_tiff(out / "labels" / f"{stem}.tif", upsample_window(coarse, tif.shape, y0, y1, x0, x1))
                entries.append(({"image": f"images/{stem}.tif", "label": f"labels/{stem}.tif"}, kind))
            n_v = 0 if validation_datalist else min(int(n_val), max(0, len(entries) - 1))
            val_idx = [i for i, (_, kd) in enumerate(entries) if kd == "border"][:n_v]
            val_idx += [i for i in range(len(entries)) if i not in val_idx][: n_v - len(val_idx)]
            validation += [entries[i][0] for i in val_idx]
            training += [e for i, (e, _) in enumerate(entries) if i not in val_idx]
            per_slice.append({
                "image": str(path), "level": k, "level_shape": list(tif.level_shapes[k]),
                "factor": round(tif.shape[0] / tif.level_shapes[k][0], 3),
                "labelled_fraction": float((coarse != ignore_value).mean()),
                "tissue_fraction": float((coarse == 1).mean()), "crops": len(entries),
            })
    if validation_datalist:
        vd = Path(validation_datalist)
        try:
            items = load_datalist(vd, "validation")
        except ValueError:
            items = load_datalist(vd, "training")
        validation = [{k: str(Path(v).resolve()) if k in ("image", "label") else v for k, v in it.items()} for it in items]
    if not training:
        raise ValueError(f"no crop of {[str(p) for p in images]} had >= {min_labelled:.0%} labelled pixels")
    datalist = out / "datalist.json"
    with atomic_path(datalist) as tmp:
        tmp.write_text(json.dumps({"training": training, "validation": validation}, indent=1) + "\n")
    summary = {"out_dir": str(out), "datalist": str(datalist), "slices": per_slice, "n_training": len(training),
               "n_validation": len(validation),
               "settings": {"ckpt_path": str(ckpt_path), "level": level, "target_short_side": target_short_side,
                            "band_px": band_px, "margin": margin, "crop": crop, "max_crops": max_crops,
                            "min_labelled": min_labelled, "seed": seed, "ignore_value": ignore_value,
                            "min_component_area": min_area, "max_hole_area": max_hole}}
    with atomic_path(out / "pseudo_labels.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
    return summary
