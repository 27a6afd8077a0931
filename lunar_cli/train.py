"""The training engine behind ``lunar train``: best model on val IoU, exact resume, torchrun/DDP.

Reads top to bottom like torchvision's reference script: data -> model -> loss ->
optimiser -> ``train_one_epoch`` -> ``validate`` -> ``train``. Everything a run needs to
continue exactly is in ``last.pt``; ``best.pt`` holds the weights with the highest val
mIoU. Only rank 0 writes files and logs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from lunar_cli.classes import CLASS_NAMES, NUM_CLASSES
from lunar_cli.config import DataConfig, TrainConfig, load_config
from lunar_cli.console import LunarError, info
from lunar_cli.runtime import Dist

if TYPE_CHECKING:
    import torch

    from lunar_cli.data.dataset import BatchLoader

HISTORY_FIELDS = [
    "epoch", "train_loss", "val_loss", "val_miou", "val_pixel_accuracy",
    *[f"iou_{name}" for name in CLASS_NAMES], "lr", "epoch_seconds", "images_per_second",
]  # fmt: skip


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
    from lunar_cli.data.dataset import AugmentParams, BatchLoader
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
        splits["train"], batch_size=batch_size, shuffle=True, drop_last=False,
        augment=AugmentParams(**asdict(data.augment)), rank=dist.rank, world_size=dist.world_size, **common,
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


def make_criterion(loss: str, class_weights: Any, class_pixels: list[int], device: "torch.device"):
    """Return the loss function (logits, int64 masks) -> scalar for ``loss``."""
    import torch
    import torch.nn.functional as F

    weight = None
    if class_weights == "auto":
        counts = torch.tensor(class_pixels, dtype=torch.float64).clamp_min(1.0)
        inverse = counts.sum() / (len(counts) * counts)
        weight = (inverse / inverse.mean()).clamp(max=50.0).float().to(device)
    elif class_weights is not None:
        weight = torch.tensor(class_weights, dtype=torch.float32, device=device)

    def cross_entropy(logits, target):
        return F.cross_entropy(logits.float(), target, weight=weight)

    if loss == "ce":
        return cross_entropy
    from segmentation_models_pytorch.losses import DiceLoss, FocalLoss  # ~1 s import, only when asked

    dice = DiceLoss(mode="multiclass", from_logits=True)
    if loss == "dice":
        return lambda logits, target: dice(logits.float(), target)
    if loss == "focal":
        focal = FocalLoss(mode="multiclass")
        return lambda logits, target: focal(logits.float(), target)
    if loss == "ce+dice":
        return lambda logits, target: cross_entropy(logits, target) + dice(logits.float(), target)
    raise LunarError(f"unknown loss {loss!r}: choose ce, dice, focal or ce+dice")


def make_optimizer(model: "torch.nn.Module", cfg: TrainConfig) -> "torch.optim.Optimizer":
    """Return the optimiser: Adam 1e-3 for custom and SGD 1e-2 for smp encoders unless set."""
    import torch

    kind = cfg.optimizer
    if kind == "auto":
        kind = "adam" if cfg.backbone == "custom" else "sgd"
    lr = cfg.lr if cfg.lr is not None else (1e-2 if kind == "sgd" else 1e-3)
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: "torch.optim.Optimizer", kind: str, epochs: int):
    """Return a per-epoch learning-rate scheduler, or None."""
    import torch

    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    if kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
    return None


def autocast_for(device: "torch.device", amp: bool):
    """Return (autocast context factory, GradScaler or None) for mixed precision on GPU."""
    import torch

    if not amp or device.type != "cuda":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


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


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def train_one_epoch(
    model, loader: "BatchLoader", criterion, optimizer, scaler, autocast, update,
) -> tuple[float, int, float]:  # fmt: skip
    """Train for one epoch; return (mean loss on this rank, images seen, seconds)."""
    import torch

    model.train()
    total = torch.zeros((), dtype=torch.float64, device=loader.device)
    seen = 0
    start = time.perf_counter()
    for step, (images, masks) in enumerate(loader, start=1):
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = model(images)
        loss = criterion(logits, masks)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total += loss.detach() * images.shape[0]
        seen += images.shape[0]
        if update is not None and (step % 5 == 0 or step == len(loader)):
            elapsed = time.perf_counter() - start
            update(step, f"loss {total.item() / seen:.4f}  {seen / max(elapsed, 1e-9):.1f} img/s")
    seconds = time.perf_counter() - start
    return float(total.item() / max(seen, 1)), seen, seconds


def validate(model, loader: "BatchLoader", criterion, autocast) -> tuple[float, dict, "torch.Tensor"]:
    """Return (mean loss, metrics summary, confusion matrix) of ``model`` on the whole loader."""
    import torch

    from lunar_cli.metrics import ConfusionMatrix, summarize

    model.eval()
    matrix = ConfusionMatrix(NUM_CLASSES)
    total, seen = 0.0, 0
    with torch.inference_mode():
        for images, masks in loader:
            with autocast():
                logits = model(images)
            total += float(criterion(logits, masks)) * images.shape[0]
            seen += images.shape[0]
            matrix.update(logits, masks)
    return total / max(seen, 1), summarize(matrix.matrix, CLASS_NAMES), matrix.matrix


def _rng_state() -> dict:
    import torch

    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(state["cuda"])


def _write_history(path: Path, history: list[dict]) -> None:
    from lunar_cli.files import write_text_atomic

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in HISTORY_FIELDS})
    write_text_atomic(path, buffer.getvalue())


def _unwrap(model):
    """Return the plain model inside DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def resolve_resume(resume: Path) -> Path:
    """Return the last.pt to resume from, given a run folder or a checkpoint file."""
    resume = Path(resume)
    path = resume / "last.pt" if resume.is_dir() else resume
    if not path.is_file():
        raise LunarError(f"nothing to resume at {resume}: give a run folder with last.pt or a checkpoint file")
    return path


def _config_sections(saved: dict) -> tuple[TrainConfig, DataConfig, int]:
    """Rebuild the train/data sections and seed a checkpoint was made with."""
    cfg = load_config(None, _flatten({"train": saved["train"], "data": saved["data"], "seed": saved["seed"]}))
    return cfg.train, cfg.data, cfg.seed


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def train(
    cfg: TrainConfig, data: DataConfig, *, data_dir: Path, runs_dir: Path, seed: int, device: str = "auto",
    resume: Path | None = None, epochs_override: int | None = None, requested_backbone: str | None = None,
    progress: bool = True,
) -> dict:  # fmt: skip
    """Train a model and return its final metrics; the run folder holds every file of the run.

    With ``resume`` the run continues with the configuration saved in its checkpoint;
    ``epochs_override`` extends it, and ``requested_backbone`` (the flag the user typed)
    must match the checkpoint's architecture.
    """
    import torch

    from lunar_cli.files import write_json_atomic, write_text_atomic
    from lunar_cli.models.checkpoint import check_compatible, checkpoint_meta, load_checkpoint, save_checkpoint
    from lunar_cli.models.registry import build_model, friendly_name, normalization, smp_encoder_name
    from lunar_cli.rundir import lock_run_dir, make_run_dir
    from lunar_cli.runtime import broadcast, setup_distributed, teardown_distributed

    state = None
    if resume is not None:
        last = resolve_resume(resume)
        state = load_checkpoint(last)
        if "train_state" not in state:
            raise LunarError(f"{last}: holds weights only (a best.pt?); resume from the run's last.pt")
        check_compatible(state, requested_backbone, name=str(last))
        cfg, data, seed = _config_sections(state["train_state"]["config"])
        if epochs_override is not None:
            cfg.epochs = epochs_override

    backbone = friendly_name(cfg.backbone)
    encoder = smp_encoder_name(backbone)
    dist, dev = setup_distributed(device)
    lock = None
    try:
        torch.manual_seed(seed)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=False)
            if dev.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.benchmark = False
        elif dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        if state is not None:
            run_dir = resolve_resume(resume).parent
        elif dist.is_main:
            run_dir = make_run_dir(Path(runs_dir) / "train", cfg.name or backbone, cfg.exist_ok)
        else:
            run_dir = None
        run_dir = Path(broadcast(str(run_dir) if run_dir else None, dist))
        if dist.is_main:
            lock = lock_run_dir(run_dir)  # one training per run folder

        norm = normalization(backbone)
        on_gpu = dev.type == "cuda"
        channels_last = cfg.channels_last and on_gpu
        loaders = make_loaders(
            data_dir, data, batch_size=cfg.batch_size, normalization=norm, device=dev, seed=seed, dist=dist,
            channels_last=channels_last, progress=progress,
        )  # fmt: skip

        weights = None if state is not None else (None if cfg.encoder_weights == "none" else cfg.encoder_weights)
        if backbone == "custom":
            weights = None
        model = build_model(backbone, encoder_weights=weights).to(dev)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, cfg)
        scheduler = make_scheduler(optimizer, cfg.scheduler, cfg.epochs)
        autocast, scaler = autocast_for(dev, cfg.amp)
        criterion = make_criterion(cfg.loss, cfg.class_weights, loaders.class_pixels, dev)

        history: list[dict] = []
        best_miou, best_epoch, start_epoch, stale = -1.0, 0, 1, 0
        if state is not None:
            ts = state["train_state"]
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(ts["optimizer"])
            if scheduler is not None and ts.get("scheduler") is not None:
                scheduler.load_state_dict(ts["scheduler"])
            if scaler is not None and ts.get("scaler") is not None:
                scaler.load_state_dict(ts["scaler"])
            _set_rng_state(ts["rng"])
            history = list(ts["history"])
            best_miou, best_epoch, stale = ts["best_miou"], ts["best_epoch"], ts["stale"]
            start_epoch = ts["epoch"] + 1
            if dist.is_main and progress:
                info(f"resuming {run_dir} at epoch {start_epoch}/{cfg.epochs}")

        net = model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[dev.index] if on_gpu else None)
        if cfg.compile:
            net = torch.compile(net)

        saved_config = {"train": asdict(cfg), "data": asdict(data), "seed": seed}
        if dist.is_main and state is None:
            import yaml

            write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(
                {**saved_config, "data_dir": str(data_dir), "device": str(dev), "world_size": dist.world_size},
                sort_keys=False,
            ))  # fmt: skip
        n_params = sum(p.numel() for p in model.parameters())
        if dist.is_main and progress:
            info(
                f"training {backbone} ({n_params / 1e6:.2f}M parameters) on {dev}"
                f"{f' x{dist.world_size} processes' if dist.enabled else ''}: "
                f"{len(loaders.train.indices)} train / {len(loaders.val.indices)} val images at "
                f"{data.image_size}px, {cfg.epochs} epochs -> {run_dir}"
            )

        def meta(epoch: int) -> dict:
            return checkpoint_meta(
                backbone, encoder=encoder, image_size=data.image_size, normalization=norm, epoch=epoch,
                best_metric=("val_miou", best_miou if best_miou >= 0 else None), model_kwargs={},
            )  # fmt: skip

        def save_last(epoch: int) -> None:
            save_checkpoint(run_dir / "last.pt", model_state=_unwrap(net).state_dict(), meta=meta(epoch), extra={
                "train_state": {
                    "epoch": epoch, "backbone": backbone, "config": saved_config, "history": history,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "rng": _rng_state(), "best_miou": best_miou, "best_epoch": best_epoch, "stale": stale,
                },
            })  # fmt: skip

        if dist.is_main and state is None:
            save_last(0)  # an interrupted first epoch can still be resumed
        bar = EpochProgress(progress and dist.is_main, cfg.epochs)
        completed = start_epoch - 1  # the epoch last.pt holds
        epoch = completed
        stopped_early = False
        try:
            for epoch in range(start_epoch, cfg.epochs + 1):
                loaders.train.set_epoch(epoch)
                with bar.epoch(epoch, len(loaders.train)) as update:
                    train_loss, seen, seconds = train_one_epoch(
                        net, loaders.train, criterion, optimizer, scaler, autocast, update
                    )
                if dist.enabled:
                    from lunar_cli.runtime import all_reduce_sum

                    totals = all_reduce_sum(torch.tensor([train_loss * seen, seen], dtype=torch.float64), dist)
                    train_loss, seen = float(totals[0] / totals[1]), int(totals[1])
                val_loss, summary, _ = validate(model, loaders.val, criterion, autocast)
                lr = optimizer.param_groups[0]["lr"]
                miou = summary["miou"] if summary["miou"] is not None else float("nan")
                if scheduler is not None:
                    scheduler.step(miou) if cfg.scheduler == "plateau" else scheduler.step()
                row = {
                    "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_miou": summary["miou"],
                    "val_pixel_accuracy": summary["pixel_accuracy"],
                    **{f"iou_{n}": summary["iou"][n] for n in CLASS_NAMES},
                    "lr": lr, "epoch_seconds": seconds, "images_per_second": seen / max(seconds, 1e-9),
                }  # fmt: skip
                history.append(row)
                improved = not math.isnan(miou) and miou > best_miou
                if improved:
                    best_miou, best_epoch, stale = miou, epoch, 0
                else:
                    stale += 1
                if dist.is_main:
                    if improved:
                        save_checkpoint(run_dir / "best.pt", model_state=_unwrap(net).state_dict(), meta=meta(epoch))
                    save_last(epoch)
                    _write_history(run_dir / "history.csv", history)
                    bar.log(row)
                completed = epoch
                if cfg.patience is not None and stale >= cfg.patience:
                    stopped_early = True
                    if dist.is_main and progress:
                        info(f"no better val mIoU for {stale} epochs: stopping early (--patience {cfg.patience})")
                    break
        except KeyboardInterrupt:
            bar.close()
            raise LunarError(
                f"interrupted in epoch {completed + 1}: {run_dir / 'last.pt'} holds epoch {completed}; "
                f"continue with: lunar train --resume {run_dir}",
                exit_code=130,
            ) from None
        bar.close()

        result = {
            "run_dir": str(run_dir), "backbone": backbone, "encoder": encoder, "parameters": n_params,
            "device": str(dev), "world_size": dist.world_size, "epochs_run": len(history),
            "stopped_early": stopped_early, "best_epoch": best_epoch,
            "best_val_miou": best_miou if best_miou >= 0 else None,
            "best": next((r for r in history if r["epoch"] == best_epoch), None),
            "last": history[-1] if history else None,
            "train_seconds": sum(r["epoch_seconds"] for r in history),
            "files": {n: str(run_dir / n) for n in ("best.pt", "last.pt", "history.csv", "curves.png", "metrics.json")},
        }  # fmt: skip
        if dist.is_main:
            from lunar_cli.plots import plot_training_curves

            if history:
                plot_training_curves(run_dir / "curves.png", history, f"{backbone}: loss and IoU per epoch")
            write_json_atomic(run_dir / "metrics.json", result)
        return result
    finally:
        if lock is not None:
            lock.close()
        teardown_distributed(dist)
