"""The data of a training run: train and val batch loaders over the cached splits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lunar_cli.config import DataConfig
from lunar_cli.runtime import Dist

if TYPE_CHECKING:
    import torch

    from lunar_cli.data.dataset import BatchLoader


@dataclass
class Loaders:
    """The train and val batch loaders and what the loss needs from the train split."""

    train: "BatchLoader"
    val: "BatchLoader"
    class_pixels: list[int]


def make_loaders(
    data_dir: Path, data: DataConfig, *, batch_size: int, normalization: dict, device: "torch.device",
    seed: int, dist: Dist, channels_last: bool, progress: bool,
) -> Loaders:  # fmt: skip
    """Return train (augmented, shuffled, sharded) and val loaders over the cached splits."""
    from lunar_cli.data.cache import build_or_load_cache
    from lunar_cli.data.dataset import BatchLoader
    from lunar_cli.data.split import split_pairs
    from lunar_cli.runtime import barrier

    cache_root = Path(data_dir) / "cache"
    splits = {}
    # Rank 0 decodes; the other ranks wait, then map the same files.
    for turn in ("main", "others"):
        if (turn == "main") == dist.is_main:
            for name in ("train", "val"):
                splits[name] = build_or_load_cache(
                    split_pairs(data_dir, name), data.image_size, cache_root, name=name,
                    workers=data.workers, skip_bad=data.skip_bad, progress=progress and dist.is_main,
                )  # fmt: skip
        barrier(dist)
    common = dict(
        mean=normalization["mean"], std=normalization["std"], device=device, seed=seed,
        limit=data.limit, channels_last=channels_last,
        resident=_fits_on_device(device, splits["train"].images.nbytes + splits["val"].images.nbytes),
    )  # fmt: skip
    train = BatchLoader(
        splits["train"], batch_size=batch_size, shuffle=True, drop_last=False, augment=data.augment,
        rank=dist.rank, world_size=dist.world_size, **common,
    )  # fmt: skip
    # Validation is not sharded: every rank scores the whole (small) val split, so the
    # metric is exact (no padding duplicates) and identical on all ranks.
    val = BatchLoader(splits["val"], batch_size=batch_size, shuffle=False, augment=None, **common)
    return Loaders(train, val, list(splits["train"].class_pixels))


def _fits_on_device(device: "torch.device", nbytes: int) -> bool:
    """True when the uint8 splits can live on the GPU (a quarter of its free memory at most).

    Resident data makes each batch a device-side gather: no host reads or copies at all.
    """
    import torch

    if device.type != "cuda":
        return False
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes * 1.2 < free / 4  # masks add a third of the image bytes; keep room for the model
