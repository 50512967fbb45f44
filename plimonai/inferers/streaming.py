"""Streaming inference for slices too large to load (Polarizing Microscope scale, e.g. 60000 x 50000 px).

:class:`StreamSelector` (in the dataset) sends TIFF slices with at least ``stream_min_pixels`` pixels here
instead of through the whole-slice preprocessing; :class:`StreamingSliceInferer` (called by
:class:`~plimonai.engines.SliceEvaluator`) then does the whole slice in bounded memory:

1. open the TIFF lazily (:class:`~plimonai.data.tiled.TiledTiffImage`) and take the *preview*: the finest
   pyramid level whose long side is at most ``coarse_max_side`` (about LAP scale), else a block mean of
   the coarsest level computed band by band;
2. estimate the normalisation on the preview once (glass level and flat field,
   :meth:`~plimonai.transforms.intensity.NormalizeTransmittance.fit_regions`) and apply it per window;
3. coarse-to-fine (default): run the network on the preview, and at full resolution only the windows
   whose core meets the uncertain border band (:mod:`plimonai.inferers.coarse_to_fine`); otherwise all;
4. blend the full-resolution windows (MONAI's window grid and gaussian importance map, so with every
   window running the logits equal ``sliding_window_inference`` on the whole slice) in a sweep that
   finalises each block as soon as no later window touches it (:class:`BlendSweep`);
5. threshold, post-process band-wise with the LAP policy
   (:class:`~plimonai.transforms.post_stream.StreamingMaskPostprocess`), write the mask as a tiled
   pyramidal TIFF (:func:`~plimonai.io.tiled.write_tiled_mask`), and an overlay PNG from the preview.

Memory: network and window buffers, the preview (a few ``coarse_max_side``\\ :sup:`2` float arrays), the
tile cache, one band of the mask, and the blending carry (window overlap x slice width, 8 bytes a pixel),
not the slice. See ``bundle/docs/pm_inference.md``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import nullcontext
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices

from plimonai.data.tiled import TiledTiffImage, tiff_shape
from plimonai.io.overlay import overlay_path_for, save_overlay
from plimonai.io.tiled import BlockReducer, write_tiled_mask
from plimonai.io.writers import mask_path_for
from plimonai.qc.confidence import slice_confidence
from plimonai.runtime import trim_heap
from plimonai.transforms.intensity import NormalizeTransmittance, RegionNormalizer, valid_pixel_mask
from plimonai.transforms.post_stream import StreamingMaskPostprocess

from .coarse_to_fine import CoarsePrediction, coarse_margin
from .sliding_window import FlipTTAPredictor, GlassSkipPredictor

__all__ = ["StreamSelector", "window_starts", "BlendSweep", "StreamingSliceInferer"]

logger = logging.getLogger(__name__)


class StreamSelector:
    """``selector(path) -> True`` for TIFF slices of at least ``min_pixels`` pixels (read from the header
    only), which then stream; ``min_pixels=None`` streams nothing. Unreadable files return False, so the
    normal loader reports them. Picklable (runs in DataLoader workers)."""

    def __init__(self, min_pixels: int | None = 50_000_000) -> None:
        self.min_pixels = None if min_pixels is None else int(min_pixels)

    def __call__(self, path: str | os.PathLike) -> bool:
        if self.min_pixels is None:
            return False
        shape = tiff_shape(path)
        return shape is not None and shape[0] * shape[1] >= self.min_pixels


def _prime(network: Callable, device: torch.device) -> None:
    """One tiny forward before the first window: a lazily built runtime (ONNX Runtime's export traces its
    first input) is then built on 64 x 64 px, not on a 1024 x 1024 window (about 0.4 GB less peak)."""
    try:
        network(torch.zeros(1, 1, 64, 64, device=device))
    except Exception:  # a network that cannot take it (fixed input size): build on the first window
        pass
    trim_heap()


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window starts along one axis exactly as MONAI's ``sliding_window_inference`` places them (``size >= roi``)."""
    interval = roi if roi == size else max(int(roi * (1 - overlap)), 1)  # monai.inferers.utils._get_scan_interval
    return [int(s[0].start) for s in dense_patch_slices((size,), (roi,), (interval,))]


class BlendSweep:
    """Weighted blending of window outputs over a huge grid, finalising blocks as soon as they are complete.

    Windows are visited row by row, left to right (MONAI's order). The block of window (i, j) from its
    top-left corner to the next window's start (to the image end for the last ones) receives no
    contribution from later windows, so it is finalised right after window (i, j): ``finalize(y0, x0,
    sums (C, h, w), weights (h, w))`` turns it into a mask block. What later windows still need is
    carried: to the right, the previous window's buffer; downward, the rows below the next window row
    (``carry``: the C weighted sums, (C, rows, W); the weights there are re-added from the window grid,
    in the same order, instead of being carried). Every pixel adds its contributions in window order, as
    ``sliding_window_inference`` does, so the blend is bitwise the same. MONAI's ``sliding_window_inference``
    and ``AvgMerger`` hold the whole output and count map, ``ZarrAvgMerger`` spills them to disk: hence this.

    Args:
        shape: (H, W), both >= the roi.
        roi: (Ry, Rx) window size.
        ys, xs: window starts along each axis.
        importance: (Ry, Rx) float32 blending weights.
        channels: C, the network's output channels.
    """

    def __init__(self, shape: tuple[int, int], roi: Sequence[int], ys: Sequence[int], xs: Sequence[int],
                 importance: torch.Tensor, channels: int = 2) -> None:
        self.shape, self.roi = (int(shape[0]), int(shape[1])), (int(roi[0]), int(roi[1]))
        self.ys, self.xs = list(ys), list(xs)
        self.importance, self.channels = importance.float(), int(channels)

    def _earlier_weights(self, wbuf: torch.Tensor, i: int, x0: int, c0: int, rows: int, active: np.ndarray) -> None:
        """Add to ``wbuf`` (the weight plane of window (i, ·)'s buffer at column ``x0``) the importance of every
        running window of the rows above that reaches its first ``rows`` rows, columns ``c0`` on, in window
        order: what the carried weight sums would hold, at 2/3 of the carry's memory."""
        (ry, rx), ys, xs = self.roi, self.ys, self.xs
        for k in range(i):
            r1 = min(ys[k] + ry, ys[i] + rows)
            if r1 <= ys[i]:
                continue
            for m, xm in enumerate(xs):
                a0, a1 = max(xm, x0 + c0), min(xm + rx, x0 + rx)
                if a0 < a1 and active[k, m]:
                    wbuf[: r1 - ys[i], a0 - x0 : a1 - x0] += self.importance[ys[i] - ys[k] : r1 - ys[k], a0 - xm : a1 - xm]

    def run(
        self,
        active: np.ndarray,
        predict: Callable[[list[tuple[int, int]]], list[torch.Tensor]],
        finalize: Callable[[int, int, torch.Tensor, torch.Tensor], np.ndarray],
        batch: int = 1,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(y0, band)``: the (h, W) bool mask rows from ``y0`` to the next window row's start.

        Args:
            active: (len(ys), len(xs)) bool, the windows that run (the others contribute nothing).
            predict: window indices -> their weighted outputs (C, Ry, Rx) (network output x importance).
            finalize: see the class docstring.
            batch: windows per ``predict`` call (consecutive active windows in visiting order).
        """
        (h, w), (ry, rx), c = self.shape, self.roi, self.channels
        ys, xs = self.ys, self.xs
        carry: torch.Tensor | None = None  # rows [ys[i], ys[i-1] + ry) x W, from earlier rows
        todo = [(i, j) for i in range(len(ys)) for j in range(len(xs)) if active[i, j]]
        where = {ij: k for k, ij in enumerate(todo)}
        preds: dict[tuple[int, int], torch.Tensor] = {}  # batches span rows, as MONAI's do: same outputs
        for i, y0 in enumerate(ys):
            oy1 = ys[i + 1] if i + 1 < len(ys) else h
            band = np.zeros((oy1 - y0, w), bool)
            nxt = ys[i + 1] if i + 1 < len(ys) else None
            carry_out = torch.zeros((c, y0 + ry - nxt, w)) if nxt is not None else None
            prev: tuple[int, torch.Tensor] | None = None
            for j, x0 in enumerate(xs):
                ox1 = xs[j + 1] if j + 1 < len(xs) else w
                buf = torch.zeros((c + 1, ry, rx))
                new_from = 0
                if prev is not None:  # columns still open from the previous window of this row
                    px0, pbuf = prev
                    new_from = max(0, px0 + rx - x0)
                    if new_from:
                        buf[:, :, :new_from] = pbuf[:, :, x0 - px0 :]
                if carry is not None and new_from < rx:  # earlier rows' contributions to the new columns
                    buf[:c, : carry.shape[1], new_from:] = carry[:, :, x0 + new_from : x0 + rx]
                    self._earlier_weights(buf[c], i, x0, new_from, carry.shape[1], active)
                if active[i, j]:
                    if (i, j) not in preds:
                        ids = todo[where[(i, j)] : where[(i, j)] + max(1, batch)]
                        preds.update(zip(ids, predict(ids)))
                    buf[:c] += preds.pop((i, j))
                    buf[c] += self.importance
                band[:, x0:ox1] = finalize(y0, x0, buf[:c, : oy1 - y0, : ox1 - x0], buf[c, : oy1 - y0, : ox1 - x0])
                if carry_out is not None:
                    carry_out[:, :, x0:ox1] = buf[:c, nxt - y0 :, : ox1 - x0]
                prev = (x0, buf)
            carry = carry_out
            yield y0, band


class StreamingSliceInferer:
    """Segments one huge TIFF slice in bounded memory and writes its outputs (see the module docstring).

    Args:
        roi_size, sw_batch_size, overlap, mode, sigma_scale: the sliding window, as for the LAP inferer.
        coarse_to_fine: run full resolution only near the uncertain border band; False: every window.
        coarse_max_side: the preview (normalisation statistics, coarse pass, overlay) is the finest
            pyramid level with a long side at most this (px).
        uncertain_logit: coarse pixels with ``|margin|`` below this are uncertain.
        border_px: the uncertain band is widened by this many full-resolution pixels.
        postprocess: the band-wise area rules (:class:`StreamingMaskPostprocess`).
        normalize: the normalisation policy (:class:`NormalizeTransmittance`; default: its defaults).
        output_dir: where ``NAME_mask.tif`` and ``NAME_overlay.png`` go.
        tile: tile side of the written mask.
        overlay_max_size: longer side of the overlay PNG.
        qc_band_px, qc_margin: the stack-QC confidence (:func:`plimonai.qc.slice_confidence`).
        tta, skip_glass_below, glass_pool: per-window options of :class:`~plimonai.inferers.PLISlidingWindowInferer`.
        out_channels: network output channels.
        cache_mb: decoded TIFF tiles kept for reuse.
        pred_key: key of the (downsampled) mask in the output record, as in the LAP post-processing.

    ``__call__(path, network, device)`` -> the output record for the handlers: ``mask_path``,
    ``overlay_path``, ``tissue_area_px``, ``{pred_key}_components``, ``height``, ``width``, ``pred`` (the mask at
    preview size, for thumbnails), ``confidence``, ``glass_level``, ``tta_dice``, ``windows_run`` (full
    resolution), ``windows_total`` (of the full grid), ``coarse_windows``, ``stream_seconds``.
    """

    def __init__(
        self,
        roi_size: Sequence[int] = (1024, 1024),
        sw_batch_size: int = 2,
        overlap: float = 0.125,
        mode: str = "gaussian",
        sigma_scale: float = 0.125,
        coarse_to_fine: bool = True,
        coarse_max_side: int = 3072,
        uncertain_logit: float = 2.2,
        border_px: float = 32,
        postprocess: StreamingMaskPostprocess | None = None,
        normalize: NormalizeTransmittance | None = None,
        output_dir: str | os.PathLike = ".",
        tile: int = 512,
        overlay_max_size: int = 1024,
        qc_band_px: int = 8,
        qc_margin: float = 2.2,
        tta: bool = False,
        skip_glass_below: float | None = None,
        glass_pool: int = 8,
        out_channels: int = 2,
        cache_mb: int = 64,
        pred_key: str = "pred",
    ) -> None:
        self.roi = (int(roi_size[0]), int(roi_size[1]))
        self.sw_batch_size, self.overlap, self.mode, self.sigma_scale = int(sw_batch_size), float(overlap), mode, sigma_scale
        self.coarse_to_fine, self.coarse_max_side = bool(coarse_to_fine), int(coarse_max_side)
        self.uncertain_logit, self.border_px = float(uncertain_logit), float(border_px)
        self.postprocess = postprocess if postprocess is not None else StreamingMaskPostprocess()
        self.normalize = normalize if normalize is not None else NormalizeTransmittance()
        self.output_dir, self.tile, self.overlay_max_size = output_dir, int(tile), int(overlay_max_size)
        self.qc_band_px, self.qc_margin = qc_band_px, float(qc_margin)
        self.tta, self.skip_glass_below, self.glass_pool = bool(tta), skip_glass_below, int(glass_pool)
        self.out_channels, self.cache_bytes, self.pred_key = int(out_channels), int(cache_mb) << 20, pred_key
        self.importance = compute_importance_map(self.roi, mode=mode, sigma_scale=sigma_scale, device="cpu",
                                                 dtype=torch.float32)

    # -- preview ---------------------------------------------------------------------------------
    def preview(self, img: TiledTiffImage) -> np.ndarray:
        """(h, w) float32 transmittance at about LAP scale: a stored level, else a block mean computed band by band."""
        fits = [k for k, s in enumerate(img.level_shapes) if max(s) <= self.coarse_max_side]
        if fits:
            return img.read_level(fits[0]).astype(np.float32)
        k = len(img.level_shapes) - 1
        lh, lw = img.level_shapes[k]
        f = math.ceil(max(lh, lw) / self.coarse_max_side)
        rows = max(f, (1 << 22) // max(1, lw) // f * f)
        red, parts = BlockReducer(f, "mean"), []
        for r0 in range(0, lh, rows):
            out = red.push(img.read(r0, min(lh, r0 + rows), 0, lw, k).astype(np.float32))
            if out is not None:
                parts.append(out)
        last = red.flush()
        if last is not None:
            parts.append(last)
        return np.concatenate(parts)

    # -- network ---------------------------------------------------------------------------------
    def _predictor(self, network: Callable) -> tuple[Callable, FlipTTAPredictor | None]:
        tta = FlipTTAPredictor(network) if self.tta else None
        predictor: Callable = tta if tta is not None else network
        if self.skip_glass_below is not None:
            predictor = GlassSkipPredictor(predictor, self.skip_glass_below, self.glass_pool, self.out_channels)
        return predictor, tta

    def __call__(self, path: str | os.PathLike, network: Callable, device: torch.device | str | None = None,
                 amp: bool = False, amp_kwargs: dict | None = None) -> dict[str, Any]:
        with torch.inference_mode():
            return self._run(path, network, device, amp, amp_kwargs)

    def _run(self, path: str | os.PathLike, network: Callable, device: torch.device | str | None,
             amp: bool, amp_kwargs: dict | None) -> dict[str, Any]:
        t0 = time.perf_counter()
        path = os.fspath(path)
        device = torch.device(device or "cpu")
        autocast = (lambda: torch.autocast(device.type, **(amp_kwargs or {}))) if amp else nullcontext
        predictor, tta = self._predictor(network)
        _prime(network, device)
        with TiledTiffImage(path, cache_bytes=self.cache_bytes) as img:
            h, w = img.shape
            if h < self.roi[0] or w < self.roi[1]:
                raise ValueError(f"{path}: {h} x {w} px is smaller than the {self.roi[0]} x {self.roi[1]} window; "
                                 "raise stream_min_pixels so it is segmented in memory")
            small = self.preview(img)
            scale = (h / small.shape[0], w / small.shape[1])
            norm = self.normalize.fit_regions(small, scale)
            small_att, small_valid = RegionNormalizer(norm.glass, norm.field, (1.0, 1.0), norm.clip, norm.invalid_value)(small)
            del small
            trim_heap()
            ys, xs = window_starts(h, self.roi[0], self.overlap), window_starts(w, self.roi[1], self.overlap)
            coarse, coarse_windows = None, 0
            if self.coarse_to_fine:
                with autocast():
                    margin, coarse_windows = coarse_margin(small_att, predictor, self.roi, self.sw_batch_size,
                                                           self.overlap, self.mode, self.sigma_scale, device)
                coarse = CoarsePrediction(margin, small_valid.numpy(), (h, w))
                active = coarse.active_windows(ys, xs, self.roi, self.uncertain_logit, self.border_px,
                                               self.postprocess.min_component_area, self.postprocess.max_hole_area)
                trim_heap()
            else:
                active = np.ones((len(ys), len(xs)), bool)

            def predict(ids: list[tuple[int, int]]) -> list[torch.Tensor]:
                x = torch.stack([norm(img.read(ys[i], ys[i] + self.roi[0], xs[j], xs[j] + self.roi[1]), ys[i], xs[j])[0]
                                 for i, j in ids])[:, None]
                with autocast():
                    out = predictor(x.to(device))
                out = out.float().cpu()
                trim_heap()  # the network's freed activations (see plimonai.runtime.trim_heap)
                if out.shape[1] != self.out_channels:
                    raise ValueError(f"network gave {out.shape[1]} channels, expected out_channels={self.out_channels}")
                return list(out * self.importance)  # as sliding_window_inference: output *= importance map

            step = max(1, math.ceil(max(h, w) / 1536))  # slice_confidence's subsampling (max_side 1536)
            conf_m = np.zeros((-(-h // step), -(-w // step)), np.float32)
            conf_v = np.zeros(conf_m.shape, bool)
            valid_rows: dict[int, np.ndarray] = {}

            def finalize(y0: int, x0: int, sums: torch.Tensor, wts: torch.Tensor) -> np.ndarray:
                bh, bw = wts.shape
                covered = wts > 0
                if bool(covered.all()):
                    logits = sums / wts
                else:
                    logits = sums / torch.where(covered, wts, torch.ones_like(wts))
                mask = (logits[1] > logits[0]) if logits.shape[0] >= 2 else (logits[0] > 0)
                margin_b = (logits[1] - logits[0]) if logits.shape[0] >= 2 else logits[0]
                mask, margin_b = mask.numpy(), margin_b.numpy()
                if coarse is not None and not bool(covered.all()):
                    up = coarse.upsample(y0, y0 + bh, x0, x0 + bw)
                    cov = covered.numpy()
                    margin_b = np.where(cov, margin_b, up)
                    mask = np.where(cov, mask, up > 0)
                if bool(covered.any()):
                    raw = img.read(y0, y0 + bh, x0, x0 + bw)
                    valid = valid_pixel_mask(torch.from_numpy(raw.astype(np.float32, copy=False)),
                                             norm.invalid_value).numpy() & norm.usable
                else:
                    valid = coarse.valid_at(y0, y0 + bh, x0, x0 + bw) & norm.usable
                r = np.arange(-(-y0 // step) * step, y0 + bh, step)
                q = np.arange(-(-x0 // step) * step, x0 + bw, step)
                if r.size and q.size:
                    conf_m[np.ix_(r // step, q // step)] = margin_b[np.ix_(r - y0, q - x0)]
                    conf_v[np.ix_(r // step, q // step)] = valid[np.ix_(r - y0, q - x0)]
                if y0 not in valid_rows:
                    valid_rows[y0] = np.zeros((bh, w), bool)
                valid_rows[y0][:, x0 : x0 + bw] = valid
                return mask & valid

            sweep = BlendSweep((h, w), self.roi, ys, xs, self.importance, self.out_channels)
            pp = self.postprocess
            pp.start(w)
            for y0, band in sweep.run(active, predict, finalize, self.sw_batch_size):
                pp.add(band, valid_rows.pop(y0))
                trim_heap()
            windows_run = int(active.sum())

            # pass 3 of the post-processing streams into the writer; the overlay mask is reduced on the way
            f = max(1, round(h / small_att.shape[0]))
            reducer, small_parts, area = BlockReducer(f, "mean"), [], [0]

            def final_bands() -> Iterator[np.ndarray]:
                for band in pp.bands():
                    area[0] += int(np.count_nonzero(band))
                    part = reducer.push(band.view(np.uint8))
                    if part is not None:
                        small_parts.append(part)
                    yield band

            mask_path = mask_path_for(path, self.output_dir)
            write_tiled_mask(mask_path, final_bands(), (h, w), tile=self.tile, reference=path)
        last = reducer.flush()
        if last is not None:
            small_parts.append(last)
        small_mask = np.zeros(small_att.shape, np.uint8)
        sm = (np.concatenate(small_parts) >= 0.5)[: small_mask.shape[0], : small_mask.shape[1]]
        small_mask[: sm.shape[0], : sm.shape[1]] = sm
        overlay_path = save_overlay(overlay_path_for(path, self.output_dir), small_att, small_mask, self.overlay_max_size)
        conf = slice_confidence(torch.from_numpy(conf_m), self.qc_band_px / step, self.qc_margin, conf_v, max_side=0)
        seconds = time.perf_counter() - t0
        logger.info("%s: streamed %d x %d px, %d of %d full-resolution windows (+%d coarse), %.1f s",
                    path, h, w, windows_run, active.size, coarse_windows, seconds)
        return {
            "mask_path": str(mask_path), "overlay_path": str(overlay_path), "tissue_area_px": area[0],
            f"{self.pred_key}_components": pp.components, "height": h, "width": w, self.pred_key: small_mask,
            "confidence": conf["confidence"], "glass_level": norm.glass,
            "tta_dice": tta.dice() if tta is not None else None, "windows_run": windows_run,
            "windows_total": int(active.size), "coarse_windows": coarse_windows, "resample_factor": "1",
            "stream_seconds": seconds,
        }
