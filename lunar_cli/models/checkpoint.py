"""Self-describing checkpoints: written atomically, loaded without running any pickle code.

A checkpoint is a dict of tensors and plain values::

    {"meta": {...}, "model": state_dict, "optimizer": ..., "scheduler": ..., ...}

``meta`` (see ``checkpoint_meta``) carries everything needed to rebuild the model
(backbone, smp encoder, model options, classes, input size, normalisation), so
``lunar predict`` and ``lunar evaluate`` need nothing but the file. Loading uses
``torch.load(weights_only=True)``: a file holding arbitrary Python objects is refused.
"""

from __future__ import annotations

import collections
import errno
import os
import pickle
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lunar_cli import __version__
from lunar_cli.classes import CLASSES, NUM_CLASSES
from lunar_cli.console import LunarError, first_line
from lunar_cli.files import atomic_path
from lunar_cli.frames import FrameSize
from lunar_cli.model_spec import check_numbers
from lunar_cli.models.registry import build_model, friendly_name, smp_encoder_name

if TYPE_CHECKING:
    import torch

FORMAT = "lunar-checkpoint"
FORMAT_VERSION = 2  # 2: frame_size (scale or square) replaces the squashed image_size of 1
# Meta keys every checkpoint must have, and the types they must be.
_REQUIRED_META = {"backbone": str, "num_classes": int, "model_kwargs": dict, "normalization": dict}
# Prefixes that torch.compile and DataParallel add to state-dict keys.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def checkpoint_meta(
    backbone: str,
    *,
    encoder: str | None = None,
    frame_size: "FrameSize",
    crop_size: int | None = None,
    normalization: dict[str, list[float]],
    epoch: int,
    best_metric: tuple[str, float | None] | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the ``meta`` dict describing a model, for ``save_checkpoint``.

    ``encoder`` defaults to the smp encoder of ``backbone``; ``best_metric`` is
    (name, value), e.g. ("val_miou", 0.71); ``frame_size`` is how frames were sized in
    training (a share of their own size, or a square), which is how photos are fed later;
    ``crop_size`` the training crop (the window for tiled prediction).
    """
    import torch  # heavy: only when a checkpoint is read or written (never on the ONNX path)


    resolved = smp_encoder_name(backbone)
    if encoder is not None and encoder != resolved:
        raise ValueError(f"encoder {encoder!r} does not match backbone {backbone!r} (which uses {resolved!r})")
    metric_name, metric_value = best_metric if best_metric is not None else (None, None)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": friendly_name(backbone),
        "encoder": resolved,
        "model_kwargs": dict(model_kwargs or {}),
        "num_classes": NUM_CLASSES,
        "classes": [{"index": c.index, "name": c.name, "rgb": list(c.rgb)} for c in CLASSES],
        "frame_size": frame_size.as_meta(),
        "crop_size": None if crop_size is None else int(crop_size),
        "normalization": {
            "mean": [float(v) for v in normalization["mean"]],
            "std": [float(v) for v in normalization["std"]],
        },
        "epoch": int(epoch),
        "best_metric": {
            "name": metric_name,
            "value": None if metric_value is None else float(metric_value),
        },
        "lunar_version": __version__,
        "torch_version": str(torch.__version__),  # str(): TorchVersion itself is not loadable
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless ``value`` holds only what ``weights_only=True`` can load."""
    import torch  # heavy: only when a checkpoint is read or written (never on the ONNX path)

    # Exact types: numpy scalars subclass float but torch refuses to load them.
    if type(value) in (str, int, float, bool, type(None), bytes) or isinstance(value, torch.Tensor):
        return
    if type(value) in (torch.dtype, torch.device, torch.Size):
        return
    if type(value) in (dict, collections.OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"checkpoint key {where}[{key!r}] is a {type(key).__name__}; use str or int keys")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise TypeError(
        f"checkpoint value {where} is a {type(value).__module__}.{type(value).__name__}; only tensors, "
        "numbers, strings, None, lists and dicts can be saved (convert numpy values with .tolist() or float())"
    )


def _strip_wrapper_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Return ``state`` without the key prefix torch.compile/DataParallel add, if all keys have it."""
    for prefix in _WRAPPER_PREFIXES:
        if state and all(str(k).startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items()}
    return state


def save_checkpoint(path: Path, *, model_state: dict, meta: dict, extra: dict | None = None) -> None:
    """Write a checkpoint atomically: weights + meta (+ optimizer/scheduler/scaler/rng/history in extra).

    The file appears whole or not at all; a failed write (disk full included) leaves
    any previous file at ``path`` untouched and raises LunarError.
    """
    import torch  # heavy: only when a checkpoint is read or written (never on the ONNX path)


    path = Path(path)
    if meta.get("format") != FORMAT:
        raise ValueError("meta must come from checkpoint_meta()")
    extra = dict(extra or {})
    clash = sorted({"meta", "model"} & set(extra))
    if clash:
        raise ValueError(f"extra may not use the reserved key(s) {clash}")
    payload = {"meta": meta, "model": _strip_wrapper_prefix(dict(model_state)), **extra}
    _check_plain(payload, "checkpoint")

    with atomic_path(path) as tmp:
        try:
            # A Python file object (not a path) makes a full disk raise OSError(ENOSPC)
            # instead of an opaque error from torch's C++ writer.
            with open(tmp, "wb") as f:
                torch.save(payload, f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise LunarError(
                    f"{path}: disk full while saving the checkpoint; nothing was lost (any previous "
                    f"{path.name} is unchanged); free some space and run again"
                ) from exc
            raise LunarError(
                f"{path}: could not save the checkpoint ({exc.strerror or exc}); any previous {path.name} is unchanged"
            ) from exc
        except RuntimeError as exc:
            raise LunarError(
                f"{path}: could not save the checkpoint ({first_line(exc, 120)}); "
                f"any previous {path.name} is unchanged"
            ) from exc


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint with torch.load(weights_only=True); refuse anything that is not a lunar checkpoint.

    ``mmap`` maps the tensors instead of reading them (cheap when only the metadata is needed).

    Returns the checkpoint dict (``meta``, ``model`` and whatever extra was saved).
    Every problem is a one-line LunarError naming the file.
    """
    import torch  # heavy: only when a checkpoint is read or written (never on the ONNX path)

    path = Path(path)
    if not path.exists():
        raise LunarError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise LunarError(f"{path}: is a directory; give a checkpoint file such as runs/train/exp/weights/best.pt")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise LunarError(f"{path}: cannot read the checkpoint ({exc.strerror})") from exc
    if not head:
        raise LunarError(f"{path}: checkpoint file is empty (an interrupted copy or save?)")
    # Zip (torch >= 1.6) or a pickle stream (legacy torch format); anything else is not ours.
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise LunarError(f"{path}: not a lunar checkpoint (not a PyTorch file)")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol warnings for foreign pickles
            zipped = head.startswith(b"PK\x03\x04")  # only the zip format can be memory-mapped
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise LunarError(
                f"{path}: refused to load: it holds Python objects, not only tensors and plain values "
                "(loading it could run code); lunar loads only checkpoints written by lunar"
            ) from exc
        raise LunarError(f"{path}: not a lunar checkpoint (unreadable pickle data)") from exc
    except (RuntimeError, EOFError, ValueError, KeyError, OSError) as exc:
        if "TorchScript" in str(exc):  # torch recognises its own TorchScript archives
            raise LunarError(
                f"{path}: a TorchScript export (lunar export --format torchscript), for C++ and mobile apps; lunar "
                "runs checkpoints (best.pt of a run) or ONNX exports (lunar export --format onnx)"
            ) from exc
        raise LunarError(f"{path}: corrupt or truncated checkpoint (cannot read it as a PyTorch file)") from exc

    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("meta"), dict):
        bare = isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values())
        what = "a bare state dict" if bare else "no lunar meta"
        raise LunarError(f"{path}: not a lunar checkpoint ({what}); use a file written by lunar train")
    meta = ckpt["meta"]
    if meta.get("format") != FORMAT:
        raise LunarError(f"{path}: not a lunar checkpoint (format marker {meta.get('format')!r})")
    version = meta.get("format_version")
    if type(version) is not int:
        raise LunarError(f"{path}: damaged lunar checkpoint (format version {version!r})")
    if version > FORMAT_VERSION:
        raise LunarError(
            f"{path}: written by a newer lunar (checkpoint format {version}; this lunar reads up to "
            f"{FORMAT_VERSION}); upgrade lunar"
        )
    for key, kind in _REQUIRED_META.items():
        if not isinstance(meta.get(key), kind):
            raise LunarError(f"{path}: damaged lunar checkpoint (meta {key!r} missing or not a {kind.__name__})")
    model = ckpt.get("model")
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise LunarError(f"{path}: damaged lunar checkpoint (no model weights)")
    if meta["backbone"] == "custom":
        from lunar_cli.models.unet import STUDY_OPTIONS  # torch is loaded already: it read the file

        meta["model_kwargs"] = {**STUDY_OPTIONS, **meta["model_kwargs"]}  # lunar 0.1 named no options
    check_numbers(meta, str(path))
    return ckpt


def check_finite_weights(weights: dict[str, "torch.Tensor"], name: str) -> None:
    """Refuse, in one line, weights holding NaN or infinity (a run that diverged, or a damaged file)."""
    import torch  # heavy: only when a checkpoint is read or written (never on the ONNX path)

    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise LunarError(f"{name}: {len(bad)} weight tensor(s) hold NaN or infinity (e.g. {bad[0]!r}): the run "
                         "diverged or the file is damaged; train again with a lower --lr")  # fmt: skip


def build_from_checkpoint(ckpt: dict[str, Any], name: str = "checkpoint") -> "torch.nn.Module":
    """Return the model described by ``ckpt["meta"]`` with its weights loaded, in eval mode.

    Never downloads anything: the encoder is built randomly, then overwritten.
    ``name`` (e.g. the file path) is used in error messages.
    """
    meta = ckpt["meta"]
    model = build_model(
        meta.get("encoder") or meta["backbone"],
        num_classes=meta["num_classes"],
        encoder_weights=None,
        **meta["model_kwargs"],
    )
    load_weights(model, ckpt["model"], meta["backbone"], name)
    return model.eval()


def load_weights(model: "torch.nn.Module", weights: dict, backbone: str, name: str) -> None:
    """Load a checkpoint's finite ``weights`` into ``model`` (strict), or raise one line saying how they do not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    wrong = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        example = (wrong or missing or unexpected)[0]
        shapes = f": {tuple(weights[example].shape)} for {tuple(expected[example].shape)}" if wrong else ""
        raise LunarError(
            f"{name}: weights do not fit a {backbone} model ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(wrong)} wrong-shape keys, e.g. {example!r}{shapes}); the file is damaged, was edited, or was "
            "trained for other classes"
        )
    check_finite_weights(weights, name)
    model.load_state_dict(weights, strict=True)


def describe_architecture(backbone: str, model_kwargs: dict) -> str:
    """Return an architecture in words: "custom U-Net (width 16, depth 4)" or the smp backbone's name."""
    if backbone != "custom":
        return f"{backbone} U-Net"
    return f"custom U-Net (width {model_kwargs['base_width']}, depth {model_kwargs['depth']})"
