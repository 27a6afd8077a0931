"""What a training run says while it runs: a live bar per epoch on a terminal, one log line per epoch."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

from lunar_cli.classes import CLASS_NAMES
from lunar_cli.console import info


class EpochProgress:
    """Per-epoch progress: a rich bar with loss, IoU and images/s on a terminal, log lines elsewhere."""

    def __init__(self, enabled: bool, epochs: int) -> None:
        from lunar_cli.console import err

        self.epochs = epochs
        self.live = enabled and err.is_terminal
        self.enabled = enabled
        self._progress = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=err, transient=True,
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
        ious = " ".join(f"{n}={_fmt(row[f'iou_{n}'])}" for n in CLASS_NAMES)
        info(
            f"epoch {row['epoch']}/{self.epochs}  train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
            f"val_mIoU {_fmt(row['val_miou'])}  [{ious}]  {row['images_per_second']:.1f} img/s  "
            f"{row['epoch_seconds']:.1f}s"
        )

    def close(self) -> None:
        """Stop the live display."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
