"""Models: every backbone builds and trains a step; names, weights and normalisation."""

from __future__ import annotations

import errno
import urllib.error

import pytest
import torch

from lunar_cli.console import LunarError
from lunar_cli.models.registry import (
    BACKBONES,
    build_model,
    list_backbones,
    normalization,
    smp_encoder_name,
)
from lunar_cli.models.unet import UNet

IMAGENET_MEAN = [0.485, 0.456, 0.406]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "backbone, size",
    # vgg11 is 18M parameters: 32x32 (its smallest input) keeps its backward pass quick.
    [("custom", 64), ("vgg11", 32), ("resnet18", 64), ("mobilenet_v3_large", 64)],
)
def test_every_backbone_builds_and_trains_one_step(backbone, size):
    torch.manual_seed(0)
    model = build_model(backbone, encoder_weights="none")
    x = torch.rand(2, 3, size, size)
    target = torch.randint(0, 4, (2, size, size))
    logits = model(x)
    assert logits.shape == (2, 4, size, size)
    loss = torch.nn.functional.cross_entropy(logits, target)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_backbone_names():
    assert list_backbones() == ["custom", "vgg11", "resnet18", "mobilenet_v3_large"]
    assert list_backbones("mobile*") == ["mobilenet_v3_large"]
    assert "resnet34" in list_backbones("resnet*", include_smp=True)
    assert smp_encoder_name("custom") is None
    assert smp_encoder_name("ResNet18") == "resnet18"
    assert smp_encoder_name("mobilenet-v3-large") == "tu-mobilenetv3_large_100"
    assert smp_encoder_name("resnet34") == "resnet34"  # any smp encoder works
    assert set(BACKBONES) == {"custom", "vgg11", "resnet18", "mobilenet_v3_large"}


def test_custom_default_is_about_a_tenth_of_a_million_parameters():
    model = UNet()
    assert n_params(model) == 121_204
    assert n_params(build_model("custom")) == 121_204
    # Width and depth are real knobs.
    assert n_params(UNet(base_width=4, depth=2)) == 7_564
    assert n_params(build_model("custom", base_width=16)) == 482_788


@pytest.mark.parametrize("size", [(72, 56), (100, 100), (37, 53), (64, 64)])
def test_custom_keeps_any_input_size(size):
    model = UNet().eval()
    with torch.inference_mode():
        out = model(torch.rand(1, 3, *size))
    assert out.shape == (1, 4, *size)


def test_custom_output_is_aligned_with_input_on_odd_sizes():
    # A model whose head copies the input's first channel shows any pixel shift.
    model = UNet(in_channels=1, num_classes=1, base_width=2, depth=2).eval()
    with torch.inference_mode():
        for p in model.parameters():
            p.zero_()
        # Route the input straight through: the top skip is concatenated first,
        # so make the top encoder/decoder blocks identity-like for positive input.
        enc = model.encoder[0]
        enc[0].weight[0, 0, 1, 1] = 1.0
        enc[1].weight.fill_(1.0)
        enc[3].weight[0, 0, 1, 1] = 1.0
        enc[4].weight.fill_(1.0)
        dec = model.decoder[-1]
        dec[0].weight[0, 0, 1, 1] = 1.0
        dec[1].weight.fill_(1.0)
        dec[3].weight[0, 0, 1, 1] = 1.0
        dec[4].weight.fill_(1.0)
        model.head.weight[0, 0] = 1.0
        for bn in [enc[1], enc[4], dec[1], dec[4]]:
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
        x = torch.rand(1, 1, 37, 53)
        assert torch.allclose(model(x), x, atol=1e-5)


def test_custom_rejects_bad_options():
    with pytest.raises(LunarError, match="unknown model option.*widht"):
        build_model("custom", widht=8)
    with pytest.raises(LunarError, match="depth"):
        build_model("custom", depth=0)
    with pytest.raises(LunarError, match="no pretrained encoder"):
        build_model("custom", encoder_weights="imagenet")


def test_smp_rejects_unknown_option():
    with pytest.raises(LunarError, match="unknown model option.*decoder_chanels"):
        build_model("resnet18", decoder_chanels=(8, 8, 8, 8, 8))


def test_unknown_backbone_lists_the_names():
    with pytest.raises(LunarError) as info:
        build_model("resnet81")
    message = str(info.value)
    assert "'resnet81'" in message
    assert "did you mean 'resnet18'" in message
    assert "custom, vgg11, resnet18, mobilenet_v3_large" in message
    assert "encoder name" in message
    assert "\n" not in message
    with pytest.raises(LunarError, match="timm has no model"):
        smp_encoder_name("tu-not_a_timm_model")


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENETUNREACH, "Network is unreachable"),
        urllib.error.URLError("Name or service not known"),
        RuntimeError("download interrupted"),
    ],
)
def test_imagenet_without_network_is_a_clear_error(monkeypatch, failure):
    import segmentation_models_pytorch.encoders as smp_encoders

    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise failure

    monkeypatch.setattr(smp_encoders, "hf_hub_download", no_network)
    with pytest.raises(LunarError) as info:
        build_model("resnet18", encoder_weights="imagenet")
    assert calls, "the download was never attempted"
    message = str(info.value)
    assert message.startswith("could not download imagenet weights for resnet18")
    assert "--encoder-weights none" in message and "--encoder-weights PATH" in message


def test_huggingface_offline_error_is_a_clear_error(monkeypatch):
    import segmentation_models_pytorch.encoders as smp_encoders
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(smp_encoders, "hf_hub_download", offline)
    with pytest.raises(LunarError, match="could not download imagenet weights for vgg11"):
        build_model("vgg11", encoder_weights="imagenet")


def test_local_encoder_weights_are_loaded(tmp_path):
    torch.manual_seed(1)
    source = build_model("resnet18", encoder_weights=None)
    bare = tmp_path / "encoder.pt"
    torch.save(source.encoder.state_dict(), bare)
    full = tmp_path / "full.pt"
    torch.save(source.state_dict(), full)  # keys prefixed "encoder."

    for path in (bare, full):
        torch.manual_seed(2)  # a different random init, so equality means "loaded"
        model = build_model("resnet18", encoder_weights=str(path))
        for key, value in source.encoder.state_dict().items():
            assert torch.equal(model.encoder.state_dict()[key], value), key
        # Only the encoder comes from the file; the decoder stays freshly initialised.
        assert not torch.equal(
            model.segmentation_head[0].weight, source.segmentation_head[0].weight
        )


def test_torchvision_resnet_weights_load_into_the_encoder(tmp_path):
    import torchvision

    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_torchvision.pth"
    torch.save(tv.state_dict(), path)
    model = build_model("resnet18", encoder_weights=path)
    assert torch.equal(model.encoder.conv1.weight, tv.conv1.weight)


def test_local_weights_for_another_encoder_are_refused(tmp_path):
    path = tmp_path / "mobilenet.pt"
    torch.save(build_model("mobilenet_v3_large").encoder.state_dict(), path)
    with pytest.raises(LunarError, match=r"mobilenet\.pt.*do not fit the resnet18 encoder"):
        build_model("resnet18", encoder_weights=path)
    with pytest.raises(LunarError, match="no such file"):
        build_model("resnet18", encoder_weights=tmp_path / "missing.pt")
    text = tmp_path / "notes.pt"
    text.write_text("not weights")
    with pytest.raises(LunarError, match="notes.pt: not a readable weights file"):
        build_model("resnet18", encoder_weights=text)


def test_normalization_per_backbone():
    assert normalization("custom") == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    for backbone in ("vgg11", "resnet18", "mobilenet_v3_large"):
        norm = normalization(backbone)
        assert norm["mean"] == pytest.approx(IMAGENET_MEAN)
        assert norm["std"] == pytest.approx([0.229, 0.224, 0.225])
    # timm's TensorFlow port was trained with other statistics; they come from timm.
    assert normalization("tu-tf_mobilenetv3_large_100")["mean"] == pytest.approx([0.5, 0.5, 0.5])
