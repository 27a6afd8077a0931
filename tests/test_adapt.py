"""lunar adapt as a user runs it: a trained model adapted to a folder of unlabelled photos, written as a new run."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lunar_cli.models.checkpoint import build_from_checkpoint, load_checkpoint
from tests.conftest import make_dataset
from tests.test_predict import make_photos, save_model


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A tiny custom U-Net (it has BatchNorm layers) that feeds photos at their own size."""
    return save_model(tmp_path_factory.mktemp("source") / "best.pt", square=None)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    make_photos(folder, 6)
    return folder


def weights(path: Path) -> tuple[dict, dict, dict]:
    """Return (parameters, BatchNorm running statistics, meta) of a checkpoint, as its network holds them."""
    ckpt = load_checkpoint(path)
    net = build_from_checkpoint(ckpt, str(path))
    params = {name: p.detach().clone() for name, p in net.named_parameters()}
    stats = {name: b.clone() for name, b in net.named_buffers() if name.endswith(("running_mean", "running_var"))}
    return params, stats, ckpt["meta"]


def adapt(cli, *args) -> dict:
    result = cli("adapt", *args, "--json")
    assert result.code == 0, result.err
    return result.json()


def test_bn_mode_changes_batchnorm_statistics_and_nothing_else(cli, source, photos, tmp_path):
    record = adapt(cli, source, photos, "--mode", "bn", "--runs-dir", tmp_path / "runs")
    run = Path(record["run_dir"])
    assert run.parent == tmp_path / "runs" / "adapt" and run.name == f"{source.parent.name}-bn"  # named after the source's run folder
    before, stats_before, meta_before = weights(source)
    after, stats_after, meta = weights(run / "best.pt")
    assert before.keys() == after.keys() and len(before) > 10
    assert all(torch.equal(before[k], after[k]) for k in before), "a parameter tensor changed"
    assert stats_before.keys() == stats_after.keys() and len(stats_after) == 2 * record["bn_layers"] > 0
    assert all(not torch.equal(stats_before[k], stats_after[k]) for k in stats_before), "a BN statistic kept its value"
    assert record["steps"] == 0 and record["photos"] == 6 and record["skipped"] == []
    assert meta["adapted"]["mode"] == "bn" and meta["adapted"]["photos"] == 6
    assert meta["adapted"]["source"] == str(source) and meta["backbone"] == meta_before["backbone"]
    stages = record["stages"]
    assert list(stages) == ["source", "bn"] and stages["source"]["changed_from_source"] == 0.0
    for stage in stages.values():
        assert 0.0 <= stage["mean_uncertainty"] <= 1.0 and sum(stage["class_fractions"].values()) == pytest.approx(1.0)
    assert json.loads((run / "adapt.json").read_text())["stages"]["bn"] == stages["bn"]


def test_the_statistics_are_the_cumulative_average_over_the_photos_at_the_model_scale(cli, source, photos, tmp_path):
    record = adapt(cli, source, photos, "--mode", "bn", "--batch-size", "6", "--no-amp", "--runs-dir", tmp_path / "runs")
    _, stats, _ = weights(Path(record["model"]))
    # One batch of all six photos: the first layer's statistics are its input's own, measured here by hand.
    net = build_from_checkpoint(load_checkpoint(source))
    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(photos.glob("*.png"))]
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        features = net.encoder[0][0](x)  # 48x64 photos: no padding at this U-Net's multiple of 8
    assert torch.allclose(stats["encoder.0.1.running_mean"], features.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(stats["encoder.0.1.running_var"], features.var(dim=(0, 2, 3)), rtol=1e-4)


def test_self_train_learns_its_confident_labels_and_keeps_the_bn_statistics(cli, source, photos, tmp_path):
    runs = tmp_path / "runs"
    bn = adapt(cli, source, photos, "--mode", "bn", "--batch-size", "3", "--runs-dir", runs)
    training = ("--epochs", "2", "--batch-size", "3", "--confidence", "0.3", "--lr", "1e-3", "--runs-dir", runs)
    both = adapt(cli, source, photos, "--mode", "bn+self-train", *training)
    alone = adapt(cli, source, photos, "--mode", "self-train", *training)
    before, source_stats, _ = weights(source)
    _, bn_stats, _ = weights(Path(bn["model"]))
    for record, stats_kept, stages in ((both, bn_stats, ["source", "bn", "self-train"]),
                                       (alone, source_stats, ["source", "self-train"])):  # fmt: skip
        assert record["steps"] == 4  # 2 epochs of 6 photos in batches of 3
        assert list(record["stages"]) == stages and record["bn_layers"] == (0 if record is alone else bn["bn_layers"])
        assert 0.0 < record["pseudo_labelled_share"][0] <= 1.0 and all(np.isfinite(record["self_train_loss"]))
        assert record["settings"]["crop_size"] == 32  # the model's 64-pixel crop, no larger than the 48-pixel photos
        after, stats, meta = weights(Path(record["model"]))
        assert any(not torch.equal(before[k], after[k]) for k in before), "self-training moved no weight"
        assert all(torch.equal(stats_kept[k], stats[k]) for k in stats), "self-training changed the BN statistics"
        assert meta["adapted"]["steps"] == 4 and meta["adapted"]["settings"]["teacher"] == "fixed"
        assert 0.0 < record["stages"]["self-train"]["changed_from_source"] <= 1.0


def test_the_ema_teacher_and_dice_loss_run(cli, source, photos, tmp_path):
    record = adapt(cli, source, photos, "--mode", "self-train", "--epochs", "2", "--teacher", "ema", "--loss",
                   "ce+dice", "--confidence", "0.3", "--runs-dir", tmp_path / "runs", "--name", "ema")  # fmt: skip
    assert record["steps"] == 2 and Path(record["run_dir"]).name == "ema"
    assert len(record["pseudo_labelled_share"]) == 2  # the EMA teacher labels the photos afresh each epoch


def test_the_adapted_run_is_a_normal_model_with_its_calibration_said(cli, source, photos, tmp_path):
    from lunar_cli.models.checkpoint import save_checkpoint

    ckpt = load_checkpoint(source)
    calibrated = tmp_path / "calibrated" / "best.pt"
    meta = {**ckpt["meta"], "calibration": {"temperature": 1.5, "ood_threshold": 0.2, "ece_val": 0.01}}
    save_checkpoint(calibrated, model_state=ckpt["model"], meta=meta)
    runs = tmp_path / "runs"
    record = adapt(cli, calibrated, photos, "--mode", "bn", "--runs-dir", runs)
    model = Path(record["model"])
    calibration = load_checkpoint(model)["meta"]["calibration"]
    assert calibration["temperature"] == 1.5 and calibration["ood_threshold_source"] == 0.2
    photo_means = record["stages"]["bn"]["photo_uncertainty"]
    assert calibration["ood_threshold"] == pytest.approx(float(np.quantile(photo_means, 0.99)))
    assert "kept" in calibration["temperature_fitted_on"]
    data = make_dataset(tmp_path / "data", n_render=4, n_real=2)
    assert cli("split", "--data-dir", data).code == 0
    scored = cli("evaluate", model, "--data-dir", data, "--runs-dir", runs, "--json")
    assert scored.code == 0, scored.err
    assert set(scored.json()["splits"]) == {"test", "test_real"}
    predicted = cli("predict", photos, "-o", tmp_path / "masks", "--model", model, "--uncertainty", "--json")
    assert predicted.code == 0, predicted.err
    assert all("out_of_distribution" in r for r in predicted.json()["records"])
    exported = cli("export", model, "-o", tmp_path / "adapted.onnx", "--json")
    assert exported.code == 0, exported.err
    assert exported.json()["class_agreement"] > 0.99


def test_photos_of_mixed_sizes_grayscale_and_rgba_are_used_and_said(cli, source, tmp_path):
    folder = tmp_path / "mixed"
    make_photos(folder, 2, size=(48, 64))
    make_photos(folder, 2, size=(40, 72), name="wide")
    gray = (np.arange(48 * 64).reshape(48, 64) % 256).astype(np.uint8)
    cv2.imwrite(str(folder / "gray.png"), gray)
    cv2.imwrite(str(folder / "rgba.png"), np.dstack([np.stack([gray] * 3, axis=2), np.full_like(gray, 128)]))
    result = cli("adapt", source, folder, "--mode", "self-train", "--epochs", "1", "--confidence", "0.3",
                 "--runs-dir", tmp_path / "runs", "--json")  # fmt: skip
    assert result.code == 0, result.err
    record = result.json()
    assert record["photos"] == 6 and record["converted"] == {"grayscale": 1, "RGBA (alpha dropped)": 1}
    assert "6 photos of 2 sizes" in result.err and "1 grayscale photo(s) converted" in result.err


def test_no_readable_photos_is_one_line_and_writes_nothing(cli, source, tmp_path):
    runs = tmp_path / "runs"
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"")
    (tmp_path / "bad" / "b.png").write_text("not a photo")
    for folder, why in (("empty", "no image files there"), ("bad", "2 file(s) there could not be read"),
                        ("missing", "no such file or folder")):  # fmt: skip
        result = cli("adapt", source, tmp_path / folder, "--runs-dir", runs)
        assert result.code == 1 and result.err.strip().splitlines()[-1].startswith("error: ")
        assert why in result.err and "Traceback" not in result.err
    assert not (runs / "adapt").exists() or not any((runs / "adapt").iterdir())


def test_bad_files_among_good_photos_are_skipped_with_a_warning(cli, source, tmp_path):
    folder = tmp_path / "some_bad"
    make_photos(folder, 3)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    record = adapt(cli, source, folder, "--mode", "bn", "--runs-dir", tmp_path / "runs")
    assert record["photos"] == 3 and [s["input"] for s in record["skipped"]] == [str(folder / "broken.png")]


def test_a_network_without_batchnorm_refuses_bn_mode_and_self_trains(cli, photos, tmp_path):
    from lunar_cli.frames import FrameSize
    from lunar_cli.models.checkpoint import checkpoint_meta, save_checkpoint
    from lunar_cli.models.registry import IMAGENET_MEAN, IMAGENET_STD, build_model

    options = {"encoder_depth": 3, "decoder_channels": [16, 8, 8], "decoder_use_norm": False}  # LayerNorm encoder, no BN
    torch.manual_seed(0)
    net = build_model("tu-convnext_atto", encoder_weights=None, **options)
    path = tmp_path / "nobn" / "best.pt"
    meta = checkpoint_meta("tu-convnext_atto", frame_size=FrameSize(scale=1.0), crop_size=64, epoch=1,
                           normalization={"mean": IMAGENET_MEAN, "std": IMAGENET_STD}, model_kwargs=options)  # fmt: skip
    save_checkpoint(path, model_state=net.state_dict(), meta=meta)
    runs = tmp_path / "runs"
    refused = cli("adapt", path, photos, "--mode", "bn", "--runs-dir", runs)
    assert refused.code == 1 and "tu-convnext_atto: this network has no BatchNorm layer" in refused.err
    assert "use --mode self-train" in refused.err and not (runs / "adapt").exists()
    result = cli("adapt", path, photos, "--mode", "bn+self-train", "--epochs", "1", "--confidence", "0.3",
                 "--runs-dir", runs, "--json")  # fmt: skip
    assert result.code == 0, result.err
    assert "no BatchNorm layers; self-training only" in result.err
    record = result.json()
    assert record["bn_layers"] == 0 and list(record["stages"]) == ["source", "self-train"] and record["steps"] == 1


def test_an_onnx_model_and_a_bad_option_are_one_line_errors(cli, source, photos, tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    result = cli("adapt", onnx, photos, "--runs-dir", tmp_path / "runs")
    assert result.code == 1 and "adapt changes a PyTorch checkpoint, not an ONNX export" in result.err
    result = cli("adapt", source, photos, "--crop-size", "40", "--runs-dir", tmp_path / "runs")
    assert result.code == 1 and "'adapt.crop_size': 40 is not a multiple of 32" in result.err
    result = cli("adapt", source, photos, "--confidence", "1.5")
    assert result.code == 1 and "'adapt.confidence': must be 0 to 0.999" in result.err
