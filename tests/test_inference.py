"""One predictor for every model: logits as the network gives them, pipelined prediction, TTA, uncertainty, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lunar_cli.classes import read_image_rgb
from tests.test_predict import REPO, make_photos, predict, save_model


def predict_one(model, photo: np.ndarray, **options):
    """Return what predict's own steps make of one photo: scale it, run the passes, finish the maps."""
    from lunar_cli.frames import model_scale_frames
    from lunar_cli.postprocess import finish
    from lunar_cli.predictor import model_passes

    passes = model_passes(model, model_scale_frames(model.spec.frame_size, [photo]), options.pop("tta", False))
    return finish([p[0] for p in passes], *photo.shape[:2], model.spec.temperature, **options)


def calibrated(path: Path, temperature: float = 1.0, threshold: float = 0.5) -> Path:
    """Give a saved checkpoint the calibration training would have stored in it."""
    from lunar_cli.models.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(path)
    meta = {**ckpt["meta"], "calibration": {"temperature": temperature, "ood_threshold": threshold}}
    save_checkpoint(path, model_state=ckpt["model"], meta=meta)
    return path


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> Path:
    """A tiny untrained custom U-Net fed at scale 1 (photos run whole), calibrated."""
    return calibrated(save_model(tmp_path_factory.mktemp("native") / "best.pt", square=None, base_width=4, depth=2))


def test_pytorch_logits_are_the_networks_own(native):
    from lunar_cli.torch_model import frame_logits, load_model

    model = load_model(native, "cpu", amp=False, channels_last=False)
    frames = torch.from_numpy(np.stack([read_image_rgb(p) for p in make_photos(native.parent / "in", 2, size=(44, 60))]))
    x = frames.permute(0, 3, 1, 2).float() / 255  # this model's normalisation: mean 0, std 1
    with torch.inference_mode():
        direct = model.net(x)  # the custom U-Net pads itself exactly as lunar pads frames
    assert torch.equal(frame_logits(model, frames), direct)
    assert np.array_equal(model.logits(frames.numpy()), direct.numpy())


def test_smp_frames_of_any_size_are_padded_and_cropped_back(tmp_path):
    from lunar_cli.frames import FrameSize
    from lunar_cli.models.checkpoint import checkpoint_meta, save_checkpoint
    from lunar_cli.models.registry import build_model, normalization
    from lunar_cli.torch_model import frame_logits, load_model

    net = build_model("resnet18").eval()
    meta = checkpoint_meta("resnet18", frame_size=FrameSize(), normalization=normalization("resnet18"), epoch=1)
    save_checkpoint(tmp_path / "r18.pt", model_state=net.state_dict(), meta=meta)
    model = load_model(tmp_path / "r18.pt", "cpu", amp=False, channels_last=False)
    frames = torch.randint(0, 256, (1, 50, 70, 3), dtype=torch.uint8)
    logits = frame_logits(model, frames)
    assert logits.shape == (1, 4, 50, 70) and torch.isfinite(logits).all()
    norm = model.spec.normalization
    x = (frames.permute(0, 3, 1, 2).float() / 255 - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(
        norm["std"]).view(1, 3, 1, 1)  # fmt: skip
    x = torch.nn.functional.pad(x, (13, 13, 7, 7), mode="replicate")  # 50x70 centred in 64x96
    with torch.inference_mode():
        direct = model.net(x)[..., 7:57, 13:83]
    assert torch.allclose(logits, direct, atol=1e-5)


def test_pipelined_prediction_writes_what_a_plain_loop_writes(native, tmp_path):
    from lunar_cli.predict_files import plan_outputs, write_outputs
    from lunar_cli.predictor import load_predictor, photo_summary

    photos = make_photos(tmp_path / "in", 7, size=(48, 64)) + make_photos(tmp_path / "in", 3, size=(40, 56), name="odd")
    result = predict(photos, tmp_path / "piped", native, batch_size=3, hazard=True, uncertainty=True)
    assert [r["input"] for r in result["records"]] == [str(p) for p in photos]
    model = load_predictor(native, "cpu")
    plan = plan_outputs(photos, tmp_path / "serial", "rgb", ["hazard", "uncertainty"])
    for photo_path, targets in zip(photos, plan):  # one photo at a time, nothing ahead or behind
        photo = read_image_rgb(photo_path)
        pred = predict_one(model, photo, uncertainty=True)
        summary, maps = photo_summary(model.spec, pred, 15)
        write_outputs(targets, "rgb", photo, pred, model.spec.class_names, summary, maps)
    for record, targets in zip(result["records"], plan):
        assert [Path(f).name for f in record["output"]] == [Path(f).name for f in targets.values() if f]
        for mine, theirs in zip(record["output"], [f for f in targets.values() if f]):
            assert Path(mine).read_bytes() == Path(theirs).read_bytes(), mine


def symmetric_copy(path: Path, tmp_path: Path) -> Path:
    """Return a checkpoint of the same U-Net with every kernel mirror-symmetric: it commutes with a left-right flip."""
    from lunar_cli.models.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(path)
    state = {k: (v + v.flip(-1)) / 2 if v.ndim == 4 else v for k, v in ckpt["model"].items()}
    save_checkpoint(tmp_path / "mirror.pt", model_state=state, meta=ckpt["meta"])
    return tmp_path / "mirror.pt"


def test_tta_changes_nothing_for_a_flip_symmetric_model_and_something_otherwise(native, tmp_path):
    from lunar_cli.predictor import load_predictor

    photo = read_image_rgb(make_photos(tmp_path / "in", 1, size=(48, 64), seed=3)[0])
    mirror = load_predictor(symmetric_copy(native, tmp_path), "cpu", amp=False)
    plain, tta = (predict_one(mirror, photo, tta=t, probs=True) for t in (False, True))
    assert np.allclose(plain.probs, tta.probs, atol=1e-5) and np.array_equal(plain.classes, tta.classes)
    model = load_predictor(native, "cpu", amp=False)
    plain, tta = (predict_one(model, photo, tta=t, probs=True) for t in (False, True))
    assert not np.allclose(plain.probs, tta.probs, atol=1e-3)


def constant_model(path: Path, bias: list[float]) -> Path:
    """A custom U-Net whose every pixel gets the logits ``bias``: certain (one large) or undecided (all equal)."""
    from lunar_cli.models.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(save_model(path, square=None, base_width=2, depth=1))
    state = {k: torch.zeros_like(v) if k == "head.weight" else v for k, v in ckpt["model"].items()}
    state["head.bias"] = torch.tensor(bias)
    save_checkpoint(path, model_state=state, meta=ckpt["meta"])
    return calibrated(path, threshold=0.5)


def test_uncertainty_is_near_zero_where_the_model_is_certain_and_near_one_where_it_is_not(tmp_path):
    photos = make_photos(tmp_path / "in", 2)
    for bias, low, high in (([12.0, 0.0, 0.0, 0.0], 0.0, 0.01), ([0.0, 0.0, 0.0, 0.0], 0.99, 1.0)):
        model = constant_model(tmp_path / f"m{bias[0]:.0f}.pt", bias)
        result = predict(photos, tmp_path / f"out{bias[0]:.0f}", model, uncertainty=True, tta=True)
        for record in result["records"]:
            assert low <= record["uncertainty"]["mean"] <= high
            assert record["uncertainty"]["tta_spread"] == pytest.approx(0.0, abs=1e-5)  # the passes agree
            assert record["out_of_distribution"] is (record["uncertainty"]["mean"] > 0.5)
            image = cv2.imread(record["output"][1], cv2.IMREAD_UNCHANGED)
            assert image.shape == (48, 64) and low * 255 - 1 <= image.mean() <= high * 255 + 1


@pytest.fixture(scope="module")
def exported(native, tmp_path_factory) -> tuple[Path, dict]:
    from lunar_cli.export import export_model

    out = tmp_path_factory.mktemp("export") / "model.onnx"
    return out, export_model(native, out, "onnx")


def test_export_round_trip_agrees_with_pytorch_and_carries_its_metadata(native, exported, tmp_path):
    out, result = exported
    assert result["class_agreement"] >= 0.999 and result["max_probability_difference"] < 1e-4
    assert [p.name for p in out.parent.iterdir()] == ["model.onnx"]  # one self-contained file, nothing beside it
    from lunar_cli.onnx_model import load_onnx

    meta = load_onnx(out).spec.meta
    assert meta["classes"][2]["name"] == "small_rocks" and meta["frame_size"]["scale"] == 1.0
    assert meta["pad_multiple"] == 4 and meta["calibration"]["ood_threshold"] == 0.5
    photos = make_photos(tmp_path / "in", 3, size=(45, 67))
    with_torch = predict(photos, tmp_path / "torch", native, fmt="index", amp=False)
    with_onnx = predict(photos, tmp_path / "onnx", out, fmt="index")
    for a, b in zip(with_torch["records"], with_onnx["records"]):
        same = cv2.imread(a["output"][0], cv2.IMREAD_UNCHANGED) == cv2.imread(b["output"][0], cv2.IMREAD_UNCHANGED)
        assert same.mean() >= 0.999


def test_torchscript_export_is_checked_too(native, tmp_path):
    from lunar_cli.export import export_model

    result = export_model(native, tmp_path / "model.ts", "torchscript")
    assert result["class_agreement"] >= 0.999 and (tmp_path / "model.ts").stat().st_size == result["bytes"]


def test_onnx_predict_never_imports_torch(exported, tmp_path):
    out, _ = exported
    (photo,) = make_photos(tmp_path / "in", 1)
    code = (
        "import sys\n"
        "from lunar_cli.cli import run\n"
        f"code = run(['predict', {str(photo)!r}, '-o', {str(tmp_path / 'm.png')!r}, '--model', {str(out)!r}, "
        "'--uncertainty', '--tta', '--hazard', '--json'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)["records"][0]
    assert read_image_rgb(tmp_path / "m.png").shape == (48, 64, 3) and "out_of_distribution" in record


def three_classes(tmp_path: Path, exported: Path) -> Path:
    """Write an ONNX model of lunar's input and metadata whose logits have 3 classes (its 3 colour planes)."""
    import onnx
    from onnx import TensorProto, helper

    from lunar_cli.onnx_model import load_onnx

    meta = load_onnx(exported).spec.meta
    meta = {**meta, "classes": meta["classes"][:3]}
    graph = helper.make_graph(
        [helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
         helper.make_node("Transpose", ["x"], ["logits"], perm=[0, 3, 1, 2])], "three",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, "H", "W"])])  # fmt: skip
    proto = helper.make_model(graph)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "lunar", json.dumps(meta)
    onnx.save(proto, tmp_path / "three.onnx")
    return tmp_path / "three.onnx"


def test_bad_models_and_options_are_one_line_errors(native, exported, tmp_path, cli):
    import onnx
    from onnx import TensorProto, helper

    out, _ = exported
    (photo,) = make_photos(tmp_path / "in", 1)
    (tmp_path / "text.onnx").write_text("not a model")
    foreign = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))  # fmt: skip
    onnx.save(foreign, tmp_path / "foreign.onnx")
    three_classes(tmp_path, out)
    cases = [
        (["--model", tmp_path / "text.onnx"], "not a readable ONNX model"),
        (["--model", tmp_path / "foreign.onnx"], "without lunar metadata"),
        (["--model", tmp_path / "three.onnx"], "gives 3 classes but lunar segments 4"),
        (["--model", native, "--tta", "--tile"], "--tta with --tile"),
        (["--model", save_model(tmp_path / "plain.pt"), "--uncertainty"], "no calibration in this model"),
    ]
    for args, message in cases:
        result = cli("predict", photo, "-o", tmp_path / "o.png", *args)
        assert result.code == 1 and result.err.count("\n") == 1 and message in result.err, (args, result.err)
        assert not (tmp_path / "o.png").exists()
    for target, message in ((tmp_path / "no" / "m.onnx", "no such folder"), (tmp_path, "is a folder")):
        result = cli("export", native, "-o", target)
        assert result.code == 1 and result.err.count("\n") == 1 and message in result.err, result.err
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        result = cli("export", native, "-o", locked / "m.onnx")
        assert result.code == 1 and "not writable" in result.err and not list(locked.iterdir())


def test_a_model_fed_at_a_fixed_height_sees_every_photo_at_that_height_and_gives_masks_at_the_photos_size(cli, tmp_path):
    from lunar_cli.frames import FrameSize, model_scale_frames
    from lunar_cli.models.checkpoint import load_checkpoint, save_checkpoint
    from lunar_cli.onnx_model import load_onnx
    from lunar_cli.torch_model import load_model

    path = save_model(tmp_path / "h32.pt", square=None, height=32, base_width=4, depth=2)
    model = load_model(path, "cpu", amp=False, channels_last=False)
    assert model.spec.frame_size == FrameSize(height=32) and model.spec.frame_size.describe() == "height 32"
    (small,) = make_photos(tmp_path / "in", 1, size=(64, 96), seed=3)
    big = tmp_path / "in" / "big.png"
    cv2.imwrite(str(big), cv2.resize(cv2.imread(str(small)), (192, 128), interpolation=cv2.INTER_NEAREST))
    frames = [model_scale_frames(model.spec.frame_size, [read_image_rgb(p)]) for p in (small, big)]
    assert frames[0].shape == (1, 32, 48, 3) and np.abs(frames[0].astype(int) - frames[1]).max() <= 1  # aspect kept
    result = cli("predict", small, big, "-o", tmp_path / "masks", "--model", path, "--format", "index", "--json")
    assert result.code == 0, result.err
    masks = {p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in (tmp_path / "masks").iterdir()}
    assert masks[small.stem].shape == (64, 96) and masks["big"].shape == (128, 192)

    out = tmp_path / "h32.onnx"
    assert cli("export", path, "-o", out, "--json").code == 0
    assert load_onnx(out).spec.frame_size == FrameSize(height=32)  # the exported file keeps the rule

    ckpt = load_checkpoint(path)
    save_checkpoint(path, model_state=ckpt["model"], meta={**ckpt["meta"], "frame_size": {"scale": 1.0, "height": 0}})
    result = cli("predict", small, "-o", tmp_path / "x.png", "--model", path)
    assert result.code != 0 and "frame_size height 0" in result.err and len(result.err.strip().splitlines()) == 1
