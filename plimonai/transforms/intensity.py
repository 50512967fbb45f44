"""Transmittance normalisation and the valid-pixel mask.

Network input is the *attenuation* ``a = 1 - T / T_glass``: glass ~ 0, tissue > 0 (white matter
highest), pixels outside the scan (exactly 0, NaN, inf) set to 0 like glass. Dividing by the glass
level makes uint8, uint16 and float [0, 1] (NTransmittance) versions of one slice identical, and a
0 background means zero padding (sliding window, affine augmentation) looks like glass.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils.type_conversion import convert_to_tensor

__all__ = [
    "valid_pixel_mask",
    "estimate_glass_level",
    "estimate_illumination",
    "fit_illumination",
    "IlluminationField",
    "bilinear_weights",
    "RegionNormalizer",
    "NormalizeTransmittance",
    "NormalizeTransmittanced",
]


def valid_pixel_mask(img: torch.Tensor, invalid_value: float | None = 0.0) -> torch.Tensor:
    """Bool mask of scanned pixels: finite and (if given) not equal to ``invalid_value``. Same shape."""
    valid = torch.isfinite(img)
    if invalid_value is not None:
        valid &= img != invalid_value
    return valid


def estimate_glass_level(
    img: torch.Tensor, valid: torch.Tensor, percentile: float = 99.0, max_samples: int = 1_000_000
) -> float:
    """Glass (background) transmittance: a high percentile of valid pixels (glass is the brightest).

    Uses a strided subsample of at most ``max_samples`` pixels; returns ``nan`` when no pixel is valid.
    """
    flat, vflat = img.reshape(-1), valid.reshape(-1)
    step = max(1, flat.numel() // max_samples)
    vals = flat[::step][vflat[::step]]
    if vals.numel() == 0:
        vals = flat[vflat]
    if vals.numel() == 0:
        return float("nan")
    return float(np.percentile(vals.detach().cpu().numpy(), percentile))


def _poly_basis(n: int, degree: int) -> np.ndarray:
    """(degree + 1, n) powers of coordinates scaled to [-1, 1]."""
    u = np.linspace(-1.0, 1.0, n, dtype=np.float64)
    return np.stack([u**k for k in range(degree + 1)])


class IlluminationField:
    """A fitted flat field (:func:`fit_illumination`): a 2D polynomial over the fitted image's block grid,
    optionally times a smooth local correction on that grid (``corr``, (hb, wb), bilinear between block centres).

    ``evaluate(y_centres, x_centres)`` gives the field (len(y), len(x)) float32 at pixel centres given in
    the fitted image's pixel units (pixel ``i`` of that image has centre ``i + 0.5``), so the same fit serves
    the image it was fitted on (``arange(h) + 0.5``) and a finer grid ``s`` times larger (``(arange(H) + 0.5) / s``).
    """

    def __init__(self, coef: np.ndarray, block: int, grid: tuple[int, int], median: float,
                 corr: np.ndarray | None = None) -> None:
        self.coef, self.block, self.grid, self.median = coef, int(block), grid, float(median)
        self.corr = None if corr is None else np.asarray(corr, np.float32)

    def evaluate(self, y_centres: np.ndarray, x_centres: np.ndarray) -> np.ndarray:
        (hb, wb), b, d = self.grid, self.block, self.coef.shape[0] - 1
        uy = np.clip((np.asarray(y_centres, np.float64) / b - 0.5) / max(hb - 1, 1) * 2 - 1, -1.2, 1.2)
        ux = np.clip((np.asarray(x_centres, np.float64) / b - 0.5) / max(wb - 1, 1) * 2 - 1, -1.2, 1.2)
        py, px = np.stack([uy**k for k in range(d + 1)]), np.stack([ux**k for k in range(d + 1)])
        # explicit sums instead of matmuls: BLAS rounds a single row (gemv) differently from a block
        # (gemm), and a band must get exactly the values the whole field has there
        a = sum(py[i][:, None] * self.coef[i][None, :] for i in range(d + 1)).astype(np.float32)  # (H, d+1)
        pxf = px.astype(np.float32)
        field = a[:, :1] * pxf[0]
        for j in range(1, d + 1):
            field += a[:, j : j + 1] * pxf[j]
        if self.corr is not None:  # bilinear between block centres, element-wise (bands = whole field)
            (y0, y1, wy), (x0, x1, wx) = (bilinear_weights(np.asarray(c, np.float64) / b - 0.5, n)
                                          for c, n in ((y_centres, hb), (x_centres, wb)))
            rows = self.corr[y0] * (1 - wy)[:, None] + self.corr[y1] * wy[:, None]
            field *= rows[:, x0] * (1 - wx) + rows[:, x1] * wx
        return np.clip(field, 0.5 * self.median, 1.5 * self.median)


def bilinear_weights(c: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear interpolation along one axis: for positions ``c`` (float64, in grid units, clamped to the ``n``
    nodes) the lower and upper node indices and the float32 weight of the upper one."""
    c = np.clip(c, 0.0, n - 1.0)
    i0 = np.floor(c).astype(np.int64)
    return i0, np.minimum(i0 + 1, n - 1), (c - i0).astype(np.float32)


def _grow(q: np.ndarray, seed: np.ndarray, step: float) -> np.ndarray:
    """Blocks reachable from ``seed`` through 4-neighbours whose values ``q`` differ by at most ``step``."""
    g, fin = seed.copy(), np.isfinite(q)
    qq = np.where(fin, q, np.inf)
    while True:
        new = np.zeros_like(g)
        for axis in (0, 1):
            for shift in (1, -1):
                gs, qs = np.roll(g, shift, axis), np.roll(qq, shift, axis)
                edge = [slice(None)] * 2
                edge[axis] = 0 if shift == 1 else -1
                gs[tuple(edge)] = False  # no wrap-around
                with np.errstate(invalid="ignore"):
                    new |= gs & fin & ~g & (np.abs(qq - qs) <= step)
        if not new.any():
            return g
        g |= new


def local_correction(q: np.ndarray, keep: np.ndarray, step: float = 0.015, sigma: float = 2.0,
                     noise: float = 0.0) -> np.ndarray | None:
    """Smooth multiplicative correction (hb, wb) of a global glass fit from the block envelopes ``q`` (block value
    / fitted field, NaN where unusable) and the blocks the fit kept as glass.

    A robust global fit rejects strongly vignetted glass (a dark corner) as if it were tissue. Glass changes
    smoothly from block to block, a tissue border jumps: the glass set grows from ``keep`` into neighbours
    within ``step`` of each other, and the correction is the grown set's ``q``, gaussian-smoothed
    (``sigma`` blocks) by normalised convolution, fading to 1 away from it. None when nothing was added, or
    when ``step`` is within the fit's own scatter (``3 * noise``, robust sigma of the kept ``q``): a loose fit has
    kept pale tissue among its glass, and growing from it would creep into the section.
    """
    if 3.0 * noise >= step:
        return None
    grown = _grow(q, keep, step)
    if not (grown & ~keep).any():
        return None
    w = grown.astype(np.float64)
    num = ndimage.gaussian_filter(np.where(grown, q, 0.0), sigma, mode="nearest")
    den = ndimage.gaussian_filter(w, sigma, mode="nearest")
    eps = 0.05  # weight of the prior 1 (no correction) where the grown glass is far
    return np.clip((num + eps) / (den + eps), 0.5, 1.05).astype(np.float32)


def fit_illumination(
    trans: np.ndarray,
    valid: np.ndarray,
    degree: int = 3,
    n_blocks: int = 32,
    percentile: float = 95.0,
    iters: int = 6,
    min_glass_blocks: float = 0.1,
    bin_px: int = 4,
    local_step: float | None = 0.015,
) -> IlluminationField | None:
    """The fit of :func:`estimate_illumination` without evaluating it at every pixel (streamed slices
    evaluate it band by band); None when too little glass shows. ``local_step``: see :func:`local_correction`
    (None: the polynomial alone)."""
    h, w = trans.shape
    k = bin_px
    b = max(2 * k, min(h, w) // n_blocks // k * k)
    hb, wb = h // b, w // b
    if hb < degree + 1 or wb < degree + 1:
        return None
    # k x k bin means first: the envelope percentile of noisy pixels would sit noise-dependent above the glass
    t = torch.as_tensor(np.ascontiguousarray(trans[: hb * b, : wb * b], dtype=np.float32))[None, None]
    ok = torch.as_tensor(np.ascontiguousarray(valid[: hb * b, : wb * b]))[None, None].float()
    ok = F.avg_pool2d(ok, k)[0, 0].numpy() > 0.999  # torch pooling: ~10x faster than numpy reshape-means
    xb = np.where(ok, F.avg_pool2d(torch.nan_to_num(t), k)[0, 0].numpy(), -np.inf)
    x = xb.reshape(hb, b // k, wb, b // k).transpose(0, 2, 1, 3).reshape(hb, wb, -1)
    with np.errstate(invalid="ignore"):  # -inf - -inf in the interpolation: such blocks become NaN
        v = np.percentile(x, percentile, axis=2)  # invalid bins (-inf) sort below the valid ones
    v[~np.isfinite(v) | (np.isinf(x).mean(axis=2) > 0.5)] = np.nan
    by, bx = _poly_basis(hb, degree), _poly_basis(wb, degree)
    pairs = [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i)]
    a = np.stack([np.outer(by[i], bx[j]).ravel() for i, j in pairs], axis=1)
    vv = v.ravel()
    finite = np.isfinite(vv)
    keep = finite & (vv >= np.nanmedian(vv)) if finite.any() else finite
    for _ in range(iters):
        if keep.sum() < max(3 * len(pairs), min_glass_blocks * finite.sum()):
            return None
        coef, *_ = np.linalg.lstsq(a[keep], vv[keep], rcond=None)
        fitted = a @ coef
        r = vv - fitted
        sigma = 1.4826 * np.median(np.abs(r[keep])) + 1e-9
        keep = finite & (r > -3.0 * sigma)
    c = np.zeros((degree + 1, degree + 1))
    for (i, j), v in zip(pairs, coef):
        c[i, j] = v
    level = float(np.median(vv[keep]))
    corr = None
    if local_step is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            q = (vv / fitted).reshape(hb, wb)
        corr = local_correction(q, keep.reshape(hb, wb), local_step, noise=sigma / level)
    return IlluminationField(c, b, (hb, wb), level, corr)


def estimate_illumination(
    trans: np.ndarray,
    valid: np.ndarray,
    degree: int = 3,
    n_blocks: int = 32,
    percentile: float = 95.0,
    iters: int = 6,
    min_glass_blocks: float = 0.1,
    bin_px: int = 4,
    local_step: float | None = 0.015,
) -> np.ndarray | None:
    """Smooth glass-transmittance field ``B (H, W)`` (flat field), or None when too little glass shows.

    The slice is cut into about ``n_blocks`` blocks along its short side; each block's ``percentile``
    of its valid ``bin_px`` x ``bin_px`` bin means is its upper envelope (glass where the block shows glass). A 2D polynomial of
    ``degree`` is fitted to those values, iteratively rejecting blocks far below the fit (tissue, ink,
    slide edges), so vignetting and illumination gradients divide out and pale grey matter is
    compared with the glass next to it rather than with the brightest glass of the slide.
    """
    fit = fit_illumination(trans, valid, degree, n_blocks, percentile, iters, min_glass_blocks, bin_px, local_step)
    if fit is None:
        return None
    h, w = trans.shape  # evaluate at every pixel: block centres map to the same [-1, 1] coordinates
    return fit.evaluate(np.arange(h) + 0.5, np.arange(w) + 0.5)


class NormalizeTransmittance(Transform):
    """Transmittance ``T`` -> attenuation ``1 - T / T_glass``, clipped, invalid pixels -> 0.

    Args:
        glass_percentile: percentile of valid pixels taken as the glass level.
        invalid_value: value marking unscanned pixels (NTransmittance writes 0); ``None`` to keep it.
        clip: output range.
        channel: the transmittance channel; other channels (e.g. retardation) are left unchanged
            except that invalid pixels are zeroed.
        flat_field_degree: divide by a fitted illumination field of this polynomial degree
            (:func:`estimate_illumination`) instead of one glass level; ``None`` for one level. Falls
            back to one level when too little glass shows.
        flat_field_local_step: the field's local correction (:func:`local_correction`); None: polynomial only.

    Input ``(C, H, W)`` any real dtype; output ``(C, H, W)`` float32 (MetaTensor meta kept, with
    ``glass_level`` added). ``__call__(img, return_valid=True)`` also returns the (1, H, W) uint8 valid mask.
    A slice without a single valid pixel gives all zeros (all background).
    """

    def __init__(
        self,
        glass_percentile: float = 99.0,
        invalid_value: float | None = 0.0,
        clip: Sequence[float] = (-0.5, 1.0),
        channel: int = 0,
        flat_field_degree: int | None = 3,
        flat_field_local_step: float | None = 0.015,
    ) -> None:
        self.flat_field_degree = flat_field_degree
        self.flat_field_local_step = flat_field_local_step
        self.glass_percentile = glass_percentile
        self.invalid_value = invalid_value
        self.clip = (float(clip[0]), float(clip[1]))
        self.channel = channel

    def fit_regions(self, trans, scale: Sequence[float] = (1.0, 1.0)) -> "RegionNormalizer":
        """Estimate glass level and flat field on ``trans`` (h, w), e.g. a low-resolution pyramid level of a
        slice ``scale`` = (sy, sx) times larger, for :class:`RegionNormalizer` to apply to the full slice."""
        t = torch.as_tensor(np.asarray(trans, dtype=np.float32))
        valid = valid_pixel_mask(t, self.invalid_value)
        glass = estimate_glass_level(t, valid, self.glass_percentile)
        field = None
        if np.isfinite(glass) and glass > 0 and self.flat_field_degree is not None:
            field = fit_illumination(t.numpy(), valid.numpy(), degree=self.flat_field_degree,
                                     local_step=self.flat_field_local_step)
        return RegionNormalizer(glass, field, scale, self.clip, self.invalid_value)

    def __call__(self, img, return_valid: bool = False):
        t = convert_to_tensor(img, track_meta=True)
        x = t.as_tensor() if isinstance(t, MetaTensor) else t
        x = x.to(torch.float32)
        trans = x[self.channel]
        valid = valid_pixel_mask(trans, self.invalid_value)
        glass = estimate_glass_level(trans, valid, self.glass_percentile)
        out = torch.zeros_like(x)
        if np.isfinite(glass) and glass > 0:
            field = None
            if self.flat_field_degree is not None:
                field = estimate_illumination(trans.numpy(), valid.numpy(), degree=self.flat_field_degree,
                                              local_step=self.flat_field_local_step)
            ref = torch.from_numpy(field) if field is not None else glass
            out[self.channel] = (1.0 - trans / ref).clamp_(*self.clip)
            for c in range(x.shape[0]):
                if c != self.channel:
                    out[c] = torch.nan_to_num(x[c], nan=0.0, posinf=0.0, neginf=0.0)
            out[:, ~valid] = 0.0
        else:
            valid = torch.zeros_like(valid)
        if isinstance(t, MetaTensor):
            out = MetaTensor(out, meta=t.meta, applied_operations=t.applied_operations)
            out.meta["glass_level"] = glass
        if return_valid:
            return out, valid[None].to(torch.uint8)
        return out


class RegionNormalizer:
    """:class:`NormalizeTransmittance` with its glass level and flat field fixed, applied region by region.

    For slices too large to load (streamed PM slices): the statistics are estimated once on a
    low-resolution level (:meth:`NormalizeTransmittance.fit_regions`) and each band or window of the
    full-resolution slice is normalised with them. With statistics from the full-resolution image
    (``scale`` 1) every region gets exactly the values the whole-slice transform gives there.

    Args:
        glass: glass level (NaN or <= 0: nothing usable, every region becomes invalid background).
        field: fitted flat field, or None for the single glass level.
        scale: (sy, sx) slice pixels per pixel of the image the statistics came from.
        clip: output range.
        invalid_value: value marking unscanned pixels.

    ``__call__(trans, y0, x0)``: (h, w) transmittance (any real dtype) at row ``y0``, column ``x0`` of the
    slice -> ((h, w) float32 attenuation, (h, w) bool valid mask).
    """

    def __init__(self, glass: float, field: IlluminationField | None, scale: Sequence[float] = (1.0, 1.0),
                 clip: Sequence[float] = (-0.5, 1.0), invalid_value: float | None = 0.0) -> None:
        self.glass, self.field = float(glass), field
        self.scale = (float(scale[0]), float(scale[1]))
        self.clip, self.invalid_value = (float(clip[0]), float(clip[1])), invalid_value

    @property
    def usable(self) -> bool:
        return bool(np.isfinite(self.glass) and self.glass > 0)

    def reference(self, y0: int, x0: int, h: int, w: int) -> torch.Tensor | float:
        """The glass reference (field values (h, w) float32, or the glass level) of a region."""
        if self.field is None:
            return self.glass
        ys = (np.arange(y0, y0 + h) + 0.5) / self.scale[0]
        xs = (np.arange(x0, x0 + w) + 0.5) / self.scale[1]
        return torch.from_numpy(self.field.evaluate(ys, xs))

    def __call__(self, trans, y0: int = 0, x0: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.asarray(trans, dtype=np.float32)) if not isinstance(trans, torch.Tensor) else trans.float()
        valid = valid_pixel_mask(x, self.invalid_value)
        if not self.usable:
            return torch.zeros_like(x), torch.zeros_like(valid)
        out = (1.0 - x / self.reference(y0, x0, *x.shape)).clamp_(*self.clip)  # as NormalizeTransmittance
        out[~valid] = 0.0
        return out, valid


class NormalizeTransmittanced(MapTransform):
    """Dictionary wrapper of :class:`NormalizeTransmittance`; stores the (1, H, W) uint8 valid mask
    under ``valid_key`` (skipped when ``None``)."""

    def __init__(
        self,
        keys: KeysCollection,
        valid_key: str | None = "valid",
        glass_percentile: float = 99.0,
        invalid_value: float | None = 0.0,
        clip: Sequence[float] = (-0.5, 1.0),
        channel: int = 0,
        flat_field_degree: int | None = 3,
        flat_field_local_step: float | None = 0.015,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.valid_key = valid_key
        self.normalizer = NormalizeTransmittance(glass_percentile, invalid_value, clip, channel, flat_field_degree,
                                                 flat_field_local_step)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], valid = self.normalizer(d[key], return_valid=True)
            if self.valid_key is not None:
                d[self.valid_key] = valid
        return d
