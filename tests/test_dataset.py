"""Batches from a cached split: random crops (aligned, seeded, never mixed), whole frames, shards, augmentations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lunar_cli.classes import IGNORE_INDEX, read_image_rgb, read_mask
from lunar_cli.config import AugmentConfig
from lunar_cli.console import LunarError
from lunar_cli.data.augment import blur, color_jitter_, jpeg_like
from lunar_cli.data.cache import CachedSplit
from lunar_cli.data.dataset import CropLoader, FrameLoader

H, W = 24, 32
C = 16  # crop side in these tests
# One distinct colour per class, so colour ops act on each class region as a whole.
CLASS_COLOURS = np.array([[90, 80, 70], [20, 40, 160], [200, 60, 60], [60, 190, 90]], np.uint8)
NOTHING = AugmentConfig(hflip=0.0, vflip=0.0, jitter_p=0.0, photometric_p=0.0)


def masks_for(n: int) -> np.ndarray:
    """Return (n, H, W) masks that look different under every flip (asymmetric blocks)."""
    masks = np.zeros((n, H, W), np.uint8)
    for i in range(n):
        masks[i, : 4 + i % 3] = 1
        masks[i, 12:20, 2 + i : 9 + i] = 3
        masks[i, 20:22, 25:27] = 2
    return masks


def make_split(n: int = 10, images: np.ndarray | None = None, masks: np.ndarray | None = None) -> CachedSplit:
    masks = masks_for(n) if masks is None else masks
    if images is None:
        images = (masks[..., None] * 60 + 20).repeat(3, axis=3).astype(np.uint8)  # grey level = class
    h, w = masks.shape[1:]
    sizes = np.tile(np.array([[h, w, h, w]], np.int32), (n, 1))
    return CachedSplit(images=images, masks=masks, full_masks=masks, sizes=sizes, files=[f"{i}.png" for i in range(n)],
                       path=Path("."), skipped=[], off_palette=0.0)  # fmt: skip


def numbered_split(n: int) -> CachedSplit:
    """A split whose row i is filled with the value i, to see which rows a batch holds."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, H, W, 3)).copy()
    return make_split(n, images)


def rows_of(images: torch.Tensor) -> list[int]:
    return [int(round(float(v) * 255)) for v in images[:, 0, 0, 0]]


def epoch(loader, e: int = 0) -> list:
    loader.set_epoch(e)
    return list(loader)


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(m, n) for (x, m), (y, n) in zip(a, b))


def crops(split, augment=NOTHING, **kw) -> CropLoader:
    return CropLoader(split, crop=kw.pop("crop", C), augment=augment, batch_size=kw.pop("batch_size", 10), **kw)


def test_crops_are_normalised_float_with_int64_masks_from_the_frame():
    split = make_split()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    batches = list(CropLoader(split, crop=C, batch_size=4, mean=mean, std=std))  # no augmentation: centred crops
    assert [x.shape[0] for x, _ in batches] == [4, 4, 2] and len(CropLoader(split, crop=C, batch_size=4)) == 3
    x, m = batches[0]
    assert x.dtype == torch.float32 and x.shape == (4, 3, C, C) and m.dtype == torch.int64 and m.shape == (4, C, C)
    top, left = (H - C) // 2, (W - C) // 2
    raw = torch.from_numpy(split.images[:4, top : top + C, left : left + C]).permute(0, 3, 1, 2).float() / 255
    expected = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-5)
    assert torch.equal(m, torch.from_numpy(split.masks[:4, top : top + C, left : left + C]).long())


def test_crops_keep_image_and_mask_aligned_pixel_for_pixel():
    split = make_split()
    flips = AugmentConfig(hflip=0.5, vflip=0.5, jitter_p=0.0, photometric_p=0.0)
    x, m = list(crops(split, flips, seed=3))[0]
    # Every pixel's grey level still encodes the class of the mask pixel at the same place.
    assert torch.equal(torch.round(x * 255).long(), (m * 60 + 20).unsqueeze(1).expand(-1, 3, -1, -1))
    windows = {tuple(mi.flatten().tolist()) for mi in m}
    assert len(windows) > 3  # random windows and flips, not one crop repeated


def test_a_crop_never_mixes_two_samples():
    split = numbered_split(10)
    geometry_only = AugmentConfig(hflip=0.5, vflip=0.5, jitter_p=0.0, photometric_p=0.0)
    for zoom in ((1.0, 1.0), (1.0, 2.0)):
        for x, m in epoch(crops(split, geometry_only, shuffle=True, seed=1, zoom=zoom, batch_size=4), 2):
            values = torch.round(x[:, 0] * 255)
            assert all(len(torch.unique(v)) == 1 for v in values), "a crop holds pixels of two frames"
            assert len(set(rows_of(x))) == len(x) and not (m == IGNORE_INDEX).any()


def test_zoomed_out_crops_that_overhang_the_frame_are_ignored_there():
    x, m = list(crops(make_split(), AugmentConfig(), crop=32, zoom=(0.5, 0.5), seed=2))[0]
    assert x.shape == (10, 3, 32, 32) and (m == IGNORE_INDEX).any() and (m != IGNORE_INDEX).any()
    assert set(torch.unique(m).tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}


def test_frames_of_other_sizes_are_cropped_within_their_own_extent():
    masks = np.full((4, H, W), IGNORE_INDEX, np.uint8)  # a canvas: frames 1 and 3 are smaller
    masks[:, :, :] = masks_for(4)
    masks[1, 18:] = masks[3, :, 20:] = IGNORE_INDEX
    split = make_split(4, masks=masks)
    split.sizes[1] = (18, W, 18, W)
    split.sizes[3] = (H, 20, H, 20)
    for e in range(5):
        for _, m in epoch(crops(split, AugmentConfig(), shuffle=True, seed=4), e):
            assert not (m == IGNORE_INDEX).any()


def test_same_seed_same_batches_other_seed_or_epoch_differs():
    split = make_split()
    params = AugmentConfig(jitter_p=0.5, photometric_p=0.5)

    def make(seed):
        return crops(split, params, batch_size=4, shuffle=True, seed=seed, zoom=(0.75, 1.5))

    a = epoch(make(7), 3)
    assert same(a, epoch(make(7), 3))
    assert not same(a, epoch(make(8), 3))
    resumed = make(7)
    epoch(resumed, 0)
    assert same(a, epoch(resumed, 3))  # epoch 3 does not depend on what ran before
    assert not same(a, epoch(resumed, 4))


def test_shuffle_visits_every_item_once_per_epoch():
    loader = crops(numbered_split(10), batch_size=3, shuffle=True, seed=1)
    orders = [[r for x, _ in epoch(loader, e) for r in rows_of(x)] for e in (0, 1)]
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(10))
    assert orders[0] != orders[1]


def test_always_and_never_flip():
    full = make_split(masks=masks_for(10)[:, :C, :C])  # frames the size of the crop: the window is the frame
    x, m = list(crops(full, AugmentConfig(hflip=1.0, vflip=0.0, jitter_p=0.0, photometric_p=0.0)))[0]
    assert torch.equal(m, torch.from_numpy(full.masks).long().flip(-1))
    x, m = list(crops(full, AugmentConfig(hflip=0.0, vflip=1.0, jitter_p=0.0, photometric_p=0.0)))[0]
    assert torch.equal(m, torch.from_numpy(full.masks).long().flip(-2))
    assert torch.equal(torch.round(x * 255)[:, 0].long(), m * 60 + 20)


def test_colour_augmentations_change_colours_but_not_geometry():
    masks = masks_for(10)
    split = make_split(10, CLASS_COLOURS[masks])
    params = AugmentConfig(jitter_p=1.0, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1, photometric_p=1.0,
                           vignette=0.0, blur=0.0, noise=0.0, jpeg_quality=0)  # fmt: skip
    x, m = list(crops(split, params, seed=5))[0]
    plain, _ = list(crops(split, AugmentConfig(hflip=0.0, photometric_p=0.0, jitter_p=0.0), seed=5))[0]
    for i in range(10):
        for c in torch.unique(m[i]).tolist():
            region = x[i][:, m[i] == c]  # (3, pixels) of class c, after the colour changes
            # Colour ops map one input colour to one output colour: a misaligned mask would mix classes here.
            assert float((region.max(dim=1).values - region.min(dim=1).values).max()) < 1e-5
    assert not torch.allclose(x, plain)


@pytest.mark.parametrize("knob", ["color_cast", "gamma", "vignette", "blur", "noise", "jpeg_quality"])
def test_each_camera_look_augmentation_changes_only_the_image(knob):
    rng = np.random.default_rng(0)
    images = rng.integers(30, 220, size=(6, 32, 32, 3), dtype=np.uint8)
    masks = np.zeros((6, 32, 32), np.uint8)
    split = make_split(6, images, masks)
    off = dict(jitter_p=0.0, photometric_p=1.0, color_cast=0.0, gamma=0.0, vignette=0.0, blur=0.0, noise=0.0,
               jpeg_quality=0, hflip=0.0)  # fmt: skip
    strong = {"color_cast": 0.3, "gamma": 1.0, "vignette": 0.9, "blur": 2.0, "noise": 0.1, "jpeg_quality": 5}
    base, _ = list(crops(split, AugmentConfig(**off), crop=32, seed=1))[0]
    x, m = list(crops(split, AugmentConfig(**{**off, knob: strong[knob]}), crop=32, seed=1))[0]
    assert not torch.allclose(x, base, atol=1e-3) and torch.equal(m, torch.zeros_like(m))
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    again, _ = list(crops(split, AugmentConfig(**{**off, knob: strong[knob]}), crop=32, seed=1))[0]
    assert torch.equal(x, again)  # seeded


def test_blur_and_jpeg_behave_like_their_names():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 32, 32, generator=g)
    assert float(blur(img, torch.tensor([2.0, 2.0])).std()) < 0.5 * float(img.std())
    flat = torch.full((1, 3, 16, 16), 0.5)
    assert torch.allclose(blur(flat, torch.tensor([1.5])), flat, atol=1e-5)
    near = (jpeg_like(img, torch.tensor([95.0, 95.0])) - img).abs().mean()
    far = (jpeg_like(img, torch.tensor([5.0, 5.0])) - img).abs().mean()
    assert near < far and far > 0.1


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
        loader = crops(split, batch_size=3, shuffle=True, limit=4, seed=seed)
        return sorted(r for x, _ in epoch(loader, e) for r in rows_of(x))

    assert len(set(rows(0, 0))) == 4 and rows(0, 0) == rows(0, 1)
    assert rows(0, 0) != rows(1, 0) and rows(0, 0) != [0, 1, 2, 3]
    assert len(crops(split, batch_size=3, limit=4)) == 2


@pytest.mark.parametrize("n", [10, 11])
def test_ddp_shards_cover_every_item_once(n):
    split = numbered_split(n)
    seen = []
    for rank in (0, 1):
        loader = crops(split, batch_size=4, shuffle=True, seed=2, rank=rank, world_size=2)
        loader.set_epoch(1)
        rows = [r for x, _ in loader for r in rows_of(x)]
        assert len(rows) == (n + 1) // 2 == loader.samples_per_rank
        seen.append(rows)
    assert len(set(seen[0]) & set(seen[1])) == n % 2  # overlap only by the padding item
    assert sorted(set(seen[0]) | set(seen[1])) == list(range(n))


def test_resident_and_prefetch_give_the_same_batches():
    split = make_split()
    kw = dict(batch_size=3, shuffle=True, seed=4, zoom=(0.8, 1.2))
    params = AugmentConfig(jitter_p=0.5, photometric_p=0.5)
    base = epoch(crops(split, params, prefetch=False, **kw), 2)
    assert same(base, epoch(crops(split, params, prefetch=True, **kw), 2))
    assert same(base, epoch(crops(split, params, resident=True, **kw), 2))
    assert same(base, epoch(crops(split, params, resident=True, **kw), 2))  # resident copy not changed in place


def test_channels_last():
    x, _ = next(iter(crops(make_split(), batch_size=4, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_frames_come_whole_in_order_with_their_full_masks_and_sizes():
    split = numbered_split(5)
    batches = list(FrameLoader(split, batch_size=2))
    assert [len(f) for f, _, _ in batches] == [2, 2, 1]
    frames, masks, sizes = batches[1]
    assert frames.dtype == torch.uint8 and frames.shape == (2, H, W, 3) and masks.shape == (2, H, W)
    assert [int(frames[i, 0, 0, 0]) for i in range(2)] == [2, 3] and sizes.tolist() == [[H, W, H, W]] * 2


def test_augmentation_values_are_checked_once_in_the_config():
    from lunar_cli.config import load_config

    with pytest.raises(LunarError, match="data.augment.hflip"):
        load_config(None, {"data.augment.hflip": 1.5})
    with pytest.raises(LunarError, match="data.zoom"):
        load_config(None, {"data.zoom": [2.0, 1.0]})


def test_the_seed_recipe_feeds_the_study_pipeline(tmp_path):
    """--recipe seed: the study's settings, and its batches are whole frames squashed to 256x256 as before."""
    import cv2

    from lunar_cli.classes import encode_mask, write_png_atomic
    from lunar_cli.config import load_config
    from lunar_cli.data.cache import build_or_load_cache
    from lunar_cli.data.loaders import crop_side, frame_size

    cfg = load_config(None, {"train.recipe": "seed"})
    d, t = cfg.data, cfg.train
    assert (d.image_size, crop_side(d), d.zoom, d.augment.hflip, d.augment.vflip, d.augment.jitter_p) == (
        256, 256, [1.0, 1.0], 0.2, 0.2, 0.5)  # fmt: skip
    assert (d.augment.hue, d.augment.photometric_p) == (0.05, 0.0)
    assert (t.loss, t.optimizer, t.lr, t.scheduler, t.warmup, t.width, t.depth) == ("ce", "auto", None, "none", 0.0, 8, 3)
    from lunar_cli.recipe import learning_rate, optimizer_kind

    assert (optimizer_kind(t), learning_rate(t)) == ("adam", 1e-3)
    t.backbone = "vgg11"
    assert (optimizer_kind(t), learning_rate(t)) == ("sgd", 1e-2)

    rng = np.random.default_rng(0)
    pairs = []
    for i in range(3):
        image = rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)
        mask = rng.integers(0, 4, (300, 420), dtype=np.uint8)
        pairs.append((tmp_path / f"r{i}.png", tmp_path / f"m{i}.png"))
        write_png_atomic(pairs[-1][0], image)
        write_png_atomic(pairs[-1][1], encode_mask(mask))
    split = build_or_load_cache(pairs, frame_size(d), tmp_path / "cache", workers=0, progress=False)
    x, m = next(iter(CropLoader(split, crop=crop_side(d), zoom=d.zoom, batch_size=3)))  # no augmentation: val-like
    for i, (image_path, mask_path) in enumerate(pairs):
        image = read_image_rgb(image_path)
        expected = cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA)
        assert torch.equal(torch.round(x[i] * 255).permute(1, 2, 0).to(torch.uint8), torch.from_numpy(expected))
        truth = cv2.resize(read_mask(mask_path)[0], (256, 256), interpolation=cv2.INTER_NEAREST)
        assert torch.equal(m[i], torch.from_numpy(truth).long())
