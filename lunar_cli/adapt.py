"""lunar adapt: a trained model adapted, without labels, to a folder of the user's own photos; a new run says what changed.

Reads top to bottom: the source model (``model_files.find_model``, a PyTorch checkpoint)
and the photos (``predict_files.collect_inputs`` and ``read_photo``: unreadable files are
warned about and skipped; grayscale, RGBA and 16-bit photos converted, said once per
kind; photos of several sizes are each kept at their own size) at the model's scale ->
``adapt_steps.reestimate_batchnorm`` (modes ``bn``, ``bn+self-train``) ->
``adapt_steps.self_train`` (``self-train``, ``bn+self-train``) -> what changed, measured as ``lunar predict`` measures a photo
(``postprocess.finish`` at each photo's own size: mean uncertainty, class shares, the
share of pixels whose class changed) -> a new run ``<runs>/adapt/<name>``: ``best.pt``
(a normal lunar checkpoint whose meta says how it was adapted) and ``adapt.json``.
Nothing is written until every step has succeeded.

Calibration. The temperature was fitted on the source's validation split (synthetic)
and refitting it needs labels, so it is kept, and the meta says so. The
out-of-distribution threshold needs none: it is refitted as the 99th percentile of the
adapted model's per-photo mean uncertainty over the adaptation photos, so a photo is
flagged when it is less certain than 99% of the photos the model was adapted to (the
source's threshold is kept beside it in the meta).
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lunar_cli.adapt_steps import batchnorm_layers, reestimate_batchnorm, same_size_batches, self_train, stacked
from lunar_cli.calibration import OOD_QUANTILE
from lunar_cli.classes import CLASS_NAMES
from lunar_cli.config import Config
from lunar_cli.console import LunarError, info, track, warn
from lunar_cli.files import write_json_atomic
from lunar_cli.frames import MULTIPLE, resize_image
from lunar_cli.model_files import describe_choice, find_model
from lunar_cli.models.builtin import NAME as BUILTIN
from lunar_cli.models.checkpoint import save_checkpoint
from lunar_cli.postprocess import finish
from lunar_cli.predict_files import collect_inputs, read_photo
from lunar_cli.rundir import make_run_dir
from lunar_cli.runtime import select_device
from lunar_cli.torch_model import PRECISION_NAMES, TorchModel, frame_logits, load_model
from lunar_cli.video import is_video


@dataclass
class Target:
    """The photos a model is adapted to: each at the model's scale, with its own size and name."""
    frames: list[np.ndarray]  # uint8 (h, w, 3) at the model's scale
    sizes: list[tuple[int, int]]  # each photo's own (height, width)
    paths: list[str]
    skipped: list[dict[str, str]]  # inputs that could not be used: {"input", "reason"}
    converted: dict[str, int]  # how many photos were converted, by what ("grayscale", "RGBA (alpha dropped)", ...)


def read_target(photos: Path, model: TorchModel, limit: int | None, seed: int) -> Target:
    """Return the readable photos of ``photos`` (a folder, a file or a glob) at the model's scale; bad files warned about.

    ``limit`` keeps a seeded random subset of that many. No readable photo is a LunarError.
    """
    paths, skipped, _ = collect_inputs([str(photos)])
    videos = [p for p in paths if is_video(p)]
    if videos:  # adapting learns from still frames; a video's frames would need sampling and memory bounds
        skipped += [{"input": str(v), "reason": f"{v}: a video; adapt reads photos (extract frames first)"} for v in videos]
        paths = [p for p in paths if not is_video(p)]
    if not paths and skipped and not videos:  # the folder itself is missing, or cannot be looked at
        raise LunarError(f"{skipped[0]['reason']}; give a folder of photos to adapt to")
    if limit is not None and len(paths) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(paths), size=limit, replace=False))
        paths = [paths[i] for i in keep]
    frames, sizes, used, converted = [], [], [], Counter()
    for path in paths:
        try:
            photo, note = read_photo(path)
        except LunarError as exc:
            skipped.append({"input": str(path), "reason": str(exc)})
            continue
        if note:
            converted.update(note.split(" ", 1) if note.startswith("16-bit ") else [note])
        frames.append(resize_image(photo, *model.spec.frame_size.of(*photo.shape[:2])))
        sizes.append(photo.shape[:2])
        used.append(str(path))
    for problem in skipped:
        warn(f"{problem['reason']} (skipped)")
    if not frames:
        why = f"{len(skipped)} file(s) there could not be read" if skipped else "no image files there"
        raise LunarError(f"{photos}: no readable photos to adapt to ({why}); give a folder of .png, .jpg or .tif photos")
    for kind, n in converted.items():
        warn(f"{n} {kind} photo(s) converted to 8-bit RGB")
    shapes = Counter(f.shape[:2] for f in frames)
    if len(shapes) > 1:
        info(f"{len(frames)} photos of {len(shapes)} sizes: each is used at its own size (BatchNorm statistics "
             "are measured in batches of one size, crops are drawn from each photo)")  # fmt: skip
    return Target(frames, sizes, used, skipped, dict(converted))


def describe(models: dict[str, TorchModel], target: Target, batch_size: int, progress: bool) -> dict[str, dict]:
    """Return, for each model (the source first), what it says of the photos, at each photo's own size.

    Each record: mean_uncertainty (mean over photos of their mean normalised entropy, as
    ``lunar predict --uncertainty`` reports it), photo_uncertainty (per photo),
    class_fractions (of all pixels), changed_from_source (share of pixels whose class
    differs from the first model's).
    """
    names = list(models)
    counts = {n: np.zeros(len(CLASS_NAMES), np.int64) for n in names}
    changed = dict.fromkeys(names, 0)
    unsure: dict[str, list[float]] = {n: [0.0] * len(target.frames) for n in names}
    keys = [(*f.shape, *s) for f, s in zip(target.frames, target.sizes)]
    batches = same_size_batches(keys, batch_size)
    for batch in track(batches, "measuring", total=len(batches), quiet=not progress):
        height, width = target.sizes[batch[0]]
        first = None
        for name, model in models.items():
            logits = frame_logits(model, stacked(model, target.frames, batch))
            out = finish([logits], height, width, model.spec.temperature, uncertainty=True)
            counts[name] += torch.bincount(out.classes.flatten(), minlength=len(CLASS_NAMES)).cpu().numpy()
            for i, value in zip(batch, out.uncertainty.flatten(1).mean(dim=1).tolist()):
                unsure[name][i] = value
            first = out.classes if first is None else first
            changed[name] += int((out.classes != first).sum())
    pixels = sum(h * w for h, w in target.sizes)
    return {n: {"mean_uncertainty": float(np.mean(unsure[n])), "photo_uncertainty": unsure[n],
                "class_fractions": {c: float(v) / pixels for c, v in zip(CLASS_NAMES, counts[n])},
                "changed_from_source": changed[n] / pixels} for n in names}  # fmt: skip


def default_crop(model: TorchModel, target: Target, asked: int | None) -> int:
    """Return the self-training crop side: the one asked for, else the model's training crop, no larger than the photos."""
    if asked is not None:
        return asked
    shortest = min(min(f.shape[:2]) for f in target.frames)
    return max(MULTIPLE, min(model.spec.window, shortest // MULTIPLE * MULTIPLE))


def source_name(path: Path, how: str) -> str:
    """Return the short name of the source model for the new run's name: builtin, its run folder's or its file's."""
    if how == "builtin":
        return BUILTIN
    return path.parent.name if path.name in ("best.pt", "last.pt") and path.parent.name else path.stem


def adapt_command(cfg: Config, run: Path | str, photos_dir: Path, progress: bool = True) -> dict:
    """Do what ``lunar adapt`` was asked: ``run``'s model adapted to the photos in ``photos_dir``, written as a new run.

    Returns what changed (mean uncertainty, class shares and changed pixels per stage),
    what was done (BN layers, steps, pseudo-labelled share), the new run's files.
    """
    options, started = cfg.adapt, time.perf_counter()
    path, how = find_model(run, cfg.runs_dir)
    if path.suffix.lower() == ".onnx":
        raise LunarError(f"{path}: adapt changes a PyTorch checkpoint, not an ONNX export; give the run or .pt it was "
                         "exported from (then export the adapted run)")  # fmt: skip
    if (said := describe_choice(path, how, cfg.runs_dir)) is not None:
        info(said)
    torch.manual_seed(cfg.seed)
    source = load_model(path, select_device(cfg.device), cfg.amp, cfg.channels_last)
    target = read_target(photos_dir, source, options.limit, cfg.seed)
    say = info if progress else (lambda _: None)
    say(f"adapting {path} ({source.spec.backbone}; {source.precision.label}) to {len(target.frames)} photos, "
        f"mode {options.mode}")  # fmt: skip
    models = {"source": dataclasses.replace(source, net=copy.deepcopy(source.net))}
    adapted, training = source, None  # the source's own network changes from here on (its copy is kept above)
    bn_layers = 0
    if options.mode != "self-train":
        bn_layers = batchnorm_stage(adapted, target, options.mode, options.batch_size, say)
    if bn_layers:
        models["bn"] = dataclasses.replace(adapted, net=copy.deepcopy(adapted.net))
    if options.mode != "bn":
        crop = default_crop(adapted, target, options.crop_size)
        training = self_train(adapted, target.frames, options, cfg.data.augment, cfg.seed, crop, say)
        models["self-train"] = adapted
    stages = describe(models, target, options.batch_size, progress)
    threshold = float(np.quantile(stages[list(models)[-1]]["photo_uncertainty"], OOD_QUANTILE))
    record = {
        "source": str(path), "mode": options.mode, "photos": len(target.frames), "photos_dir": str(photos_dir),
        "skipped": target.skipped, "converted": target.converted, "bn_layers": bn_layers,
        "steps": training.steps if training else 0,
        "pseudo_labelled_share": training.labelled_share if training else None,
        "self_train_loss": training.losses if training else None,
        "settings": {**asdict(options), "crop_size": crop if training else None, "seed": cfg.seed,
                     "augment": asdict(cfg.data.augment) if training else None},
        "stages": stages, "device": str(source.device), "precision": PRECISION_NAMES[source.precision.dtype],
    }  # fmt: skip
    calibration = adapted_calibration(source.spec.calibration, threshold, len(target.frames))
    files = write_run(cfg, options.name or f"{source_name(path, how)}-{options.mode}", adapted, record, calibration)
    return {**record, **files, "calibration": calibration, "seconds": time.perf_counter() - started}


def batchnorm_stage(model: TorchModel, target: Target, mode: str, batch_size: int, say) -> int:
    """Re-estimate the BatchNorm statistics of ``model`` on the photos; return how many layers (0: none to re-estimate).

    A network without BatchNorm is an error in mode bn and a stated fallback (self-training
    alone) in mode bn+self-train; an smp encoder without it (VGG) is said: only the decoder's adapt.
    """
    if not batchnorm_layers(model.net):
        if mode == "bn":
            reestimate_batchnorm(model, target.frames, batch_size)  # raises: no BatchNorm to re-estimate
        warn(f"{model.spec.backbone}: no BatchNorm layers; self-training only")
        return 0
    layers = reestimate_batchnorm(model, target.frames, batch_size)
    encoder = getattr(model.net, "encoder", None)
    if isinstance(encoder, torch.nn.Module) and not batchnorm_layers(encoder):
        warn(f"{model.spec.backbone}: its encoder has no BatchNorm; only the {layers} layers of the decoder were "
             "re-estimated")  # fmt: skip
    else:
        say(f"re-estimated the statistics of {layers} BatchNorm layers on {len(target.frames)} photos")
    return layers


def adapted_calibration(source: dict, ood_threshold: float, photos: int) -> dict:
    """Return the adapted model's calibration: the source's temperature kept (said), the OOD threshold refitted on the photos."""
    return {
        **source, "ood_threshold": ood_threshold, "ood_threshold_source": source.get("ood_threshold"),
        "ood_fitted_on": f"the {photos} adaptation photos ({OOD_QUANTILE:.0%} of their mean uncertainties are below it)",
        "temperature_fitted_on": "the source model's val split, before adaptation: kept (refitting it needs labels)",
    }  # fmt: skip


def write_run(cfg: Config, name: str, model: TorchModel, record: dict, calibration: dict) -> dict[str, str]:
    """Write the new run ``<runs>/adapt/<name>N``: adapt.json, then best.pt; on any failure remove the folder whole."""
    meta = {k: v for k, v in model.spec.meta.items() if k != "weights_stored_as"}  # saved in fp32 from here on
    adapted = {k: record[k] for k in ("source", "mode", "photos", "photos_dir", "bn_layers", "steps", "settings")}
    meta.update(calibration=calibration, best_metric={"name": None, "value": None},
                adapted={**adapted, "source_best_metric": meta.get("best_metric")},
                created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))  # fmt: skip
    run_dir = make_run_dir(Path(cfg.runs_dir) / "adapt", name)
    try:
        write_json_atomic(run_dir / "adapt.json", {**record, "calibration": calibration})
        state = {k: v.detach().cpu() for k, v in model.net.state_dict().items()}
        save_checkpoint(run_dir / "best.pt", model_state=state, meta=meta)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # a folder of ours, made above: never half a run
        raise
    return {"run_dir": str(run_dir), "model": str(run_dir / "best.pt"), "record": str(run_dir / "adapt.json")}
