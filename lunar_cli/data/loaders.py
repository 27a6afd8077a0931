"""The data of a training run: random crops of the train split, whole frames of the val split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lunar_cli.config import DataConfig
from lunar_cli.console import LunarError
from lunar_cli.data.cache import CachedSplit, build_or_load_cache, cache_folder
from lunar_cli.data.dataset import CropLoader, FrameLoader
from lunar_cli.data.split import split_pairs
from lunar_cli.frames import FrameSize
from lunar_cli.runtime import Dist, barrier


@dataclass
class Loaders:
    """The train crops and val frames of a run, and what the loss needs from the train split."""
    train: CropLoader
    val: FrameLoader
    class_pixels: list[int]


def frame_size(data: DataConfig) -> FrameSize:
    """Return how the run's frames are sized: the study's square, or a share of their own size."""
    return FrameSize(scale=data.scale, square=data.image_size)


def crop_side(data: DataConfig) -> int:
    """Return the side of the training crops: the whole frame when frames are squashed to a square."""
    return data.image_size if data.image_size is not None else data.crop_size


def check_crop(split: CachedSplit, crop: int) -> None:
    """Refuse a crop larger than the frames at the model's size (it would be mostly padding)."""
    h, w = (int(v) for v in split.sizes[:, :2].max(axis=0))
    if crop <= min(h, w):
        return
    frames = f"the frames at {split.size_rule.describe()} ({w}x{h})"
    if min(h, w) < 32:
        raise LunarError(f"{frames} are smaller than the smallest crop (32 pixels): use a larger --scale")
    raise LunarError(
        f"data.crop_size {crop} is larger than {frames}: use --crop-size {min(h, w) // 32 * 32} or less, "
        "or a larger --scale"
    )


def make_loaders(
    data_dir: Path, data: DataConfig, *, batch_size: int, normalization: dict, device: torch.device,
    seed: int, dist: Dist, channels_last: bool, progress: bool,
) -> Loaders:  # fmt: skip
    """Return train (random crops, augmented, shuffled, sharded) and val (whole frames) loaders over the caches."""
    cache_root = cache_folder(data_dir, data.cache_dir)
    splits = {}
    # Rank 0 decodes; the other ranks wait, then map the same files.
    for turn in ("main", "others"):
        if (turn == "main") == dist.is_main:
            for name in ("train", "val"):
                splits[name] = build_or_load_cache(
                    split_pairs(data_dir, name), frame_size(data), cache_root, name=name,
                    workers=data.workers, skip_bad=data.skip_bad, progress=progress and dist.is_main,
                )  # fmt: skip
        barrier(dist)
    check_crop(splits["train"], crop_side(data))
    nbytes = sum(a.nbytes for s in splits.values() for a in {id(x): x for x in (s.images, s.masks, s.full_masks)}.values())
    common = dict(device=device, seed=seed, limit=data.limit, resident=_fits_on_device(device, nbytes))
    train = CropLoader(
        splits["train"], crop=crop_side(data), zoom=data.zoom, augment=data.augment, mean=normalization["mean"],
        std=normalization["std"], channels_last=channels_last, batch_size=batch_size, shuffle=True,
        rank=dist.rank, world_size=dist.world_size, **common,
    )  # fmt: skip
    # Validation is not sharded: every rank scores the whole (small) val split, so the
    # metric is exact (no padding duplicates) and identical on all ranks.
    val = FrameLoader(splits["val"], batch_size=batch_size, **common)
    return Loaders(train, val, list(splits["train"].class_pixels))


def _fits_on_device(device: torch.device, nbytes: int) -> bool:
    """True when the uint8 splits can live on the GPU (a quarter of its free memory at most).

    Resident data makes each batch a device-side gather: no host reads or copies at all.
    """
    if device.type != "cuda":
        return False
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes < free / 4
