"""What a training run says while it runs: its start line, a live bar per epoch on a terminal, one log line
and one history.csv row per epoch."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path
from typing import Any, Iterator

from lunar_cli.classes import CLASS_NAMES
from lunar_cli.console import info, number, stderr
from lunar_cli.files import write_text_atomic
from lunar_cli.train_setup import Run

HISTORY_FIELDS = [
    "epoch", "train_loss", "val_loss", "val_miou", "val_pixel_accuracy",
    *[f"iou_{name}" for name in CLASS_NAMES], "lr", "epoch_seconds", "images_per_second",
]  # fmt: skip


def say_start(run: Run, resumed_at: int | None) -> None:
    """Say where the run starts, what it trains on which device and precision, and where it writes."""
    t = run.cfg.train
    if resumed_at is not None:
        info(f"resuming {run.run_dir} at epoch {resumed_at + 1}/{t.epochs}")
    n_params = sum(p.numel() for p in run.model.parameters())
    procs = f" x{run.dist.world_size} processes" if run.dist.enabled else ""
    info(
        f"training {run.backbone} ({n_params / 1e6:.2f}M parameters) on {run.precision.label}{procs}: "
        f"{len(run.loaders.train.indices)} train frames ({run.loaders.train.split.size_rule.describe()}, "
        f"{run.loaders.train.crop}px crops) / {len(run.loaders.val.indices)} val frames (whole, scored at full "
        f"resolution), {t.epochs} epochs -> {run.run_dir}"
    )


def write_history(path: Path, history: list[dict]) -> None:
    """Write history.csv atomically: one row per finished epoch, HISTORY_FIELDS columns."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in HISTORY_FIELDS})
    write_text_atomic(path, buffer.getvalue())


class EpochProgress:
    """Per-epoch progress: a rich bar with loss, IoU and images/s on a terminal, log lines elsewhere."""

    def __init__(self, enabled: bool, epochs: int) -> None:
        self.epochs = epochs
        self.live = enabled and stderr().is_terminal
        self.enabled = enabled
        self._progress = None
        if self.live:
            from rich.progress import (  # rich: only for a live bar on a terminal
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=stderr(), transient=True,
            )  # fmt: skip
            self._progress.start()

    @contextlib.contextmanager
    def epoch(self, epoch: int, batches: int) -> Iterator[Any]:
        """Yield an ``update(done, stats)`` callable for one epoch."""
        if self._progress is None:
            yield lambda done, stats: None
            return
        task = self._progress.add_task(f"epoch {epoch}/{self.epochs}", total=batches, stats="")
        try:
            yield lambda done, stats: self._progress.update(task, completed=done, stats=stats)
        finally:
            self._progress.remove_task(task)

    def log(self, row: dict) -> None:
        """Print one line per finished epoch."""
        if not self.enabled:
            return
        ious = " ".join(f"{n}={number(row[f'iou_{n}'])}" for n in CLASS_NAMES)
        info(
            f"epoch {row['epoch']}/{self.epochs}  train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
            f"val_mIoU {number(row['val_miou'])}  [{ious}]  {row['images_per_second']:.1f} img/s  "
            f"{row['epoch_seconds']:.1f}s"
        )

    def close(self) -> None:
        """Stop the live display."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
