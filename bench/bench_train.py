"""Time per training step: `lunar train`'s engine against a bare PyTorch loop.

Same model, same batch size and image size. The bare loop feeds tensors already in
memory (normalised float, no augmentation); lunar's loop reads the uint8 cache through
``BatchLoader`` (gather, normalise, flip and colour-jitter on the device) and runs
``train_one_epoch`` with its loss and bookkeeping. Runs alternate (A B A B ...) so
machine drift hits both; medians are reported. Target: lunar <= 1.05x bare.

    python bench/bench_train.py                    # custom and resnet18, 256x256, batch 4
    python bench/bench_train.py --write            # also update bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does

import numpy as np
import torch
import torch.nn.functional as F

from lunar_cli.data.cache import CachedSplit
from lunar_cli.config import AugmentConfig
from lunar_cli.data.dataset import BatchLoader
from lunar_cli.models.registry import build_model, normalization
from lunar_cli.recipe import make_criterion, make_optimizer
from lunar_cli.train import train_one_epoch
from lunar_cli.config import TrainConfig


def fake_split(n: int, size: int, seed: int) -> CachedSplit:
    """Return an in-memory split of n random scenes (uint8 images, 4-class masks)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    masks = rng.integers(0, 4, size=(n, size, size), dtype=np.uint8)
    return CachedSplit(images=images, masks=masks, files=[f"{i}" for i in range(n)], path=Path(tempfile.gettempdir()),
                       skipped=[], off_palette=0.0, class_pixels=np.bincount(masks.ravel(), minlength=4).tolist())


def bare_steps(backbone: str, split: CachedSplit, batch: int, steps: int) -> list[float]:
    """Return seconds per step of a plain loop over pre-made tensors."""
    torch.manual_seed(0)
    model = build_model(backbone)
    opt = make_optimizer(model, TrainConfig(backbone=backbone))
    norm = normalization(backbone)
    mean = torch.tensor(norm["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"]).view(1, 3, 1, 1)
    x_all = (torch.from_numpy(split.images[: batch * steps]).permute(0, 3, 1, 2).float() / 255 - mean) / std
    y_all = torch.from_numpy(split.masks[: batch * steps]).long()
    model.train()
    times = []
    for i in range(steps):
        x, y = x_all[i * batch : (i + 1) * batch], y_all[i * batch : (i + 1) * batch]
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        loss.item()
        times.append(time.perf_counter() - start)
    return times


def lunar_steps(backbone: str, split: CachedSplit, batch: int, steps: int) -> list[float]:
    """Return seconds per step of lunar's engine (loader + augmentation + train_one_epoch), by epoch time."""
    torch.manual_seed(0)
    model = build_model(backbone)
    cfg = TrainConfig(backbone=backbone)
    opt = make_optimizer(model, cfg)
    norm = normalization(backbone)
    loader = BatchLoader(split, batch_size=batch, shuffle=True, augment=AugmentConfig(), mean=norm["mean"],
                         std=norm["std"], device="cpu", seed=0, limit=batch * steps)  # fmt: skip
    criterion = make_criterion("ce", None, split.class_pixels, torch.device("cpu"))
    import contextlib

    times = []
    for epoch in range(1, 3):  # one short epoch per call would include thread start-up; use step timings
        loader.set_epoch(epoch)
        _, seen, seconds = train_one_epoch(model, loader, criterion, opt, None, contextlib.nullcontext, None)
        times.append(seconds / len(loader))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="custom,resnet18")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()

    split = fake_split(args.batch * args.steps, args.size, 0)
    rows = []
    for backbone in args.backbones.split(","):
        bare_steps(backbone, split, args.batch, 2)  # warm-up: kernels, allocator, lazy imports
        lunar_steps(backbone, split, args.batch, 2)
        bare, ours = [], []
        for _ in range(args.rounds):
            bare.append(statistics.median(bare_steps(backbone, split, args.batch, args.steps)[1:]))
            ours.append(statistics.median(lunar_steps(backbone, split, args.batch, args.steps)))
        b, o = statistics.median(bare), statistics.median(ours)
        rows.append((backbone, b, o, o / b))
        print(f"{backbone:10s} bare {b * 1000:8.1f} ms/step   lunar {o * 1000:8.1f} ms/step   ratio {o / b:.3f}",
              flush=True)  # fmt: skip

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    machine = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), Python {sys.version.split()[0]}"
    lines = [
        f"## Training step: lunar vs bare PyTorch loop ({date.today().isoformat()})",
        "",
        f"Machine: {machine}. Image {args.size}x{args.size}, batch {args.batch}, {args.steps} steps x {args.rounds} "
        "alternating rounds, medians. Command: `python bench/bench_train.py`.",
        "",
        "| model | bare loop ms/step | lunar ms/step | lunar / bare |",
        "| --- | ---: | ---: | ---: |",
        *[f"| {b} | {x * 1000:.1f} | {y * 1000:.1f} | {r:.3f} |" for b, x, y, r in rows],
        "",
    ]
    print("\n".join(lines))
    if args.write:
        from bench_results import update_section

        update_section(Path(__file__).with_name("RESULTS.md"), "## Training step", "\n".join(lines))


if __name__ == "__main__":
    main()
