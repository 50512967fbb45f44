"""Random fields and window sampling shared by geometry and rendering.

Conventions used across :mod:`plimonai.synthetic`:

* A *coarse grid* with integer ``scale`` s has node (i, j) at output pixel (i*s, j*s); its shape
  is :func:`coarse_shape`. Smooth fields (signed distances, illumination...) live on it and are
  bilinearly upsampled per window by :func:`upsample_window`, which gives every output pixel the
  same value whatever window it is computed in (tiles join seamlessly, masks match exactly).
* Random streams are derived from ``(seed, *keys)`` with :func:`child_rng`, so each part of a
  slice (geometry, artifacts, per-tile noise...) is reproducible on its own.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi

__all__ = [
    "child_rng",
    "coarse_shape",
    "smooth_noise",
    "smoothstep",
    "smin",
    "texture_bank",
    "upsample_window",
    "wrap_window",
]


def child_rng(seed: int, *keys: int) -> np.random.Generator:
    """Independent, reproducible generator for stream ``keys`` of ``seed`` (seed >= 0)."""
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([int(seed), *(int(k) for k in keys)])


def coarse_shape(shape: tuple[int, int], scale: int) -> tuple[int, int]:
    """Node-grid shape covering output ``shape`` at ``scale`` (one spare node each side)."""
    return ((shape[0] - 1) // scale + 2, (shape[1] - 1) // scale + 2)


def smoothstep(x: np.ndarray) -> np.ndarray:
    """Cubic Hermite step: 0 for x <= 0, 1 for x >= 1, smooth in between (float32)."""
    x = np.clip(x, 0.0, 1.0).astype(np.float32, copy=False)
    return x * x * (3.0 - 2.0 * x)


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum of two level sets (rounds the corners where they meet, radius ~k)."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.clip(k - np.abs(a - b), 0.0, None) / k
    return np.minimum(a, b) - (0.25 * k) * h * h


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], corr: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field, float32 ``shape``; ``corr`` = correlation length in grid px.

    White noise on a grid ~corr/3 coarser, Gaussian-smoothed there, then bilinearly upsampled:
    cost is independent of ``corr``.
    """
    f = max(1, int(round(corr / 3.0)))
    low = coarse_shape(shape, f)
    z = ndi.gaussian_filter(rng.standard_normal(low).astype(np.float32), 1.5, mode="wrap")
    z = upsample_window(z[None], f, 0, 0, shape[0], shape[1])[0]
    z -= z.mean()
    z /= max(float(z.std()), 1e-6)
    return np.ascontiguousarray(z)


def texture_bank(
    rng: np.random.Generator,
    sizes: tuple[int, ...],
    angles: tuple[float, ...],
    l_par: float,
    l_perp: float,
    l_iso: float,
    bundle: float = 2.5,
) -> list[np.ndarray]:
    """Periodic (tileable) noise images, float32 (P, P), zero mean, unit std.

    One anisotropic field per angle in ``angles`` (radians, streaks run along the angle; Gaussian
    spectrum with correlation lengths ``l_par`` along and ``l_perp`` across, plus a coarser "bundle"
    component ``bundle`` times larger), then one isotropic field with length ``l_iso``.
    ``sizes`` gives P for each (len(angles) + 1 entries); different P avoid a common period.
    """
    out = []
    specs = [(a, l_par, l_perp) for a in angles] + [(0.0, l_iso, l_iso)]
    for p, (ang, lp, lq) in zip(sizes, specs):
        ky = np.fft.fftfreq(p).astype(np.float32)[:, None]
        kx = np.fft.rfftfreq(p).astype(np.float32)[None, :]
        # along = direction (cos a, sin a) in (x, y)
        k_par = kx * np.cos(ang) + ky * np.sin(ang)
        k_perp = -kx * np.sin(ang) + ky * np.cos(ang)
        env = np.exp(-2 * np.pi**2 * ((lp * k_par) ** 2 + (lq * k_perp) ** 2))
        if lp != lq:
            env = env + 0.5 * np.exp(-2 * np.pi**2 * ((bundle * lp * k_par) ** 2 + (bundle * lq * k_perp) ** 2))
        spec = sfft.rfft2(rng.standard_normal((p, p), dtype=np.float32))
        spec *= env.astype(np.float32)
        z = sfft.irfft2(spec, s=(p, p)).astype(np.float32, copy=False)
        z -= z.mean()
        z /= max(float(z.std()), 1e-12)
        out.append(z)
    return out


def wrap_window(arr: np.ndarray, y0: int, x0: int, h: int, w: int,
                period: tuple[int, int] | None = None) -> np.ndarray:
    """Window [y0:y0+h, x0:x0+w] of the periodic extension of 2-D ``arr``.

    ``period``: the true period when ``arr`` was padded by wrapping (then windows that fit in
    the padding are returned as views, without copying).
    """
    ph, pw = period if period is not None else arr.shape
    y0, x0 = y0 % ph, x0 % pw
    if y0 + h <= arr.shape[0] and x0 + w <= arr.shape[1]:  # no wrap: a view, no copy
        return arr[y0 : y0 + h, x0 : x0 + w]
    rows = np.arange(y0, y0 + h) % ph
    cols = np.arange(x0, x0 + w) % pw
    return np.take(np.take(arr, rows, axis=0), cols, axis=1)


def upsample_window(fields: np.ndarray, scale: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of coarse node fields (C, Hc, Wc) to the output window, float32 (C, h, w).

    Output pixel (y, x) sits at node coordinate (y/scale, x/scale); each pixel's value depends only
    on its own coordinates and the four surrounding nodes, so tiles computed separately agree
    bit-for-bit with a single large window.
    """
    s = int(scale)
    c = fields.shape[0]
    j0, j1 = y0 // s, (y0 + h - 1) // s + 1
    i0, i1 = x0 // s, (x0 + w - 1) // s + 1
    sub = fields[:, j0 : j1 + 1, i0 : i1 + 1]
    if s == 1:
        return np.array(sub[:, :h, :w], dtype=np.float32)
    nj, ni = j1 - j0, i1 - i0
    # rows: one strided write per phase a (value = A + (B - A) * a/s, A/B the nodes above/below)
    a_rows, d_rows = sub[:, :-1, :], sub[:, 1:, :] - sub[:, :-1, :]
    rows = np.empty((c, nj * s, ni + 1), dtype=np.float32)
    for a in range(s):
        rows[:, a::s] = a_rows + d_rows * np.float32(a / s)
    rows = rows[:, y0 - j0 * s : y0 - j0 * s + h]
    a_cols = rows[:, :, :-1]
    d_cols = rows[:, :, 1:] - a_cols
    if s <= 4:  # few phases: strided writes, no (C, h, ni, s) temporaries
        out = np.empty((c, h, ni * s), dtype=np.float32)
        for b in range(s):
            np.multiply(d_cols, np.float32(b / s), out=out[:, :, b::s])
            out[:, :, b::s] += a_cols
    else:  # many phases: one contiguous broadcast pass (same arithmetic, same values)
        t = np.array([b / s for b in range(s)], dtype=np.float32)
        out4 = np.empty((c, h, ni, s), dtype=np.float32)
        np.multiply(d_cols[..., None], t, out=out4)
        out4 += a_cols[..., None]
        out = out4.reshape(c, h, ni * s)
    dx = x0 - i0 * s
    return out[:, :, dx : dx + w]
