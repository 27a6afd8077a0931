"""Measure the input pipeline against the models it has to feed, on this machine.

Compares, on the same files: (a) a naive loader that decodes and resizes the PNGs of
every item every epoch in a torch DataLoader (what the original study did), and (b) the
cached CropLoader (decode once, then uint8 memmap -> batched augmentation). For
context it also times one training step of the custom U-Net and the VGG11 U-Net.
Prints a table and writes the "Input pipeline" section of bench/RESULTS.md.

    .venv/bin/python bench/bench_loader.py                  # generated 720x480 data
    .venv/bin/python bench/bench_loader.py --data-dir data  # the train split of a real dataset
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from bench_results import machine, update_section

RESULTS = Path(__file__).with_name("RESULTS.md")


def make_pairs(root: Path, count: int, width: int = 720, height: int = 480, seed: int = 0) -> list[tuple[Path, Path]]:
    """Write ``count`` random lunar-like 720x480 scenes and colour masks as PNG; return (image, mask) paths."""
    import cv2

    from lunar_cli.classes import encode_mask, write_png_atomic

    rng = np.random.default_rng(seed)
    (root / "images/render").mkdir(parents=True, exist_ok=True)
    (root / "images/clean").mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(1, count + 1):
        mask = np.zeros((height, width), np.uint8)
        mask[: int(rng.integers(height // 8, height // 3))] = 1
        for _ in range(int(rng.integers(10, 40))):
            cls = int(rng.choice([2, 3], p=[0.8, 0.2]))
            r = int(rng.integers(2, 8) if cls == 2 else rng.integers(10, 50))
            cy, cx = int(rng.integers(height // 3, height)), int(rng.integers(0, width))
            cv2.ellipse(mask, (cx, cy), (r, max(1, r * 2 // 3)), float(rng.uniform(0, 180)), 0, 360, cls, -1)
        # Grain on smooth shading, so PNGs compress (and decode) like rendered photos, not flat shapes.
        shade = cv2.resize(rng.uniform(60, 180, (12, 18)), (width, height), interpolation=cv2.INTER_CUBIC)
        gray = shade + rng.normal(0, 12, (height, width)) + (mask == 3) * 40.0 - (mask == 1) * 150.0
        image = np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
        pairs.append((root / f"images/render/render{i:04d}.png", root / f"images/clean/clean{i:04d}.png"))
        write_png_atomic(pairs[-1][0], image)
        write_png_atomic(pairs[-1][1], encode_mask(mask))
    return pairs


def data_dir_pairs(data_dir: Path) -> list[tuple[Path, Path]]:
    """Return the train pairs of ``data_dir``: from its manifest, else render/clean files matched by number."""
    if (data_dir / "manifest.csv").is_file():
        from lunar_cli.data.split import split_pairs

        return split_pairs(data_dir, "train")
    pairs = []
    for image in sorted((data_dir / "images/render").glob("render*.png")):
        mask = data_dir / "images/clean" / image.name.replace("render", "clean")
        if mask.is_file():
            pairs.append((image, mask))
    return pairs


class NaiveDataset:
    """Per-item dataset that decodes, resizes and augments the PNGs on every access (the study's way)."""

    def __init__(self, pairs: list[tuple[Path, Path]], size: int) -> None:
        from torchvision.transforms import v2

        self.pairs = pairs
        self.size = size
        self.geometry = v2.Compose([v2.RandomHorizontalFlip(0.2), v2.RandomVerticalFlip(0.2)])
        self.color = v2.RandomApply([v2.ColorJitter(0.2, 0.2, 0.2, 0.05)], p=0.5)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        import cv2
        import torch
        from torchvision import tv_tensors

        from lunar_cli.classes import decode_mask

        image_path, mask_path = self.pairs[i]
        image = cv2.cvtColor(cv2.imread(str(image_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)
        mask_rgb = cv2.cvtColor(cv2.imread(str(mask_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        mask, _ = decode_mask(cv2.resize(mask_rgb, (self.size, self.size), interpolation=cv2.INTER_NEAREST))
        img_t = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        mask_t = tv_tensors.Mask(torch.from_numpy(mask))
        img_t, mask_t = self.geometry(img_t, mask_t)
        return self.color(img_t).float() / 255.0, mask_t.long()


def _init_naive_worker(worker_id: int) -> None:
    import cv2

    cv2.setNumThreads(1)


def throughput(make_epoch, min_seconds: float, trials: int = 3) -> float:
    """Return the best images/s of ``trials`` runs of whole epochs lasting at least ``min_seconds`` each.

    One warm-up epoch first (worker start-up, page cache). The best run, not the mean:
    on a shared machine the other runs measure the neighbours as much as the loader.
    """
    for _batch in make_epoch():
        pass
    best = 0.0
    for _ in range(trials):
        images, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_seconds:
            for x, _y in make_epoch():
                images += x.shape[0]
        best = max(best, images / (time.perf_counter() - start))
    return best


def naive_throughput(pairs, size: int, batch_size: int, workers: int, min_seconds: float) -> float:
    """Return images/s of the naive per-item DataLoader."""
    import torch

    loader = torch.utils.data.DataLoader(
        NaiveDataset(pairs, size), batch_size=batch_size, shuffle=True, num_workers=workers,
        persistent_workers=workers > 0, worker_init_fn=_init_naive_worker, drop_last=False,
        # fork after OpenCV ran threads in this process hangs the workers; forkserver starts them clean.
        multiprocessing_context="forkserver" if workers > 0 else None,
    )
    return throughput(lambda: iter(loader), min_seconds)


def cached_throughput(split, batch_size: int, min_seconds: float, augment: bool, **kwargs) -> float:
    """Return images/s of the cached CropLoader on the CPU (crops the size of the squashed frames)."""
    from lunar_cli.config import AugmentConfig
    from lunar_cli.data.dataset import CropLoader

    loader = CropLoader(split, crop=int(split.sizes[0, 0]), batch_size=batch_size, shuffle=True,
                        augment=AugmentConfig() if augment else None,
                         device="cpu", seed=0, **kwargs)
    epoch = [0]

    def next_epoch():
        loader.set_epoch(epoch[0])
        epoch[0] += 1
        return iter(loader)

    return throughput(next_epoch, min_seconds)


def model_throughput(name: str, size: int, batch_size: int, steps: int) -> tuple[float, str]:
    """Return (training images/s of one forward+backward+Adam step, how the model was built)."""
    import torch

    try:
        from lunar_cli.models.registry import build_model

        model, how = build_model(name, encoder_weights=None), "registry"
    except ImportError:
        if name == "custom":
            return float("nan"), "registry missing"
        import segmentation_models_pytorch as smp

        model, how = smp.Unet(name, encoder_weights=None, classes=4), "smp direct"
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch_size, 3, size, size)
    y = torch.randint(0, 4, (batch_size, size, size))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # warm-up: allocations, kernel selection
    best = float("inf")
    for _ in range(steps):  # best step, as for the loaders
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return batch_size / best, how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="dataset folder (default: generate 720x480 data in a temp dir)")
    parser.add_argument("--count", type=int, default=64, help="generated pairs (or cap on the data dir's train pairs)")
    parser.add_argument("--size", type=int, default=256, help="training size (square)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="naive DataLoader workers")
    parser.add_argument("--seconds", type=float, default=4.0, help="minimum seconds per timed run (best of 3 runs)")
    parser.add_argument("--model-steps", type=int, default=3, help="timed training steps per model (batch 8)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()

    from lunar_cli.data.cache import build_or_load_cache
    from lunar_cli.frames import FrameSize

    with tempfile.TemporaryDirectory(prefix="lunar-bench-") as tmp:
        tmp_dir = Path(tmp)
        if args.data_dir:
            pairs = data_dir_pairs(args.data_dir)[: args.count]
            source = f"{len(pairs)} train pairs of {args.data_dir}"
        else:
            pairs = make_pairs(tmp_dir / "data", args.count)
            source = f"{len(pairs)} generated 720x480 pairs"
        if not pairs:
            raise SystemExit(f"no image/mask pairs found in {args.data_dir}")
        print(f"data: {source}; size {args.size}x{args.size}; batch {args.batch_size}")

        start = time.perf_counter()
        split = build_or_load_cache(pairs, FrameSize(square=args.size), tmp_dir / "cache", workers=args.workers,
                                    progress=False)  # fmt: skip
        build_s = time.perf_counter() - start
        rows: list[tuple[str, float]] = []
        naive = naive_throughput(pairs, args.size, args.batch_size, args.workers, args.seconds)
        rows.append((f"naive: decode+resize+augment per item, DataLoader({args.workers} workers)", naive))
        cached = cached_throughput(split, args.batch_size, args.seconds, augment=True)
        rows.append(("cached CropLoader + batched augmentation (CPU)", cached))
        rows.append(("cached CropLoader, no augmentation (val/test)",
                     cached_throughput(split, args.batch_size, args.seconds, augment=False)))
        rows.append(("cached CropLoader + augmentation, with the prefetch thread (default on CUDA only)",
                     cached_throughput(split, args.batch_size, args.seconds, augment=True, prefetch=True)))

    models: list[tuple[str, float, str]] = []
    for name in ("custom", "vgg11"):
        ips, how = model_throughput(name, args.size, 8, args.model_steps)
        models.append((name, ips, how))
    fastest = max((ips for _n, ips, _h in models if ips == ips), default=float("nan"))

    lines = [
        "## Input pipeline (bench/bench_loader.py)",
        "",
        f"{date.today().isoformat()}; {machine()}.",
        f"Data: {source}, resized to {args.size}x{args.size}, batch {args.batch_size}. "
        f"Cache build (decode once, {args.workers} processes): {build_s:.1f}s = {len(split) / build_s:.0f} pairs/s.",
        "",
        "| what | images/s |",
        "|---|---:|",
        *[f"| {what} | {ips:.0f} |" for what, ips in rows],
        *[f"| training step, {name} U-Net ({how}), batch 8, CPU | {ips:.1f} |" for name, ips, how in models],
        "",
        "Best of 3 timed runs each (a shared machine's neighbours slow some runs). "
        f"Cached/naive: **{cached / naive:.1f}x** (target >= 10x). "
        f"Cached/fastest model training: **{cached / fastest:.0f}x** (target >= 3x).",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        update_section(RESULTS, "## Input pipeline", text)
        print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
