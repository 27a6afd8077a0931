"""Batches of tensors from a cached split: gather uint8 rows, move them, then normalise and augment on the device.

A batch costs one sorted fancy-index read of the memmap and one host-to-device copy of
uint8 data; everything per pixel (float conversion, flips, colour jitter, normalisation)
runs as batched tensor ops on the training device, so a GPU is never left waiting on the
CPU. The random decisions come from CPU generators seeded by (seed, epoch[, rank]) only,
so a resumed run sees the same batches.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from lunar_cli.data.cache import CachedSplit

if TYPE_CHECKING:
    import torch

    from lunar_cli.config import AugmentConfig

# Streams of the seed, so shuffling, augmenting and choosing a subset never share random numbers.
_SHUFFLE, _AUGMENT, _SUBSET = 0, 1, 2


def epoch_generator(seed: int, epoch: int, stream: int, rank: int = 0) -> "torch.Generator":
    """Return a CPU torch.Generator that depends only on (seed, epoch, stream, rank)."""
    import torch

    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(stream), int(rank)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# ---------------------------------------------------------------------------------------------
# Augmentation: batched tensor ops, per-sample factors


def _gray(img: "torch.Tensor") -> "torch.Tensor":
    """Return the (N, 1, H, W) luminance of float RGB (N, 3, H, W) (ITU-R 601, as torchvision)."""
    r, g, b = img.unbind(-3)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def _shift_hue(img: "torch.Tensor", shift: "torch.Tensor") -> "torch.Tensor":
    """Return float RGB (N, 3, H, W) in [0, 1] with hue rotated by ``shift`` (N,) turns, as TF.adjust_hue."""
    import torch

    r, g, b = img.unbind(-3)
    maxc = torch.maximum(torch.maximum(r, g), b)  # elementwise: much faster than a max over dim -3
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    # Hue in sixths of a turn (HSV as torchvision's _rgb_to_hsv): which channel is largest picks
    # the numerator and the offset. Grey pixels have numerator 0, so clamping chroma keeps them at 0.
    r_max, g_max = maxc == r, maxc == g
    numerator = torch.where(r_max, g - b, torch.where(g_max, b - r, r - g))
    offset = torch.where(r_max, 0.0, torch.where(g_max, 2.0, 4.0))
    h = numerator.div_(chroma.clamp(min=1e-12)).add_(offset).add_(6.0 * shift.view(-1, 1, 1))
    # HSV back to RGB without branches: channel n is v - chroma * clamp(min(k, 4 - k), 0, 1), k = (n + h) mod 6.
    k = torch.remainder(h.unsqueeze(-3) + torch.tensor([5.0, 3.0, 1.0], device=img.device).view(1, 3, 1, 1), 6.0)
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return weight.mul_(chroma.unsqueeze(-3)).neg_().add_(maxc.unsqueeze(-3))


def color_jitter_(
    img: "torch.Tensor",
    brightness: "torch.Tensor",
    contrast: "torch.Tensor",
    saturation: "torch.Tensor",
    hue: "torch.Tensor",
) -> "torch.Tensor":
    """Return float RGB (N, 3, H, W) in [0, 1] jittered per sample (each factor an (N,) tensor); overwrites ``img``.

    Brightness, contrast, saturation, then hue, each clamped to [0, 1] like torchvision's
    ``adjust_*`` (in a fixed order where ColorJitter draws a random one).
    """

    if img.device.type == "cpu" and img.shape[0] > 1:
        # One image at a time keeps the ~30 passes over the pixels inside the CPU cache:
        # 2-3x faster than streaming the whole batch through memory for every op.
        for i in range(img.shape[0]):
            one = slice(i, i + 1)
            img[one] = color_jitter_(img[one], brightness[one], contrast[one], saturation[one], hue[one])
        return img

    def per_sample(x: "torch.Tensor") -> "torch.Tensor":
        return x.to(device=img.device, dtype=img.dtype).view(-1, 1, 1, 1)

    img.mul_(per_sample(brightness)).clamp_(0.0, 1.0)
    c = per_sample(contrast)
    mean_gray = _gray(img).mean(dim=(-3, -2, -1), keepdim=True)
    img.mul_(c).add_(mean_gray * (1.0 - c)).clamp_(0.0, 1.0)
    s = per_sample(saturation)
    gray = _gray(img).mul_(1.0 - s)  # before img changes in place
    img.mul_(s).add_(gray).clamp_(0.0, 1.0)
    return _shift_hue(img, hue.to(device=img.device, dtype=img.dtype))


def augment_batch_(
    images: "torch.Tensor", masks: "torch.Tensor", params: "AugmentConfig", generator: "torch.Generator"
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Flip images and masks together and colour-jitter the images, in place, decisions per sample; return them.

    ``images`` is float (N, 3, H, W) in [0, 1], ``masks`` (N, H, W); both stay on their
    device. The random draws come from the CPU ``generator``, seven per sample, so the
    same generator state gives the same result on any device.
    """
    import torch

    n = images.shape[0]
    u = torch.rand((n, 7), generator=generator)  # flips, jitter?, then four factors in [0, 1)
    dev = images.device
    for column, p, dim in ((0, params.hflip, -1), (1, params.vflip, -2)):
        chosen = torch.nonzero(u[:, column] < p).flatten()
        if len(chosen):  # touch only the flipped samples: most of a batch is left alone
            chosen = chosen.to(dev)
            images[chosen] = images[chosen].flip(dim)
            masks[chosen] = masks[chosen].flip(dim)
    chosen = torch.nonzero(u[:, 2] < params.jitter_p).flatten()
    if len(chosen):
        # Factors uniform in [1 - s, 1 + s], hue in [-h, h] (as ColorJitter).
        f = u[chosen, 3:] * 2.0 - 1.0
        on_dev = chosen.to(dev)
        images[on_dev] = color_jitter_(
            images[on_dev],  # a copy: indexing with a tensor gathers
            1.0 + f[:, 0] * params.brightness,
            1.0 + f[:, 1] * params.contrast,
            1.0 + f[:, 2] * params.saturation,
            f[:, 3] * params.hue,
        )
    return images, masks


# ---------------------------------------------------------------------------------------------
# The loader


def shard_indices(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Return rank's share of ``order``, padded by wrapping around to equal length (like DistributedSampler)."""
    if world_size == 1:
        return order
    per_rank = math.ceil(len(order) / world_size)
    total = per_rank * world_size
    padded = np.resize(order, total)  # np.resize repeats from the start
    return padded[rank:total:world_size]


class BatchLoader:
    """Iterate one epoch of (images float (N, 3, H, W), masks int64 (N, H, W)) on ``device`` from a CachedSplit.

    ``set_epoch(e)`` chooses the shuffle and augmentation of epoch e (from ``seed`` and e
    only). ``rank``/``world_size`` shard the epoch for DDP like DistributedSampler.
    ``limit`` keeps a random but fixed subset of that many items. ``resident`` copies the
    whole uint8 split to the device once (about 0.2 MB per 256x256 item) so batches are
    gathered there; otherwise rows are read from the memmap, and with ``prefetch`` (default:
    on for CUDA) the next batch is gathered by a background thread while the current one is used.
    """

    def __init__(
        self,
        split: CachedSplit,
        *,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: "AugmentConfig | None" = None,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        device: "str | torch.device" = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        limit: int | None = None,
        channels_last: bool = False,
        pin_memory: bool | None = None,
        resident: bool = False,
        prefetch: bool | None = None,
    ) -> None:
        import torch

        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.device = torch.device(device)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.resident = resident
        # The read-ahead thread hides the gather behind GPU work; on a CPU device it only
        # competes with the training step for cores (measured slower), so auto = CUDA only.
        self.prefetch = (self.device.type == "cuda" if prefetch is None else prefetch) and not resident
        self.pin_memory = (self.device.type == "cuda" and not resident) if pin_memory is None else pin_memory
        self.epoch = 0
        # (x - mean) / std as one multiply-add on the device.
        std_t = torch.tensor(std, dtype=torch.float32)
        self._inv_std = (1.0 / std_t).view(1, 3, 1, 1).to(self.device)
        self._offset = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, 3, 1, 1).to(self.device)

        n = len(split)
        subset = np.arange(n)
        if limit is not None and limit < n:
            pick = torch.randperm(n, generator=epoch_generator(seed, 0, _SUBSET)).numpy()[:limit]
            subset = np.sort(pick)
        self.indices = subset  # the items this loader draws from, before shuffling and sharding
        self._resident: tuple[torch.Tensor, torch.Tensor] | None = None
        if resident:
            self._resident = (
                torch.from_numpy(np.ascontiguousarray(split.images[subset])).to(self.device),
                torch.from_numpy(np.ascontiguousarray(split.masks[subset])).to(self.device),
            )

    @property
    def samples_per_rank(self) -> int:
        """Return how many items this rank sees per epoch (after padding, before drop_last)."""
        return math.ceil(len(self.indices) / self.world_size)

    def __len__(self) -> int:
        """Return the number of batches per epoch on this rank."""
        n = self.samples_per_rank
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle and augmentation the next iteration uses."""
        self.epoch = int(epoch)

    def epoch_order(self) -> np.ndarray:
        """Return this rank's item order for the current epoch, as positions into ``self.indices``."""
        import torch

        positions = np.arange(len(self.indices))
        if self.shuffle:
            generator = epoch_generator(self.seed, self.epoch, _SHUFFLE)
            positions = torch.randperm(len(positions), generator=generator).numpy()
        return shard_indices(positions, self.rank, self.world_size)  # positions into self.indices

    def _batches(self) -> list[np.ndarray]:
        order = self.epoch_order()
        cuts = range(0, len(order), self.batch_size)
        batches = [order[i : i + self.batch_size] for i in cuts]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        # Sorted rows read the memmap front to back; the order inside a batch does not matter for SGD.
        return [np.sort(b) for b in batches]

    def _gather_host(self, positions: np.ndarray) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Return uint8 (images (B, H, W, 3), masks (B, H, W)) read from the memmap in one go each."""
        import torch

        rows = self.indices[positions]
        images = torch.from_numpy(self.split.images[rows])
        masks = torch.from_numpy(self.split.masks[rows])
        if self.pin_memory:
            images, masks = images.pin_memory(), masks.pin_memory()
        return images, masks

    def _to_batch(
        self, images: "torch.Tensor", masks: "torch.Tensor", generator: "torch.Generator | None"
    ) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Return (float normalised (B, 3, H, W), int64 (B, H, W)) on the device from uint8 rows."""
        import torch

        images = images.to(self.device, non_blocking=True)
        masks = masks.to(self.device, non_blocking=True)
        # NHWC uint8 -> NCHW float in one copy; per-channel planes make the colour ops faster.
        x = images.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
        if self.augment is not None and generator is not None:
            # In place is safe: masks is a fresh gather (fancy index / index_select), never the source.
            x, masks = augment_batch_(x.div_(255.0), masks, self.augment, generator)
            x = x.mul_(self._inv_std).add_(self._offset)
        else:
            x = x.mul_(self._inv_std / 255.0).add_(self._offset)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt), masks.long()

    def __iter__(self) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
        batches = self._batches()
        generator = epoch_generator(self.seed, self.epoch, _AUGMENT, self.rank) if self.augment else None
        if self._resident is not None:
            images_all, masks_all = self._resident
            for positions in batches:
                idx = _torch_index(positions, images_all.device)
                yield self._to_batch(images_all.index_select(0, idx), masks_all.index_select(0, idx), generator)
            return
        if not self.prefetch or len(batches) < 2:
            for positions in batches:
                yield self._to_batch(*self._gather_host(positions), generator)
            return
        from concurrent.futures import ThreadPoolExecutor

        # One batch ahead: the memmap read (page faults, copies without the GIL) overlaps the training step.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lunar-prefetch") as pool:
            pending = pool.submit(self._gather_host, batches[0])
            for nxt in batches[1:]:
                ready = pending.result()
                pending = pool.submit(self._gather_host, nxt)
                yield self._to_batch(*ready, generator)
            yield self._to_batch(*pending.result(), generator)


def _torch_index(positions: np.ndarray, device: "torch.device") -> "torch.Tensor":
    """Return ``positions`` as an int64 index tensor on ``device``."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(positions, dtype=np.int64)).to(device)
