"""Fractal noise and tileable textures: the regolith's grain, albedo patches and relief at every scale.

Textures are square, tileable and sampled with mip levels, so ground far away is a smooth
average of the same grain that is sharp in front of the camera (no shimmer, no repeat).
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np


@functools.lru_cache(maxsize=32)
def _amplitude(n: int, beta: float, lowest: float) -> np.ndarray:
    """Return the (n, n) FFT filter 1/f**(beta/2), zero below `lowest` cycles per tile (cached: a worker reuses it)."""
    fy, fx = np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij")
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    amplitude = np.where(f < lowest / n, 0.0, f ** (-beta / 2))
    return amplitude.astype(np.float32)[:, :, None]


def fractal_fields(rng: np.random.Generator, n: int, beta: float, lowest: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Return two independent (n, n) tileable fractal noise fields (power 1/f**beta), zero mean, unit std.

    Wavelengths longer than n / lowest texels are left out; beta is rounded to 0.1 so filters can be reused.
    """
    white = rng.random((n, n, 2), dtype=np.float32) - 0.5  # uniform, 4x cheaper than normal; sums are Gaussian
    field = cv2.idft(white * _amplitude(n, round(beta, 1), lowest))  # complex in: real, imag parts independent
    return field[:, :, 0] / field[:, :, 0].std(), field[:, :, 1] / field[:, :, 1].std()


def slopes(height: np.ndarray, texel: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the (d/dx, d/dy) slopes of a tileable height grid (rows along y) with texels of `texel` metres."""
    gx = (np.roll(height, -1, 1) - np.roll(height, 1, 1)) / (2 * texel)
    gy = (np.roll(height, -1, 0) - np.roll(height, 1, 0)) / (2 * texel)
    return gx, gy


def lit_relief(height: np.ndarray, patches: np.ndarray, *, slope: float, albedo: float, sun: np.ndarray) -> np.ndarray:
    """Return the (n, n) tileable brightness of relief `height` with albedo `patches` under the sun (flat ground = 1).

    height and patches are unit-std fields; slope is the typical (rms) slope the relief is scaled to,
    albedo the std of the albedo variation; sun the unit vector toward the sun in the texture's axes.
    """
    gx, gy = slopes(height, 1.0)
    scale = slope / math.sqrt(float((gx ** 2 + gy ** 2).mean()))  # typical slope, whatever the resolution
    gx *= scale
    gy *= scale
    sx, sy, sz = (float(v) for v in sun)  # Python floats keep the arrays float32
    light = (sz - gx * sx - gy * sy) / np.sqrt(1 + gx * gx + gy * gy)
    return ((1 + albedo * patches) * np.maximum(light, 0) * (1 / sz)).astype(np.float32)


def sample_tiled(texture: np.ndarray, tu: np.ndarray, tv: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Return a tileable square texture sampled at texel coordinates (tu, tv), blended between mip levels.

    tu, tv and level are 1-D; the texture is (H, W[, C]); level is log2 of the texels one pixel covers.
    """
    levels = [texture]
    while levels[-1].shape[0] > 8:
        levels.append(cv2.resize(levels[-1], None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))
    border = ((1, 1), (1, 1)) + ((0, 0),) * (texture.ndim - 2)
    padded = [np.pad(tex, border, mode="wrap") for tex in levels]
    level = np.clip(level, 0, len(levels) - 1)
    low = np.minimum(level.astype(np.int16), len(levels) - 1)  # points between levels low and low + 1
    frac = (level - low).reshape(-1, *([1] * (texture.ndim - 2)))
    order = np.argsort(low, kind="stable")  # group the points by level: one remap per level and neighbour
    bounds = np.searchsorted(low[order], np.arange(len(levels) + 1))
    out = np.zeros(tu.shape + texture.shape[2:], np.float32)

    def at(i: int, idx: np.ndarray) -> np.ndarray:
        size, step = levels[i].shape[0], 2 ** i
        mapx = _wrap((tu[idx] + 0.5) / step - 0.5, size) + 1  # +1: the wrapped border
        mapy = _wrap((tv[idx] + 0.5) / step - 0.5, size) + 1
        return remap_points(padded[i], mapx, mapy)

    for i in range(len(levels)):
        idx = order[bounds[i]:bounds[i + 1]]
        if idx.size == 0:
            continue
        sampled = at(i, idx)
        if i + 1 < len(levels):
            f = frac[idx]
            sampled = sampled * (1 - f) + at(i + 1, idx) * f
        out[idx] = sampled
    return out


def remap_points(grid: np.ndarray, x: np.ndarray, y: np.ndarray, border: str = "replicate") -> np.ndarray:
    """Return a grid (H, W[, C]) sampled bilinearly at 1-D float coordinates x (column), y (row)."""
    n = x.size
    width = 1024  # cv2.remap wants 2-D maps under 32767 a side
    rows = max(1, -(-n // width))
    pad = rows * width - n
    mx = np.pad(x.astype(np.float32, copy=False), (0, pad)).reshape(rows, width)
    my = np.pad(y.astype(np.float32, copy=False), (0, pad)).reshape(rows, width)
    mode = cv2.BORDER_REPLICATE if border == "replicate" else cv2.BORDER_WRAP
    out = cv2.remap(grid, mx, my, cv2.INTER_LINEAR, borderMode=mode)
    return out.reshape(rows * width, *grid.shape[2:])[:n]


def _wrap(x: np.ndarray, size: int) -> np.ndarray:
    return x - np.floor(x * (1 / size)) * size  # np.mod, but many times faster on float32
