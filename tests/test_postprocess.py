"""The one chain from logits to outputs gives the same numbers on NumPy arrays (predict, ONNX) and torch tensors (evaluate)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lunar_cli.postprocess import (
    class_map,
    entropy,
    finish,
    mean_uncertainty,
    mirror_frames,
    probabilities,
    unmirror,
    upsample,
)


@pytest.fixture
def logits() -> np.ndarray:
    """Logits of 2 photos (N, C, h, w) with a range of confidences, and a tie in one pixel."""
    rng = np.random.default_rng(0)
    values = (rng.normal(0, 3, (2, 4, 9, 13))).astype(np.float32)
    values[0, :, 0, 0] = 1.5  # a four-way tie: the first class wins
    return values


def test_each_step_gives_the_same_numbers_on_numpy_and_torch(logits):
    t = torch.from_numpy(logits)
    up_np, up_t = upsample(logits, 30, 41), upsample(t, 30, 41)
    assert up_np.shape == (2, 4, 30, 41) and np.allclose(up_np, up_t.numpy(), atol=1e-5)
    assert np.allclose(upsample(logits[0], 30, 41), up_np[0])  # one photo (C, H, W) as in a batch
    p_np, p_t = probabilities(up_np, 1.7), probabilities(torch.from_numpy(up_np), 1.7)
    assert np.allclose(p_np, p_t.numpy(), atol=1e-6) and np.allclose(p_np.sum(axis=1), 1.0, atol=1e-6)
    assert np.allclose(entropy(p_np), entropy(p_t).numpy(), atol=1e-6)
    assert np.allclose(mean_uncertainty(p_np), mean_uncertainty(p_t).numpy(), atol=1e-6)
    assert np.array_equal(class_map(logits), class_map(t).numpy()) and class_map(logits)[0, 0, 0] == 0
    assert np.array_equal(class_map(logits), logits.argmax(axis=1))


def test_the_whole_chain_agrees_with_tta_probabilities_and_uncertainty(logits):
    frames = np.random.default_rng(1).integers(0, 256, (2, 9, 13, 3), dtype=np.uint8)
    assert np.array_equal(mirror_frames(frames), mirror_frames(torch.from_numpy(frames)).numpy())
    mirrored = unmirror(logits[:, :, :, ::-1].copy())  # a pass over mirrored frames, flipped back
    ours = finish([logits, mirrored], 30, 41, 1.3, probs=True, uncertainty=True)
    theirs = finish([torch.from_numpy(logits), unmirror(torch.from_numpy(logits[:, :, :, ::-1].copy()))], 30, 41,
                    1.3, probs=True, uncertainty=True)  # fmt: skip
    for name in ("probs", "uncertainty", "spread"):
        assert np.allclose(getattr(ours, name), getattr(theirs, name).numpy(), atol=1e-5), name
    assert (ours.classes == theirs.classes.numpy()).mean() > 0.999  # ties may break either way after float noise
    assert ours.uncertainty.min() >= 0 and ours.uncertainty.max() <= 1 + 1e-6
    assert np.allclose(ours.spread, 0, atol=1e-5)  # both passes are the same photo here


def test_certain_and_undecided_logits_give_uncertainty_zero_and_one():
    certain = np.zeros((4, 5, 5), np.float32)
    certain[2] = 40.0
    assert np.allclose(entropy(probabilities(certain)), 0.0, atol=1e-6)
    assert np.allclose(entropy(probabilities(np.zeros((4, 5, 5), np.float32))), 1.0, atol=1e-6)
    plain = finish([certain], 5, 5, 1.0)
    assert plain.probs is None and plain.uncertainty is None and (plain.classes == 2).all()
