"""Backbone name -> model: the custom U-Net, or a segmentation_models_pytorch Unet.

The four names the study compared, and EfficientNet-Lite0, are in ``BACKBONES``; any
other smp encoder name (``resnet34``, ``efficientnet-b0``, ``tu-<timm model>``...) works
as well. Encoder weights are ``None`` (random init), ``"imagenet"`` (downloaded by smp,
or for EfficientNet-Lite0 read from a Python package: see ``packaged_weights``) or a
path to a local weights file, loaded offline into the encoder. Without a network,
downloadable weights come from the Hugging Face cache or fail in seconds with one line.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import pickle
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lunar_cli.classes import NUM_CLASSES
from lunar_cli.console import LunarError, first_line
from lunar_cli.models.packaged_weights import has_packaged_imagenet, imagenet_classifier_state, load_packaged_imagenet

if TYPE_CHECKING:
    import torch

# Friendly name -> smp encoder name (None: our own U-Net, no encoder).
BACKBONES: dict[str, str | None] = {
    "custom": None,
    "vgg11": "vgg11",
    "resnet18": "resnet18",
    # The native timm port; smp 0.6 removed its own "timm-mobilenetv3_large_100".
    "mobilenet_v3_large": "tu-mobilenetv3_large_100",
    # Its ImageNet weights ship in a pip package, so "imagenet" works with no network.
    "efficientnet_lite0": "tu-tf_efficientnet_lite0",
}

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# Options the custom U-Net takes besides num_classes.
CUSTOM_OPTIONS = ("in_channels", "base_width", "depth", "dropout")
# smp.Unet arguments this module sets itself, so callers may not pass them.
_SMP_RESERVED = ("encoder_name", "encoder_weights", "classes", "activation", "kwargs")
# How long the Hugging Face hub gets to answer before this machine counts as offline.
HUB_PROBE_SECONDS = 3.0


def _smp_encoder_names() -> list[str]:
    """Return the encoder names smp knows (not counting ``tu-`` timm ones)."""
    import segmentation_models_pytorch as smp  # heavy: only when a network is built or its weights loaded

    return list(smp.encoders.get_encoder_names())


def smp_encoder_name(backbone: str) -> str | None:
    """Return the smp encoder name for ``backbone`` (None for the custom U-Net).

    ``backbone`` is a friendly name (``mobilenet_v3_large``), an smp encoder name
    (``resnet34``) or ``tu-<timm model>``. Anything else is a LunarError with suggestions.
    """
    key = str(backbone).strip().lower()
    for candidate in (key, key.replace("-", "_")):
        if candidate in BACKBONES:
            return BACKBONES[candidate]
    if key.startswith("tu-"):
        import timm  # heavy: only when a network is built or its weights loaded

        if timm.models.is_model(key[3:]):
            return key
        raise LunarError(
            f"unknown backbone {backbone!r}: timm has no model {key[3:]!r}; "
            "see timm.list_models() for the names after 'tu-'"
        )
    smp_names = _smp_encoder_names()
    if key in smp_names:
        return key
    close = difflib.get_close_matches(key, list(BACKBONES) + smp_names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise LunarError(
        f"unknown backbone {backbone!r}: {hint}choose one of {', '.join(BACKBONES)}, "
        "or any segmentation_models_pytorch encoder name (e.g. resnet34, tu-<timm model>)"
    )


def friendly_name(backbone: str) -> str:
    """Return the name to record for ``backbone``: its friendly name when it has one."""
    encoder = smp_encoder_name(backbone)
    for name, enc in BACKBONES.items():
        if enc == encoder:
            return name
    return str(encoder)


def normalization(backbone: str) -> dict[str, list[float]]:
    """Return the input normalisation ``{"mean": [r, g, b], "std": [r, g, b]}`` for ``backbone``.

    Images are scaled to 0-1 first; then ``(x - mean) / std``. The custom U-Net takes
    plain 0-1 input; smp encoders take the statistics they were pretrained with.
    """
    encoder = smp_encoder_name(backbone)
    if encoder is None:
        return {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    if encoder.startswith("tu-"):
        import timm  # heavy: only when a network is built or its weights loaded

        name = encoder[3:]
        if timm.models.is_model_pretrained(name.split(".")[0]):
            cfg = timm.models.get_pretrained_cfg(name)
            if cfg is not None:
                return {"mean": [float(v) for v in cfg.mean], "std": [float(v) for v in cfg.std]}
    # smp's own encoders keep their statistics on the Hugging Face hub; all of the
    # ImageNet ones use these, and reading them here must not need a network.
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def _weights_choice(encoder_weights: str | Path | None) -> str | Path | None:
    """Return None, an smp weights name such as ``"imagenet"``, or a local Path."""
    if encoder_weights is None or isinstance(encoder_weights, Path):
        return encoder_weights
    text = str(encoder_weights).strip()
    if text.lower() in ("", "none", "random"):
        return None
    if text.lower() in ("imagenet", "ssl", "swsl", "instagram", "advprop", "noisy-student"):
        return text.lower()
    return Path(text).expanduser()


def build_model(
    backbone: str,
    *,
    num_classes: int = NUM_CLASSES,
    encoder_weights: str | Path | None = None,
    **kwargs: Any,
) -> "torch.nn.Module":
    """Return a fresh segmentation model for ``backbone`` giving logits (N, num_classes, H, W).

    ``encoder_weights``: None or "none" (random init), "imagenet" (smp downloads it; for
    efficientnet_lite0 it ships in a package), or a path to a local encoder weights file. ``kwargs`` go to the model: ``base_width``,
    ``depth``, ``dropout``, ``in_channels`` for custom; ``smp.Unet`` arguments otherwise.
    """
    encoder = smp_encoder_name(backbone)
    weights = _weights_choice(encoder_weights)
    if encoder is None:
        return _build_custom(num_classes, weights, kwargs)
    return _build_smp_unet(encoder, num_classes, weights, kwargs)


def _build_custom(num_classes: int, weights: str | Path | None, kwargs: dict[str, Any]) -> "torch.nn.Module":
    """Return the custom U-Net; it has no pretrained encoder, so weights must be None."""
    from lunar_cli.models.unet import UNet  # torch: the registry itself is imported on torch-free paths too

    if weights is not None:
        raise LunarError(
            f"backbone custom has no pretrained encoder (got encoder weights {str(weights)!r}); "
            "use --encoder-weights none"
        )
    unknown = sorted(set(kwargs) - set(CUSTOM_OPTIONS))
    if unknown:
        raise LunarError(
            f"backbone custom: unknown model option(s) {', '.join(unknown)}; "
            f"it takes {', '.join(CUSTOM_OPTIONS)}"
        )
    return UNet(num_classes=num_classes, **kwargs)


def _build_smp_unet(
    encoder: str, num_classes: int, weights: str | Path | None, kwargs: dict[str, Any]
) -> "torch.nn.Module":
    """Return ``smp.Unet`` on ``encoder``, with weights random, downloaded, packaged or from a file."""
    import segmentation_models_pytorch as smp  # heavy: only when a network is built or its weights loaded

    if not encoder.startswith("tu-"):
        # smp silently ignores unknown options for its own encoders; catch typos here.
        allowed = [p for p in inspect.signature(smp.Unet).parameters if p not in _SMP_RESERVED]
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise LunarError(
                f"backbone {encoder}: unknown model option(s) {', '.join(unknown)}; "
                f"smp.Unet takes {', '.join(allowed)}"
            )
    download: str | bool | None = None
    packaged = None  # the packaged ImageNet weights, read before the network is built
    if weights == "imagenet" and has_packaged_imagenet(encoder):
        packaged = imagenet_classifier_state(encoder)  # no hub involved: nothing to probe
    elif isinstance(weights, str):
        if encoder.startswith("tu-"):
            if weights != "imagenet":
                raise LunarError(f"encoder {encoder}: only 'imagenet' weights can be downloaded, not {weights!r}")
            download = True  # timm picks the model's default pretrained tag
        else:
            available = list(smp.encoders.encoders[encoder]["pretrained_settings"])
            if weights not in available:
                raise LunarError(
                    f"encoder {encoder} has no {weights!r} weights; choose none, "
                    f"{', '.join(available) or 'a local file'} or a path to a weights file"
                )
            download = weights
    offline = _hub_unreachable() if download else None
    if offline and isinstance(download, str) and not _in_hub_cache(smp.encoders.encoders[encoder]["pretrained_settings"][download]):
        # Say so before building the network: a VGG's random init alone takes a second here.
        raise LunarError(_no_weights_message(weights, encoder, offline))
    try:
        with _hub_offline(offline is not None):
            model = smp.Unet(
                encoder_name=encoder, encoder_weights=download, classes=num_classes, activation=None, **kwargs
            )
    except TypeError as exc:
        raise LunarError(f"backbone {encoder}: bad model option ({exc})") from exc
    except (OSError, RuntimeError) as exc:
        # Hugging Face hub errors (offline, DNS, HTTP) are all OSError subclasses;
        # RuntimeError covers a download that arrived broken.
        if download is None:
            raise
        raise LunarError(_no_weights_message(weights, encoder, offline or exc)) from exc
    if encoder.startswith("tu-"):
        from lunar_cli.models.same_padding import fix_same_padding  # torch: an nn.Module class, built only here

        # TensorFlow ports pad "same" by the input size; constant for the sizes a U-Net takes.
        fix_same_padding(model.encoder, model.encoder.output_stride, kwargs.get("in_channels", 3))
    if packaged is not None:
        load_packaged_imagenet(model.encoder, encoder, packaged)
    if isinstance(weights, Path):
        load_encoder_weights(model.encoder, weights, encoder)
    return model


def _no_weights_message(weights: str, encoder: str, why: str | BaseException) -> str:
    """Return the one-line error for downloadable weights that could not be had (``why``: offline reason or the error)."""
    if isinstance(why, str):
        reason = f": {why}, and they are not in the Hugging Face cache;"
    else:
        reason = f" ({type(why).__name__}): no network?"
    return (f"could not download {weights} weights for {encoder}{reason} "
            "use --encoder-weights none or a local weights file (--encoder-weights PATH)")  # fmt: skip


def _in_hub_cache(settings: dict) -> bool:
    """Return whether the hub cache holds a snapshot of the repo revision in smp's ``settings`` (repo_id, revision).

    Settings without both (another smp version's layout) count as cached: smp itself then decides.
    """
    from huggingface_hub import constants  # heavy: only when a network is built or its weights loaded

    repo_id, revision = settings.get("repo_id"), settings.get("revision")
    if not repo_id or not revision:
        return True
    return (Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--")) / "snapshots" / revision).is_dir()


def _hub_unreachable() -> str | None:
    """Return why the Hugging Face hub cannot be reached now (None when it answers).

    Offline, the hub's own download retries a failed request five times with backoff
    and logs each try: half a minute or more of noise before the error. One HEAD request
    to its endpoint (``HF_ENDPOINT``) through its own HTTP client, so proxies and
    certificates are the ones a download would use, tells in a few seconds. Any HTTP
    answer counts as reachable. A name lookup ignores the request's timeout, so the
    probe runs in a daemon thread that is given up on after ``HUB_PROBE_SECONDS``.
    """
    from huggingface_hub import constants  # heavy: only when a network is built or its weights loaded
    from huggingface_hub.utils import get_session  # heavy: only when a network is built or its weights loaded

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    outcome: list[str | None] = []  # the probe's answer: None (reachable) or why not

    def probe() -> None:
        try:
            get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_SECONDS)
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 - whatever stops the request means "unreachable"
            outcome.append(f"{constants.ENDPOINT} unreachable: {type(exc).__name__}")

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(HUB_PROBE_SECONDS)
    return outcome[0] if outcome else f"{constants.ENDPOINT} did not answer in {HUB_PROBE_SECONDS:g} s"


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Run the block with the hub in offline mode when ``offline``: cached files only, no retries."""
    from huggingface_hub import constants  # heavy: only when a network is built or its weights loaded

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def load_encoder_weights(encoder_module: "torch.nn.Module", path: Path, encoder: str = "encoder") -> None:
    """Load a local weights file into ``encoder_module`` (offline, tensors only).

    Accepts a ``.safetensors`` or torch file holding a bare encoder state dict, a full
    model state dict with ``encoder.`` prefixes, or a lunar checkpoint (its ``model``).
    """
    import torch  # heavy: only when a network is built or its weights loaded

    path = Path(path)
    if not path.is_file():
        raise LunarError(
            f"encoder weights {path}: no such file; use --encoder-weights none, imagenet or a path to a weights file"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # heavy: only when a network is built or its weights loaded

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise LunarError(f"encoder weights {path}: not a readable weights file ({first_line(exc, 120)})") from exc
    if isinstance(state, dict):
        for wrapper in ("model", "state_dict"):
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LunarError(f"encoder weights {path}: expected a state dict of tensors")
    if any(str(k).startswith("encoder.") for k in state):
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}

    expected = encoder_module.state_dict()
    try:
        encoder_module.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        example = (missing or unexpected or wrong or ["?"])[0]
        raise LunarError(
            f"encoder weights {path}: do not fit the {encoder} encoder ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} wrong-shape keys, e.g. {example!r}); "
            "was the file saved from another encoder?"
        ) from exc
