"""Row-wise 3-vector arithmetic on (..., 3) arrays, column by column (several times faster than einsum or sum)."""

from __future__ import annotations

import numpy as np


def dot(a: np.ndarray, b) -> np.ndarray:
    """Return the dot products of two (..., 3) arrays (b may be one 3-vector)."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def normalized(a: np.ndarray, floor: float = 1e-12) -> np.ndarray:
    """Return the (..., 3) vectors scaled to unit length (zero vectors stay near zero)."""
    return a * (1 / np.sqrt(np.maximum(dot(a, a), floor)))[..., None]


def mat_vec(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Return (M, 3) products of (M, 3, 3) matrices with (M, 3) vectors."""
    return np.stack([dot(m[:, i], v) for i in range(3)], axis=-1)


def mat_t_vec(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Return (M, 3) products of the transposes of (M, 3, 3) matrices with (M, 3) vectors."""
    return np.stack([dot(m[:, :, i], v) for i in range(3)], axis=-1)
