"""Metrics against hand-computed values on a 3x3 mask, and split-wide accumulation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lunar_cli.classes import CLASS_NAMES
from lunar_cli.console import LunarError
from lunar_cli.metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy, summarize

# 0 ground, 1 sky, 2 small rocks; large rocks (3) is in neither map.
TARGET = torch.tensor([[0, 0, 1], [0, 2, 1], [2, 2, 1]], dtype=torch.uint8)
PRED = torch.tensor([[0, 1, 1], [0, 2, 1], [0, 2, 1]], dtype=torch.uint8)
# Rows = true class, cols = predicted, counted by hand from the two maps above.
EXPECTED = [
    [2, 1, 0, 0],
    [0, 3, 0, 0],
    [1, 0, 2, 0],
    [0, 0, 0, 0],
]


def test_confusion_matrix_by_hand():
    m = confusion_matrix(PRED, TARGET)
    assert m.dtype == torch.int64
    assert m.tolist() == EXPECTED


def test_iou_accuracy_by_hand_with_absent_class():
    m = torch.tensor(EXPECTED)
    iou = iou_per_class(m)
    # ground 2/(2+1+1), sky 3/(3+1+0), small rocks 2/(2+0+1), large rocks: no union.
    assert iou[:3].tolist() == pytest.approx([0.5, 0.75, 2 / 3])
    assert math.isnan(iou[3])
    assert mean_iou(m) == pytest.approx(23 / 36)  # NaN class left out, not counted as 0
    assert pixel_accuracy(m) == pytest.approx(7 / 9)


def test_ignore_index_pixels_are_not_counted():
    target = TARGET.clone()
    target[0, 1] = 255  # the one ground pixel predicted as sky becomes unlabeled
    m = confusion_matrix(PRED, target)
    assert int(m.sum()) == 8
    assert m[0].tolist() == [2, 0, 0, 0]
    assert iou_per_class(m)[:3].tolist() == pytest.approx([2 / 3, 1.0, 2 / 3])
    assert pixel_accuracy(m) == pytest.approx(7 / 8)


def test_bad_inputs():
    with pytest.raises(LunarError, match="class index 7"):
        confusion_matrix(PRED, torch.full((3, 3), 7))
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(PRED, TARGET[:2])


def _random_batch(gen: torch.Generator, n: int = 3, size: int = 8):
    target = torch.randint(0, 4, (n, size, size), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.1] = 255
    logits = torch.randn(n, 4, size, size, generator=gen)
    return logits, target


def test_matches_pixel_by_pixel_count():
    logits, target = _random_batch(torch.Generator().manual_seed(0))
    pred = logits.argmax(1)
    expected = np.zeros((4, 4), dtype=np.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != 255:
            expected[t, p] += 1
    assert confusion_matrix(pred, target).numpy().tolist() == expected.tolist()


def test_matrices_of_two_batches_add_up_to_the_matrix_of_one_big_batch():
    gen = torch.Generator().manual_seed(1)
    (l1, t1), (l2, t2) = _random_batch(gen, n=2), _random_batch(gen, n=5)
    summed = confusion_matrix(l1.argmax(1), t1) + confusion_matrix(l2.argmax(1), t2)
    whole = confusion_matrix(torch.cat([l1, l2]).argmax(1), torch.cat([t1, t2]))
    assert torch.equal(summed, whole)
    assert int(whole.sum()) == int((torch.cat([t1, t2]) != 255).sum())


def test_split_wide_not_mean_of_batches():
    # One missed rock pixel in a tiny batch must not weigh as much as nine hits in another.
    matrix = confusion_matrix(torch.tensor([[[0, 0]]]), torch.tensor([[[2, 0]]]))  # rock IoU 0 in this batch
    matrix += confusion_matrix(torch.full((1, 3, 3), 2), torch.full((1, 3, 3), 2))  # rock IoU 1 in this batch
    assert iou_per_class(matrix)[2] == pytest.approx(9 / 10)  # not (0 + 1) / 2


def test_summarize_is_json_ready():
    s = summarize(torch.tensor(EXPECTED), CLASS_NAMES)
    json.dumps(s, allow_nan=False)  # NaN would make invalid JSON
    assert s["miou"] == pytest.approx(23 / 36)
    assert s["pixel_accuracy"] == pytest.approx(7 / 9)
    assert s["iou"]["sky"] == pytest.approx(0.75)
    assert s["iou"]["large_rocks"] is None
    assert s["confusion_matrix"] == EXPECTED
    empty = summarize(torch.zeros(4, 4, dtype=torch.int64), CLASS_NAMES)
    assert empty["miou"] is None and empty["pixel_accuracy"] is None
    with pytest.raises(ValueError):
        summarize(torch.tensor(EXPECTED), CLASS_NAMES[:3])
