"""Models: every backbone builds and trains a step; names, weights and normalisation."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from lunar_cli.console import LunarError
from lunar_cli.models.registry import BACKBONES, build_model, friendly_name, normalization, smp_encoder_name
from lunar_cli.models.unet import UNet
from tests.conftest import make_dataset

REPO = Path(__file__).resolve().parent.parent
IMAGENET_MEAN = [0.485, 0.456, 0.406]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "backbone, size",
    # vgg11 is 18M parameters: 32x32 (its smallest input) keeps its backward pass quick.
    [("custom", 64), ("vgg11", 32), ("resnet18", 64), ("mobilenet_v3_large", 64), ("efficientnet_lite0", 64)],
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
    assert smp_encoder_name("custom") is None
    assert smp_encoder_name("ResNet18") == "resnet18"
    assert smp_encoder_name("mobilenet-v3-large") == "tu-mobilenetv3_large_100"
    assert smp_encoder_name("resnet34") == "resnet34"  # any smp encoder works
    assert smp_encoder_name("efficientnet-lite0") == "tu-tf_efficientnet_lite0"
    assert friendly_name("tu-tf_efficientnet_lite0") == "efficientnet_lite0"
    assert set(BACKBONES) == {"custom", "vgg11", "resnet18", "mobilenet_v3_large", "efficientnet_lite0"}


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
    assert "custom, vgg11, resnet18, mobilenet_v3_large, efficientnet_lite0" in message
    assert "encoder name" in message
    assert "\n" not in message
    with pytest.raises(LunarError, match="timm has no model"):
        smp_encoder_name("tu-not_a_timm_model")


def closed_port() -> int:
    """Return a local TCP port nothing listens on (connecting is refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """The Hugging Face hub at a local port nothing answers on, and an empty hub cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "hf-cache"


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENETUNREACH, "Network is unreachable"),
        urllib.error.URLError("Name or service not known"),
        RuntimeError("download interrupted"),
    ],
)
def test_imagenet_without_network_is_a_clear_error(monkeypatch, no_hub, failure):
    import segmentation_models_pytorch.encoders as smp_encoders

    from lunar_cli.models import registry

    monkeypatch.setattr(registry, "_hub_unreachable", lambda: None)  # the hub answered; the download then fails
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


@pytest.mark.parametrize("backbone", ["vgg11", "mobilenet_v3_large"])
def test_offline_imagenet_fails_fast_with_one_line(monkeypatch, no_hub, backbone):
    # The real hub code, offline: without the probe it retries with backoff for 20 s or more.
    import segmentation_models_pytorch as smp

    built = []
    real_unet = smp.Unet
    monkeypatch.setattr(smp, "Unet", lambda *args, **kwargs: built.append(1) or real_unet(*args, **kwargs))
    start = time.perf_counter()
    with pytest.raises(LunarError) as info:
        build_model(backbone, encoder_weights="imagenet")
    assert time.perf_counter() - start < 5
    # smp's own encoders are known missing from the cache before the network is built; timm's are not.
    assert built == ([] if backbone == "vgg11" else [1])
    message = str(info.value)
    assert message.startswith(f"could not download imagenet weights for {smp_encoder_name(backbone)}: http://127.0.0.1:")
    assert "unreachable: ConnectError, and they are not in the Hugging Face cache" in message
    assert "--encoder-weights none" in message and "\n" not in message


def test_hub_that_never_answers_is_given_up_on(monkeypatch, no_hub):
    from huggingface_hub import utils as hub_utils

    from lunar_cli.models import registry

    release = threading.Event()

    class Silent:  # a lookup or connection that hangs, as on a network that drops packets
        def head(self, *args, **kwargs):
            release.wait(30)

    monkeypatch.setattr(hub_utils, "get_session", Silent)
    monkeypatch.setattr(registry, "HUB_PROBE_SECONDS", 0.3)
    start = time.perf_counter()
    try:
        with pytest.raises(LunarError, match=r"did not answer in 0\.3 s, and they are not in the Hugging Face cache"):
            build_model("vgg11", encoder_weights="imagenet")
    finally:
        release.set()
    assert time.perf_counter() - start < 5


def test_reachable_hub_downloads_as_usual(monkeypatch, no_hub):
    import segmentation_models_pytorch.encoders as smp_encoders
    from huggingface_hub import constants

    class Hub(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    offline_during_download = []

    def download(*args, **kwargs):
        offline_during_download.append(constants.is_offline_mode())
        raise OSError(errno.ECONNRESET, "connection reset")

    monkeypatch.setattr(smp_encoders, "hf_hub_download", download)
    try:
        with pytest.raises(LunarError, match=r"for vgg11 \(ConnectionResetError\): no network\?"):
            build_model("vgg11", encoder_weights="imagenet")
    finally:
        server.shutdown()
        server.server_close()
    assert offline_during_download == [False]  # the hub answered: smp downloads as it always did
    assert constants.is_offline_mode() is False


def test_cached_imagenet_weights_load_offline(no_hub):
    import segmentation_models_pytorch as smp
    from safetensors.torch import save_file

    settings = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    repo, revision = settings["repo_id"], settings["revision"]
    snapshot = no_hub / f"models--{repo.replace('/', '--')}" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    torch.manual_seed(3)
    cached = build_model("resnet18").encoder.state_dict()
    save_file({k: v.contiguous() for k, v in cached.items()}, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text("{}")

    model = build_model("resnet18", encoder_weights="imagenet")
    for key, value in cached.items():
        assert torch.equal(model.encoder.state_dict()[key], value), key


def test_offline_train_command_prints_only_our_error(tmp_path):
    from lunar_cli.data.split import make_split

    data = make_dataset(tmp_path / "data", n_render=8, n_real=0, size=(64, 64))
    make_split(data)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("HF_")}
    env.update({
        "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
        "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HOME": str(tmp_path / "hf"),
    })  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "lunar_cli", "train", "--backbone", "vgg11", "--epochs", "1", "--image-size", "64",
         "--data-dir", data, "--runs-dir", tmp_path / "runs", "--workers", "0", "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    assert proc.returncode == 1
    # Nothing but our line: no "Retrying in 8s" or other hub log lines.
    assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("error: could not download imagenet weights for vgg11: http://127.0.0.1:")
    # Startup and caching take a few seconds; the hub's retries alone would sleep 23 s.
    assert seconds < 20, seconds


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
