"""Time per training step: `lunar train`'s engine against a bare PyTorch loop, in fp32 and in bf16.

Same model, layout, precision, batch, crop size, loss (CE + Dice) and optimiser (AdamW) on
both sides. The bare loop feeds crops already in memory (normalised float, no
augmentation); lunar's loop reads uint8 480x320 frames through ``CropLoader`` (gather,
random zoom, crop and flips with grid_sample, colour jitter and the camera-look
augmentations on the device) and runs ``train_one_epoch`` with its loss, schedule and
bookkeeping. Precision as ``runtime.choose_precision`` picks it: fp32, or bf16 autocast
where the CPU runs it natively (channels-last in both). Runs alternate (A B A B ...) so
machine drift hits both; medians are reported. Targets: lunar <= 1.05x bare in the same
precision; bf16 vs fp32 (lunar's own step): custom >= 2x, resnet18 >= 1.8x, vgg11 >= 3x.

    python bench/bench_train.py                    # custom, resnet18, vgg11; 256x256 crops
    python bench/bench_train.py --write            # also update bench/RESULTS.md
    python bench/bench_train.py --device cuda --batch 32 --steps 40 --write   # on a GPU (its own section)

On a GPU both sides run in fp32 (TF32 matrix units, as lunar train sets them) and bf16
autocast, the frames resident on the device as lunar train keeps them when they fit,
and each side is timed over all its steps with one synchronisation at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does

import numpy as np
import torch
from bench_results import machine, model_kwargs, precisions, update_section

from lunar_cli.config import AugmentConfig, TrainConfig
from lunar_cli.data.cache import CachedSplit
from lunar_cli.data.dataset import CropLoader
from lunar_cli.models.registry import build_model, normalization
from lunar_cli.recipe import make_criterion, make_optimizer
from lunar_cli.runtime import choose_precision
from lunar_cli.train import train_one_epoch



def gpu_precisions() -> list[tuple[str, bool]]:
    """Return the (label, amp) pairs to time on a GPU: fp32 (TF32) and bf16 autocast."""
    return [("fp32", False), ("bf16", True)]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a host clock reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fake_split(n: int, seed: int) -> CachedSplit:
    """Return an in-memory split of n random 480x320 frames (uint8 images, 4-class masks)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 320, 480, 3), dtype=np.uint8)
    masks = rng.integers(0, 4, size=(n, 320, 480), dtype=np.uint8)
    sizes = np.tile(np.array([[320, 480, 320, 480]], np.int32), (n, 1))
    return CachedSplit(images=images, masks=masks, full_masks=masks, sizes=sizes, files=[str(i) for i in range(n)],
                       path=Path(tempfile.gettempdir()), skipped=[], off_palette=0.0,
                       class_pixels=np.bincount(masks.ravel(), minlength=4).tolist())  # fmt: skip


def setup(backbone: str, amp: bool, device: torch.device):
    """Return (model in its layout on the device, optimiser, loss, precision), as lunar train builds them."""
    torch.manual_seed(0)
    precision = choose_precision(device, amp, None)
    model = build_model(backbone, **model_kwargs(backbone)).to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, TrainConfig(backbone=backbone))
    return model, opt, make_criterion("ce+dice", None, [1, 1, 1, 1], device), precision


def bare_steps(backbone: str, amp: bool, crop: int, batch: int, steps: int, device: torch.device) -> float:
    """Return seconds per step of a plain loop over pre-made normalised crops already on the device."""
    model, opt, criterion, precision = setup(backbone, amp, device)
    x_all = torch.rand(batch * steps, 3, crop, crop, device=device).contiguous(memory_format=torch.channels_last)
    y_all = torch.randint(0, 4, (batch * steps, crop, crop), device=device)
    model.train()
    synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        x, y = x_all[i * batch : (i + 1) * batch], y_all[i * batch : (i + 1) * batch]
        opt.zero_grad(set_to_none=True)
        with precision.autocast():
            logits = model(x)
        criterion(logits, y).backward()
        opt.step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def lunar_steps(backbone: str, amp: bool, split: CachedSplit, crop: int, batch: int, steps: int,
                device: torch.device) -> float:  # fmt: skip
    """Return seconds per step of lunar's engine (CropLoader with augmentation + train_one_epoch), by epoch time."""
    model, opt, criterion, precision = setup(backbone, amp, device)
    norm = normalization(backbone)
    loader = CropLoader(split, crop=crop, zoom=(0.75, 1.5), augment=AugmentConfig(), mean=norm["mean"],
                        std=norm["std"], channels_last=precision.channels_last, batch_size=batch, shuffle=True,
                        seed=0, limit=batch * steps, device=device, resident=device.type == "cuda")  # fmt: skip
    loader.set_epoch(1)
    synchronize(device)
    _, _, seconds = train_one_epoch(model, loader, criterion, opt, None, precision.autocast, None)
    synchronize(device)  # train_one_epoch waits for its last step already (the loss check)
    return seconds / len(loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="custom,resnet18,vgg11")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":  # as lunar train sets them (train_setup.configure_torch)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    split = fake_split(args.batch * args.steps, 0)
    rows, lunar_ms = [], {}
    for backbone in args.backbones.split(","):
        for label, amp in gpu_precisions() if device.type == "cuda" else precisions():
            bare_steps(backbone, amp, args.crop, args.batch, 2, device)  # warm-up: kernels, allocator, lazy imports
            lunar_steps(backbone, amp, split, args.crop, args.batch, 2, device)
            bare, ours = [], []
            for _ in range(args.rounds):
                bare.append(bare_steps(backbone, amp, args.crop, args.batch, args.steps, device))
                ours.append(lunar_steps(backbone, amp, split, args.crop, args.batch, args.steps, device))
            b, o = statistics.median(bare), statistics.median(ours)
            lunar_ms[backbone, label] = o
            speedup = f"{lunar_ms[backbone, 'fp32'] / o:.2f}x" if label != "fp32" else ""
            rows.append(f"| {backbone} | {label} | {b * 1000:.1f} | {o * 1000:.1f} | {args.batch / o:.1f} | "
                        f"**{o / b:.3f}** | {speedup} |")  # fmt: skip
            print(rows[-1], flush=True)

    where = "a GPU" if device.type == "cuda" else "the CPU"
    heading = "## Training step on a GPU" if device.type == "cuda" else "## Training step"
    lines = [
        f"{heading}: lunar vs bare PyTorch loop, fp32 and bf16 ({date.today().isoformat()})",
        "",
        f"Machine: {machine()}. On {where}. Crops {args.crop}x{args.crop} (lunar: from 480x320 frames with zoom, flips, "
        f"jitter and camera-look augmentation), batch {args.batch}, CE+Dice, AdamW, channels-last; {args.steps} steps x "
        f"{args.rounds} alternating rounds, medians. Command: `python bench/bench_train.py --device {args.device} "
        f"--batch {args.batch} --steps {args.steps} --backbones {args.backbones} --write`.",
        "",
        "| model | precision | bare loop ms/step | lunar ms/step | lunar images/s | lunar / bare | bf16 speed-up (lunar) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
    ]
    print("\n".join(lines))
    if args.write:
        update_section(Path(__file__).with_name("RESULTS.md"), f"{heading}:", "\n".join(lines))


if __name__ == "__main__":
    main()
