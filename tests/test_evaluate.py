"""lunar evaluate as a user runs it: scores per split, consistent numbers, figures, eval.json kept up to date."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from lunar_cli.config import load_config
from lunar_cli.console import LunarError
from lunar_cli.data.split import make_split, read_manifest
from lunar_cli.evaluate import best_and_worst, evaluate_model
from lunar_cli.metrics import image_matrices
from lunar_cli.train import train
from tests.conftest import make_dataset

SIZE = 64


def train_tiny(data_dir: Path, runs_dir: Path, name: str, seed: int = 0, epochs: int = 1, **flags) -> Path:
    """Train a tiny custom U-Net for a few seconds; return its run folder."""
    cfg = load_config(None, {
        "data.crop_size": SIZE, "train.batch_size": 4, "train.epochs": epochs, "train.deterministic": True,
        "train.width": 4, "train.depth": 2, "train.name": name, "data.workers": 0, "data_dir": data_dir,
        "runs_dir": runs_dir, "seed": seed, "device": "cpu", **flags,
    })  # fmt: skip
    result = train(cfg, progress=False)
    return Path(result["run_dir"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data_dir = make_dataset(root / "data", n_render=16, n_real=3, size=(SIZE, SIZE))
    make_split(data_dir)
    run = train_tiny(data_dir, root / "runs", "tiny", epochs=2)
    return data_dir, run


def fresh_run(run: Path, tmp_path: Path) -> Path:
    """Return a copy of the trained run (without results), so each test starts clean."""
    copy = tmp_path / "runs" / "train" / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval.json", "confusion_*", "predictions_*"))
    return copy


def scores(matrix) -> tuple[float, float]:
    """Return (mIoU over classes seen, pixel accuracy) of a confusion matrix, computed here with numpy."""
    m = np.asarray(matrix, dtype=np.float64)
    union = m.sum(0) + m.sum(1) - np.diag(m)
    seen = union > 0
    return float(np.mean(np.diag(m)[seen] / union[seen])), float(np.trace(m) / m.sum())


def test_evaluate_a_run_writes_eval_json_and_figures(setup, tmp_path):
    data_dir, trained = setup
    run = fresh_run(trained, tmp_path)
    result = evaluate_model(run, data_dir=data_dir, device="cpu", progress=False)

    assert result["model"] == str(run / "best.pt")
    assert set(result["splits"]) == {"test", "test_real"}
    for name in ("eval.json", "confusion_test.png", "confusion_test_real.png", "predictions_test.png",
                 "predictions_test_real.png"):  # fmt: skip
        assert (run / name).is_file(), name
        assert str(run / name) in result["files"]
    counts = {s: sum(r["split"] == s for r in read_manifest(data_dir)) for s in ("test", "test_real")}
    saved = json.loads((run / "eval.json").read_text())
    for name, split in result["splits"].items():
        matrix = np.array(split["confusion_matrix"])
        assert split["images"] == counts[name]
        assert matrix.shape == (4, 4) and matrix.sum() == counts[name] * SIZE * SIZE
        miou, accuracy = scores(matrix)
        assert split["miou"] == pytest.approx(miou)
        assert split["pixel_accuracy"] == pytest.approx(accuracy)
        assert split["miou"] == pytest.approx(np.nanmean([v if v is not None else np.nan for v in split["iou"].values()]))
        assert saved["splits"][name]["confusion_matrix"] == split["confusion_matrix"]


def test_scores_match_the_models_own_predictions_and_training_validation(setup, tmp_path):
    """The matrix equals one made here from the engine's logits; val mIoU equals the one training logged for best.pt."""
    import torch

    from lunar_cli.data.cache import build_or_load_cache
    from lunar_cli.data.split import split_pairs
    from lunar_cli.frames import FrameSize
    from lunar_cli.torch_model import frame_logits, load_model

    data_dir, trained = setup
    run = fresh_run(trained, tmp_path)
    result = evaluate_model(run, data_dir=data_dir, splits=["test", "val"], device="cpu", grid=0, progress=False)

    split = build_or_load_cache(split_pairs(data_dir, "test"), FrameSize(), data_dir / "cache", name="test",
                                progress=False)  # fmt: skip
    pred = frame_logits(load_model(run / "best.pt"), torch.from_numpy(np.array(split.images))).argmax(1).numpy()
    truth = np.array(split.masks).astype(np.int64)
    expected = np.bincount((truth * 4 + pred).ravel(), minlength=16).reshape(4, 4)
    assert result["splits"]["test"]["confusion_matrix"] == expected.tolist()
    assert result["splits"]["test"]["resolution"].startswith(f"full resolution ({SIZE}x{SIZE} labels)")

    metrics = json.loads((run / "metrics.json").read_text())
    assert result["splits"]["val"]["miou"] == pytest.approx(metrics["best_val_miou"], abs=1e-9)
    assert not (run / "predictions_test.png").exists()  # grid=0: no prediction figure
    assert torch.is_grad_enabled()  # inference mode did not leak out


def test_full_resolution_scoring_equals_a_matrix_made_by_hand(tmp_path):
    """Frames of 100x70 (not a multiple of 32) fed at scale 0.5: scores count every pixel of the masks as drawn."""
    import cv2
    import torch

    from lunar_cli.classes import read_image_rgb, read_mask
    from lunar_cli.torch_model import load_model

    data_dir = make_dataset(tmp_path / "data", n_render=10, n_real=2, size=(70, 100))
    make_split(data_dir)
    run = train_tiny(data_dir, tmp_path / "runs", "half", **{"data.scale": 0.5, "data.crop_size": 32,
                                                           "data.zoom": [1.0, 1.0]})  # fmt: skip
    result = evaluate_model(run, data_dir=data_dir, splits=["test_real"], device="cpu", grid=0, progress=False)
    assert result["splits"]["test_real"]["resolution"] == "full resolution (100x70 labels), model fed at scale 0.5"

    model = load_model(run / "best.pt", "cpu")
    expected = np.zeros((4, 4), np.int64)
    for row in read_manifest(data_dir):
        if row["split"] != "test_real":
            continue
        photo = read_image_rgb(data_dir / row["image"])
        truth, _ = read_mask(data_dir / row["mask"])
        small = cv2.resize(photo, (50, 35), interpolation=cv2.INTER_AREA)  # half of 100x70
        x = torch.from_numpy(small).permute(2, 0, 1)[None].float() / 255  # the custom U-Net takes 0-1 input
        with torch.inference_mode(), model.precision.autocast():
            logits = model.net(x.contiguous(memory_format=torch.channels_last)).float()
        logits = torch.nn.functional.interpolate(logits, size=(70, 100), mode="bilinear", align_corners=False)
        pred = logits.argmax(1)[0].numpy()
        expected += np.bincount((truth.astype(np.int64) * 4 + pred).ravel(), minlength=16).reshape(4, 4)
    assert expected.sum() == 2 * 70 * 100
    assert result["splits"]["test_real"]["confusion_matrix"] == expected.tolist()


def test_evaluating_val_later_keeps_the_test_results(setup, tmp_path):
    data_dir, trained = setup
    run = fresh_run(trained, tmp_path)
    first = evaluate_model(run, data_dir=data_dir, device="cpu", grid=1, progress=False)
    later = evaluate_model(run, data_dir=data_dir, splits=["val"], device="cpu", grid=1, progress=False)

    assert set(later["splits"]) == {"val"}
    saved = json.loads((run / "eval.json").read_text())
    assert set(saved["splits"]) == {"test", "test_real", "val"}
    assert saved["splits"]["test"]["miou"] == first["splits"]["test"]["miou"]
    assert (run / "confusion_val.png").is_file() and (run / "predictions_val.png").is_file()


def test_a_new_best_pt_drops_results_of_the_old_one(setup, tmp_path):
    data_dir, trained = setup
    run = fresh_run(trained, tmp_path)
    evaluate_model(run, data_dir=data_dir, splits=["val"], device="cpu", grid=0, progress=False)
    stat = (run / "best.pt").stat()
    os.utime(run / "best.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # as if training rewrote it
    evaluate_model(run, data_dir=data_dir, splits=["test"], device="cpu", grid=0, progress=False)
    assert set(json.loads((run / "eval.json").read_text())["splits"]) == {"test"}


def test_a_checkpoint_file_gets_its_results_beside_it(setup, tmp_path):
    data_dir, trained = setup
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(trained / "best.pt", models / "moon.pt")
    result = evaluate_model(models / "moon.pt", data_dir=data_dir, splits=["test_real"], device="cpu", progress=False)

    assert result["model"] == str(models / "moon.pt")
    assert sorted(p.name for p in models.iterdir()) == [
        "moon.pt", "moon_confusion_test_real.png", "moon_eval.json", "moon_predictions_test_real.png",
    ]  # fmt: skip
    assert set(json.loads((models / "moon_eval.json").read_text())["splits"]) == {"test_real"}


def test_bad_targets_are_one_line_errors(setup, tmp_path):
    data_dir, _ = setup
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "notes.pt").write_text("not a model")
    (tmp_path / "model.onnx").write_bytes(b"not onnx either")
    cases = [
        (tmp_path / "empty_run", "no best.pt"),
        (tmp_path / "notes.pt", "not a lunar checkpoint"),
        (tmp_path / "missing", "no such model file"),
        (tmp_path / "model.onnx", "not ONNX exports"),
    ]
    for target, message in cases:
        with pytest.raises(LunarError, match=message) as exc:
            evaluate_model(target, data_dir=data_dir, device="cpu", progress=False)
        assert "\n" not in str(exc.value)


def test_missing_real_photos_are_skipped_unless_they_are_all_that_was_asked(setup, tmp_path, capsys):
    _, trained = setup
    run = fresh_run(trained, tmp_path)
    data_dir = make_dataset(tmp_path / "data", n_render=8, n_real=0, size=(SIZE, SIZE))
    make_split(data_dir)
    result = evaluate_model(run / "best.pt", data_dir=data_dir, device="cpu", grid=0, progress=False)
    assert set(result["splits"]) == {"test"}
    assert "split 'test_real' has no images" in capsys.readouterr().err
    with pytest.raises(LunarError, match="split test_real has no images in .*manifest.csv: add real photos"):
        evaluate_model(run, data_dir=data_dir, splits=["test_real"], device="cpu", progress=False)


def test_image_matrices_add_up_to_the_split_matrix_and_skip_unlabeled_pixels():
    import torch

    from lunar_cli.metrics import confusion_matrix

    gen = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (3, 5, 6), generator=gen)
    target = torch.randint(0, 4, (3, 5, 6), generator=gen)
    target[1, 0, :] = 255
    per_image = image_matrices(pred, target)
    assert per_image.shape == (3, 4, 4)
    assert per_image[1].sum() == 30 - 6 and per_image[0].sum() == 30
    for i in range(3):
        assert torch.equal(per_image[i], confusion_matrix(pred[i], target[i]))
    assert torch.equal(per_image.sum(0), confusion_matrix(pred, target))


def test_best_and_worst_never_show_an_image_twice():
    scores = np.array([0.5, 0.9, np.nan, 0.1, 0.7])
    assert best_and_worst(scores, 2) == ([1, 4], [3, 0])
    assert best_and_worst(scores, 3) == ([1, 4], [3, 0])  # 4 scored images: 2 best + 2 worst
    assert best_and_worst(scores[:2], 3) == ([1], [0])
    assert best_and_worst(np.array([np.nan]), 3) == ([], [])


def test_training_calibrates_best_pt_and_evaluate_reports_calibration_and_tta(setup, tmp_path):
    from lunar_cli.models.checkpoint import load_checkpoint

    data_dir, trained = setup
    run = fresh_run(trained, tmp_path)
    calibration = load_checkpoint(run / "best.pt")["meta"]["calibration"]
    assert calibration["temperature"] > 0 and 0.0 <= calibration["ood_threshold"] <= 1.0
    assert calibration["ece_val"] <= calibration["ece_val_before"] and calibration["val_images"] > 0
    result = evaluate_model(run, data_dir=data_dir, splits=["val", "test"], device="cpu", tta=True, grid=0,
                            progress=False)  # fmt: skip
    val = result["splits"]["val"]
    assert 0.0 <= val["ece"] <= 1.0 and val["temperature"] == calibration["temperature"]
    assert val["out_of_distribution_share"] <= 1 / calibration["val_images"] + 1e-9  # 99th percentile of val
    tta = val["tta"]
    assert set(tta["iou_gain"]) == {"ground", "sky", "small_rocks", "large_rocks"}
    assert tta["miou_gain"] == pytest.approx(tta["miou"] - val["miou"])
    assert np.array(tta["confusion_matrix"]).sum() == np.array(val["confusion_matrix"]).sum()
