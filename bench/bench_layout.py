"""Which memory layout is faster under CPU bf16 autocast, per model family: NCHW or channels-last.

lunar runs every model channels-last on a CPU (``runtime.choose_precision``); this checks that
choice per family. Training step: batch 8 of 256x256 crops, AdamW, cross-entropy; forward: batch 2
of 480x736 frames (a 720x480 photo padded), no grad. Random weights; best of 2 alternating rounds,
each the median of a few steps after two warm-up ones.

    .venv/bin/python bench/bench_layout.py            # print the table
    .venv/bin/python bench/bench_layout.py --write    # also update bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; before torch loads

import torch
from bench_results import machine, model_kwargs, update_section

from lunar_cli.models.registry import BACKBONES, build_model

# What is timed: (training?, batch, height, width) -> its name in the table.
USES = {(True, 8, 256, 256): "training step, 256x256, batch 8", (False, 2, 480, 736): "forward, 480x736, batch 2"}


def seconds_per_step(name: str, channels_last: bool, use: tuple[bool, int, int, int], steps: int) -> float:
    """Return the median seconds of one training step (or forward pass) of ``name`` in bf16 autocast."""
    train, batch, height, width = use
    torch.manual_seed(0)
    model = build_model(name, **model_kwargs(name))
    x = torch.randn(batch, 3, height, width)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    if train:
        y, optimizer = torch.randint(0, 4, (batch, height, width)), torch.optim.AdamW(model.parameters(), 1e-3)
    model.train(train)
    times = []
    for i in range(2 + steps):
        start = time.perf_counter()
        if train:
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(x)
            torch.nn.functional.cross_entropy(logits.float(), y).backward()
            optimizer.step()
        else:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                model(x)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    rows, slower = [], []
    for name in BACKBONES:
        for use, what in USES.items():
            batch = use[1]
            best = {False: float("inf"), True: float("inf")}
            for _ in range(2):
                for layout in (False, True):
                    best[layout] = min(best[layout], seconds_per_step(name, layout, use, 3 if name == "vgg11" else 4))
            rows.append(f"| {name} | {what} | {batch / best[False]:.2f} | {batch / best[True]:.2f} "
                        f"| **{best[False] / best[True]:.2f}x** |")  # fmt: skip
            if best[True] > best[False]:
                slower.append(f"{name} ({what})")
            print(rows[-1], flush=True)
    text = "\n".join([
        f"## Layout under CPU bf16, per model family ({date.today().isoformat()})",
        "",
        f"Machine: {machine()}. bf16 autocast, random weights, images/s (best of 2 alternating rounds). "
        "Command: `python bench/bench_layout.py --write`.",
        "",
        "| model | what | NCHW | channels-last | channels-last / NCHW |",
        "| --- | --- | ---: | ---: | ---: |",
        *rows,
        "",
        ("Channels-last is faster for every family and both uses here, so one choice per device type "
         "(channels-last on a CPU) serves them all." if not slower else
         f"Channels-last is slower for {', '.join(slower)}: lunar's one choice per device type does not fit them."),
    ])  # fmt: skip
    print(text)
    if args.write:
        update_section(Path(__file__).resolve().parent / "RESULTS.md", "## Layout under CPU bf16", text)


if __name__ == "__main__":
    main()
