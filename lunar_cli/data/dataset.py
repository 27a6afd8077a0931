"""Batches from a cached split: random crops for training, whole frames for scoring.

A batch costs one sorted fancy-index read of the memmap and one host-to-device copy of
uint8 data (or, when the split fits on the GPU, a gather there); everything per pixel
(cropping, zoom, flips, photometry, normalisation) runs as batched tensor ops on the
training device (``lunar_cli.data.augment``), so a GPU is never left waiting on the CPU.
The random decisions come from CPU generators seeded by (seed, epoch[, rank]) only, so a
resumed run sees the same batches.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import numpy as np
import torch

from lunar_cli.config import AugmentConfig
from lunar_cli.data.augment import augment_crops
from lunar_cli.data.cache import CachedSplit
from lunar_cli.frames import normalize

# Streams of the seed, so shuffling, augmenting and choosing a subset never share random numbers.
_SHUFFLE, _AUGMENT, _SUBSET = 0, 1, 2


def epoch_generator(seed: int, epoch: int, stream: int, rank: int = 0) -> torch.Generator:
    """Return a CPU torch.Generator that depends only on (seed, epoch, stream, rank)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(stream), int(rank)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def shard_indices(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Return rank's share of ``order``, padded by wrapping around to equal length (like DistributedSampler)."""
    if world_size == 1:
        return order
    per_rank = math.ceil(len(order) / world_size)
    total = per_rank * world_size
    padded = np.resize(order, total)  # np.resize repeats from the start
    return padded[rank:total:world_size]


class _Rows:
    """The rows of a CachedSplit an epoch visits on this rank, in batches, gathered onto ``device``.

    ``set_epoch(e)`` chooses the shuffle (from ``seed`` and e only). ``rank``/``world_size``
    shard the epoch for DDP like DistributedSampler. ``limit`` keeps a random but fixed
    subset. ``resident`` copies the whole uint8 split to the device once so batches are
    gathered there; otherwise rows are read from the memmap, and with ``prefetch`` (default:
    on for CUDA) the next batch is read by a background thread while the current one is used.
    """

    arrays: tuple[str, ...] = ("images", "masks")

    def __init__(
        self, split: CachedSplit, *, batch_size: int, shuffle: bool = False, device: "str | torch.device" = "cpu",
        seed: int = 0, rank: int = 0, world_size: int = 1, limit: int | None = None, resident: bool = False,
        prefetch: bool | None = None,
    ) -> None:  # fmt: skip
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.device = torch.device(device)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        # The read-ahead thread hides the gather behind GPU work; on a CPU device it only
        # competes with the training step for cores (measured slower), so auto = CUDA only.
        self.prefetch = (self.device.type == "cuda" if prefetch is None else prefetch) and not resident
        self.pin_memory = self.device.type == "cuda" and not resident
        self.epoch = 0
        n = len(split)
        subset = np.arange(n)
        if limit is not None and limit < n:
            pick = torch.randperm(n, generator=epoch_generator(seed, 0, _SUBSET)).numpy()[:limit]
            subset = np.sort(pick)
        self.indices = subset  # the items this loader draws from, before shuffling and sharding
        self._resident = None
        if resident:
            self._resident = [torch.from_numpy(np.ascontiguousarray(getattr(split, a)[subset])).to(self.device)
                              for a in self.arrays]  # fmt: skip

    @property
    def samples_per_rank(self) -> int:
        """Return how many items this rank sees per epoch (after padding)."""
        return math.ceil(len(self.indices) / self.world_size)

    def __len__(self) -> int:
        """Return the number of batches per epoch on this rank."""
        return math.ceil(self.samples_per_rank / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle and augmentation the next iteration uses."""
        self.epoch = int(epoch)

    def epoch_order(self) -> np.ndarray:
        """Return this rank's item order for the current epoch, as positions into ``self.indices``."""
        positions = np.arange(len(self.indices))
        if self.shuffle:
            generator = epoch_generator(self.seed, self.epoch, _SHUFFLE)
            positions = torch.randperm(len(positions), generator=generator).numpy()
        return shard_indices(positions, self.rank, self.world_size)

    def _batches(self) -> list[np.ndarray]:
        order = self.epoch_order()
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        # Sorted rows read the memmap front to back; the order inside a batch does not matter for SGD.
        return [np.sort(b) if self.shuffle else b for b in batches]

    def _gather_host(self, positions: np.ndarray) -> list[torch.Tensor]:
        """Return the uint8 arrays' rows at ``positions``, read from the memmap in one go each."""
        rows = self.indices[positions]
        arrays = [torch.from_numpy(getattr(self.split, a)[rows]) for a in self.arrays]
        return [a.pin_memory() for a in arrays] if self.pin_memory else arrays

    def _gathered(self) -> Iterator[tuple[np.ndarray, list[torch.Tensor]]]:
        """Yield (positions, uint8 arrays on the device) for each batch of the epoch."""
        batches = self._batches()
        if self._resident is not None:
            for positions in batches:
                idx = torch.from_numpy(np.ascontiguousarray(positions, dtype=np.int64)).to(self.device)
                yield positions, [a.index_select(0, idx) for a in self._resident]
            return
        move = lambda arrays: [a.to(self.device, non_blocking=True) for a in arrays]  # noqa: E731
        if not self.prefetch or len(batches) < 2:
            for positions in batches:
                yield positions, move(self._gather_host(positions))
            return

        # One batch ahead: the memmap read (page faults, copies without the GIL) overlaps the training step.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lunar-prefetch") as pool:
            pending = pool.submit(self._gather_host, batches[0])
            for positions, nxt in zip(batches, [*batches[1:], None]):
                ready = pending.result()
                if nxt is not None:
                    pending = pool.submit(self._gather_host, nxt)
                yield positions, move(ready)

    def sizes_of(self, positions: np.ndarray) -> np.ndarray:
        """Return the (B, 4) sizes (h, w at the model's size; H, W as drawn) of the frames at ``positions``."""
        return self.split.sizes[self.indices[positions]]


class CropLoader(_Rows):
    """Iterate one epoch of training crops: (float normalised (B, 3, crop, crop), int64 masks (B, crop, crop)).

    Each crop is drawn from its frame with random zoom in ``zoom``, random window, flips and
    photometry (``augment``; None: centred crops at zoom 1, no augmentation).
    """

    def __init__(
        self, split: CachedSplit, *, crop: int, zoom: Sequence[float] = (1.0, 1.0),
        augment: AugmentConfig | None = None, mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0), channels_last: bool = False, **rows,
    ) -> None:  # fmt: skip
        super().__init__(split, **rows)
        self.crop = crop
        self.zoom = (float(zoom[0]), float(zoom[1]))
        self.augment = augment
        self.channels_last = channels_last
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(self.device)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:

        generator = epoch_generator(self.seed, self.epoch, _AUGMENT, self.rank) if self.augment else None
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for positions, (images, masks) in self._gathered():
            sizes = torch.from_numpy(self.sizes_of(positions)[:, :2].astype(np.int64))
            x, m = augment_crops(images, masks, sizes, crop=self.crop, zoom=self.zoom, params=self.augment,
                                 generator=generator)  # fmt: skip
            yield normalize(x, self._mean, self._std).contiguous(memory_format=fmt), m


class FrameLoader(_Rows):
    """Iterate whole frames in order for scoring: (uint8 frames (B, h, w, 3), uint8 masks as drawn (B, H, W), sizes).

    ``sizes`` (B, 4) numpy: each frame's own h, w at the model's size and H, W as drawn
    (frames of one size fill the canvas; others sit in its top-left corner).
    """

    arrays = ("images", "full_masks")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        for positions, (frames, masks) in self._gathered():
            yield frames, masks, self.sizes_of(positions)
