"""Batches from a cached split: normalisation, seeded shuffling and augmentation, DDP shards, mask helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lunar_cli.console import LunarError
from lunar_cli.data.cache import CachedSplit
from lunar_cli.config import AugmentConfig
from lunar_cli.data.dataset import BatchLoader, color_jitter_

H, W = 24, 32
# One distinct colour per class, so colour ops act on each class region as a whole.
CLASS_COLOURS = np.array([[90, 80, 70], [20, 40, 160], [200, 60, 60], [60, 190, 90]], np.uint8)
NO_FLIPS = AugmentConfig(hflip=0.0, vflip=0.0, jitter_p=0.0)


def masks_for(n: int) -> np.ndarray:
    """Return (n, H, W) masks that look different under every flip (asymmetric blocks)."""
    masks = np.zeros((n, H, W), np.uint8)
    for i in range(n):
        masks[i, : 4 + i % 3] = 1
        masks[i, 12:20, 2 + i : 9 + i] = 3
        masks[i, 20:22, 25:27] = 2
    return masks


def make_split(n: int = 10, images: np.ndarray | None = None) -> CachedSplit:
    masks = masks_for(n)
    if images is None:
        images = (masks[..., None] * 60 + 20).repeat(3, axis=3).astype(np.uint8)  # grey level = class
    return CachedSplit(images=images, masks=masks, files=[f"{i}.png" for i in range(n)], path=Path("."),
                       skipped=[], off_palette=0.0)


def numbered_split(n: int) -> CachedSplit:
    """A split whose row i is filled with the value i, to see which rows a batch holds."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, H, W, 3)).copy()
    return make_split(n, images)


def rows_of(images: torch.Tensor) -> list[int]:
    return [int(round(float(v) * 255)) for v in images[:, 0, 0, 0]]


def epoch(loader: BatchLoader, e: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(e)
    return list(loader)


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(m, n) for (x, m), (y, n) in zip(a, b))


def test_batches_are_normalised_float_and_int64_masks():
    split = make_split()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    batches = list(BatchLoader(split, batch_size=4, mean=mean, std=std))
    assert [x.shape[0] for x, _ in batches] == [4, 4, 2]
    x, m = batches[0]
    assert x.dtype == torch.float32 and x.shape == (4, 3, H, W) and x.is_contiguous()
    assert m.dtype == torch.int64 and m.shape == (4, H, W)
    raw = torch.from_numpy(split.images[:4]).permute(0, 3, 1, 2).float() / 255
    expected = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-5)
    assert torch.equal(m, torch.from_numpy(split.masks[:4]).long())


def test_len_and_drop_last():
    split = make_split(10)
    assert len(BatchLoader(split, batch_size=4)) == 3
    loader = BatchLoader(split, batch_size=4, drop_last=True)
    assert len(loader) == 2 and [x.shape[0] for x, _ in loader] == [4, 4]


def test_same_seed_same_batches_other_seed_or_epoch_differs():
    split = make_split()
    params = AugmentConfig(hflip=0.5, vflip=0.5, jitter_p=0.5)

    def make(seed):
        return BatchLoader(split, batch_size=4, shuffle=True, augment=params, seed=seed)

    a = epoch(make(7), 3)
    assert same(a, epoch(make(7), 3))
    assert not same(a, epoch(make(8), 3))
    resumed = make(7)
    epoch(resumed, 0)
    assert same(a, epoch(resumed, 3))  # epoch 3 does not depend on what ran before
    assert not same(a, epoch(resumed, 4))


def test_shuffle_visits_every_item_once_per_epoch():
    split = numbered_split(10)
    loader = BatchLoader(split, batch_size=3, shuffle=True, seed=1)
    orders = [[r for x, _ in epoch(loader, e) for r in rows_of(x)] for e in (0, 1)]
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(10))
    assert orders[0] != orders[1]


def test_flips_keep_image_and_mask_aligned():
    split = make_split()
    params = AugmentConfig(hflip=0.5, vflip=0.5, jitter_p=0.0)
    plain = [m for _, m in BatchLoader(split, batch_size=10, augment=NO_FLIPS)][0]
    x, m = list(BatchLoader(split, batch_size=10, augment=params, seed=3))[0]
    # Every pixel's grey level still encodes the class of the mask pixel at the same place.
    assert torch.equal(torch.round(x * 255).long(), (m * 60 + 20).unsqueeze(1).expand(-1, 3, -1, -1))
    flipped = [i for i in range(10) if not torch.equal(m[i], plain[i])]
    assert 0 < len(flipped) < 10


def test_always_and_never_flip():
    split = make_split()
    x, m = list(BatchLoader(split, batch_size=10, augment=AugmentConfig(hflip=1.0, vflip=0.0, jitter_p=0.0)))[0]
    assert torch.equal(m, torch.from_numpy(split.masks).long().flip(-1))
    x, m = list(BatchLoader(split, batch_size=10, augment=AugmentConfig(hflip=0.0, vflip=1.0, jitter_p=0.0)))[0]
    assert torch.equal(m, torch.from_numpy(split.masks).long().flip(-2))
    assert torch.equal(torch.round(x * 255)[:, 0].long(), m * 60 + 20)


def test_jitter_changes_colours_but_not_geometry():
    masks = masks_for(10)
    split = make_split(10, CLASS_COLOURS[masks])
    params = AugmentConfig(hflip=0.5, vflip=0.5, jitter_p=1.0, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)
    x, m = list(BatchLoader(split, batch_size=10, augment=params, seed=5))[0]
    plain, plain_m = list(BatchLoader(split, batch_size=10, augment=NO_FLIPS))[0]
    for i in range(10):
        colours = []
        for c in range(4):
            region = x[i][:, m[i] == c]  # (3, pixels) of class c, after jitter
            assert region.shape[1] > 0
            # Jitter maps one input colour to one output colour: a misaligned mask would mix classes here.
            assert float((region.max(dim=1).values - region.min(dim=1).values).max()) < 1e-5
            colours.append(region[:, 0])
        assert len({tuple(torch.round(c * 1000).tolist()) for c in colours}) == 4
    assert not torch.allclose(x, plain)


def test_batched_jitter_matches_torchvision_per_image():
    import torchvision.transforms.v2.functional as F

    g = torch.Generator().manual_seed(0)
    img = torch.rand(5, 3, 8, 10, generator=g)
    img[0, :, :2] = 0.5  # grey pixels: hue undefined
    b = torch.tensor([0.8, 1.2, 1.0, 0.9, 1.3])
    c = torch.tensor([1.2, 0.8, 1.0, 1.1, 0.7])
    s = torch.tensor([0.8, 1.2, 1.0, 0.0, 1.3])
    hue = torch.tensor([-0.05, 0.05, 0.0, 0.3, -0.5])
    ours = color_jitter_(img.clone(), b, c, s, hue)
    for i in range(5):
        ref = F.adjust_brightness(img[i], float(b[i]))
        ref = F.adjust_contrast(ref, float(c[i]))
        ref = F.adjust_saturation(ref, float(s[i]))
        ref = F.adjust_hue(ref, float(hue[i]))
        assert torch.allclose(ours[i], ref, atol=1e-4), i


def test_limit_takes_a_fixed_random_subset():
    split = numbered_split(10)

    def rows(seed, e):
        return sorted(r for x, _ in epoch(BatchLoader(split, batch_size=3, shuffle=True, limit=4, seed=seed), e)
                      for r in rows_of(x))

    assert len(set(rows(0, 0))) == 4 and rows(0, 0) == rows(0, 1)
    assert rows(0, 0) != rows(1, 0) and rows(0, 0) != [0, 1, 2, 3]
    assert len(BatchLoader(split, batch_size=3, limit=4)) == 2


@pytest.mark.parametrize("n", [10, 11])
def test_ddp_shards_cover_every_item_once(n):
    split = numbered_split(n)
    seen = []
    for rank in (0, 1):
        loader = BatchLoader(split, batch_size=4, shuffle=True, seed=2, rank=rank, world_size=2)
        loader.set_epoch(1)
        rows = [r for x, _ in loader for r in rows_of(x)]
        assert len(rows) == (n + 1) // 2 == loader.samples_per_rank
        seen.append(rows)
    assert len(set(seen[0]) & set(seen[1])) == n % 2  # overlap only by the padding item
    assert sorted(set(seen[0]) | set(seen[1])) == list(range(n))


def test_resident_and_prefetch_give_the_same_batches():
    split = make_split()
    kw = dict(batch_size=3, shuffle=True, augment=AugmentConfig(hflip=0.5, vflip=0.5, jitter_p=0.5), seed=4)
    base = epoch(BatchLoader(split, prefetch=False, **kw), 2)
    assert same(base, epoch(BatchLoader(split, prefetch=True, **kw), 2))
    assert same(base, epoch(BatchLoader(split, resident=True, **kw), 2))
    assert same(base, epoch(BatchLoader(split, resident=True, **kw), 2))  # resident copy not changed in place


def test_channels_last():
    x, _ = next(iter(BatchLoader(make_split(), batch_size=4, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_augmentation_values_are_checked_once_in_the_config():
    from lunar_cli.config import load_config

    with pytest.raises(LunarError, match="data.augment.hflip"):
        load_config(None, {"data.augment.hflip": 1.5})
