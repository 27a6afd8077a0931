"""Checkpoints: round trip, refusal of anything unsafe or foreign, atomic writes."""

from __future__ import annotations

import errno
import pickle

import numpy as np
import pytest
import torch

from lunar_cli import __version__
from lunar_cli.console import LunarError
from lunar_cli.frames import FrameSize
from lunar_cli.models.checkpoint import (
    FORMAT_VERSION,
    build_from_checkpoint,
    checkpoint_meta,
    load_checkpoint,
    save_checkpoint,
)
from lunar_cli.models.registry import build_model, normalization

TINY = {"base_width": 4, "depth": 2}


def tiny_meta(backbone: str = "custom", model_kwargs: dict | None = None, epoch: int = 3) -> dict:
    return checkpoint_meta(
        backbone,
        frame_size=FrameSize(scale=0.5),
        crop_size=32,
        normalization=normalization(backbone),
        epoch=epoch,
        best_metric=("val_miou", 0.5),
        model_kwargs=TINY if model_kwargs is None else model_kwargs,
    )


def save_tiny(path, epoch: int = 3) -> torch.nn.Module:
    torch.manual_seed(epoch)
    model = build_model("custom", **TINY)
    save_checkpoint(path, model_state=model.state_dict(), meta=tiny_meta(epoch=epoch))
    return model


class Payload:
    """Unpickling this creates ``marker``: proof that pickle code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_round_trip_rebuilds_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("custom", **TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(2, 3, 40, 52)
    model(x).mean().backward()
    optimizer.step()
    model.eval()
    path = tmp_path / "weights" / "best.pt"

    save_checkpoint(
        path,
        model_state=model.state_dict(),
        meta=tiny_meta(),
        extra={"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), "history": [{"loss": 1.0}]},
    )
    ckpt = load_checkpoint(path)
    rebuilt = build_from_checkpoint(ckpt)

    assert not rebuilt.training
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), model(x))
    meta = ckpt["meta"]
    assert meta["format"] == "lunar-checkpoint" and meta["format_version"] == FORMAT_VERSION
    assert meta["backbone"] == "custom" and meta["encoder"] is None
    assert meta["model_kwargs"] == TINY
    assert [c["name"] for c in meta["classes"]] == ["ground", "sky", "small_rocks", "large_rocks"]
    assert meta["classes"][1]["rgb"] == [255, 0, 0]
    assert meta["frame_size"] == {"scale": 0.5, "square": None} and meta["crop_size"] == 32
    assert meta["normalization"] == {"mean": [0.0] * 3, "std": [1.0] * 3}
    assert meta["best_metric"] == {"name": "val_miou", "value": 0.5}
    assert meta["lunar_version"] == __version__ and meta["torch_version"] == str(torch.__version__)
    # The optimizer state restores into a fresh optimizer (what --resume does).
    fresh = torch.optim.Adam(rebuilt.parameters(), lr=1e-3)
    fresh.load_state_dict(ckpt["optimizer"])
    assert ckpt["history"] == [{"loss": 1.0}]
    assert not list(path.parent.glob(".*tmp")), "temporary file left behind"


def test_smp_round_trip_never_downloads(tmp_path, monkeypatch):
    import segmentation_models_pytorch.encoders as smp_encoders

    torch.manual_seed(0)
    model = build_model("mobilenet_v3_large").eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model_state=model.state_dict(), meta=tiny_meta("mobilenet_v3_large", model_kwargs={}))

    def no_download(*args, **kwargs):
        raise AssertionError("build_from_checkpoint tried to download weights")

    monkeypatch.setattr(smp_encoders, "hf_hub_download", no_download)
    ckpt = load_checkpoint(path)
    assert ckpt["meta"]["encoder"] == "tu-mobilenetv3_large_100"
    assert ckpt["meta"]["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(build_from_checkpoint(ckpt)(x), model(x))


def test_compiled_model_prefix_is_stripped(tmp_path):
    model = build_model("custom", **TINY)
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "c.pt", model_state=state, meta=tiny_meta())
    build_from_checkpoint(load_checkpoint(tmp_path / "c.pt"))  # loads strictly


def test_pickle_payload_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    torch_file = tmp_path / "evil.pt"
    meta = {"format": "lunar-checkpoint", "format_version": 1}
    torch.save({"meta": meta, "model": {}, "x": Payload(marker)}, torch_file)
    raw_file = tmp_path / "evil.pkl"
    raw_file.write_bytes(pickle.dumps({"x": Payload(marker)}, protocol=2))

    for path in (torch_file, raw_file):
        with pytest.raises(LunarError) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value) and "refused" in str(info.value)
        assert not marker.exists(), f"loading {path.name} ran pickle code"

    # The payload is live: an unsafe load really would have run it.
    pickle.loads(raw_file.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "empty"),
        (b"epoch,loss\n1,0.5\n", "not a PyTorch file"),
        (b"PK\x03\x04 truncated zip", "corrupt or truncated"),
    ],
)
def test_non_checkpoint_files_are_refused(tmp_path, content, expected):
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    with pytest.raises(LunarError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "best.pt"
    save_tiny(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LunarError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(LunarError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(LunarError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_foreign_torch_files_are_refused(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(build_model("custom", **TINY).state_dict(), bare)
    with pytest.raises(LunarError, match="bare.pt: not a lunar checkpoint .a bare state dict"):
        load_checkpoint(bare)

    other = tmp_path / "other.pt"
    torch.save({"meta": {"format": "yolo"}, "model": {}}, other)
    with pytest.raises(LunarError, match="other.pt: not a lunar checkpoint .format marker 'yolo'"):
        load_checkpoint(other)

    newer = tmp_path / "newer.pt"
    meta = tiny_meta()
    meta["format_version"] = FORMAT_VERSION + 1
    save_checkpoint(newer, model_state={}, meta=meta)
    with pytest.raises(LunarError, match="newer.pt: written by a newer lunar"):
        load_checkpoint(newer)

    damaged = tmp_path / "damaged.pt"
    meta = tiny_meta()
    del meta["backbone"]
    save_checkpoint(damaged, model_state={}, meta=meta)
    with pytest.raises(LunarError, match="damaged.pt: damaged lunar checkpoint .meta 'backbone'"):
        load_checkpoint(damaged)


def test_weights_that_do_not_fit_the_meta_are_refused(tmp_path):
    path = tmp_path / "edited.pt"
    model = build_model("custom", **TINY)
    save_checkpoint(path, model_state=model.state_dict(), meta=tiny_meta(model_kwargs={"base_width": 8, "depth": 2}))
    with pytest.raises(LunarError, match="edited.pt: weights do not fit a custom model"):
        build_from_checkpoint(load_checkpoint(path), name=str(path))


@pytest.mark.parametrize(
    "code, expected", [(errno.ENOSPC, "disk full.*nothing was lost"), (errno.EIO, "could not save")]
)
def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch, code, expected):
    path = tmp_path / "last.pt"
    save_tiny(path, epoch=1)
    before = path.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(code, "simulated failure")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(LunarError, match=expected) as info:
        save_tiny(path, epoch=2)
    assert str(path) in str(info.value)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert load_checkpoint(path)["meta"]["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"], "temporary file left behind"


def test_unloadable_values_are_caught_at_save_time(tmp_path):
    path = tmp_path / "bad.pt"
    model = build_model("custom", **TINY)
    with pytest.raises(TypeError, match=r"\['history'\]\[0\]\['loss'\].*numpy"):
        save_checkpoint(path, model_state=model.state_dict(), meta=tiny_meta(),
                        extra={"history": [{"loss": np.float64(0.3)}]})
    assert not path.exists()
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(path, model_state=model.state_dict(), meta=tiny_meta(), extra={"model": {}})
