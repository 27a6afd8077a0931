"""Every plot writes a real PNG atomically, shows the palette, and refuses bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lunar_cli import plots
from lunar_cli.classes import CLASS_NAMES
from lunar_cli.console import LunarError

H, W = 24, 32


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A flat-coloured image (no grey pixels) and a mask with all four classes."""
    image = np.full((H, W, 3), (200, 170, 140), dtype=np.uint8)
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[:8] = 1
    mask[12:16, 4:10] = 2
    mask[14:22, 18:28] = 3
    return image, mask


def _history(epochs: int = 4) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_miou": 1 - 0.5 / e}
        row.update({f"iou_{n}": 1 - 0.1 * k - 0.4 / e for k, n in enumerate(CLASS_NAMES)})
        rows.append(row)
    return rows


def _calls():
    image, mask = _scene()
    pred = mask.copy()
    pred[0:4, 0:4] = 2
    examples = [("a", image, mask), ("b", image[:, :20], mask[:, :20])]  # rows may differ in size
    predictions = [("x", image, mask, pred), ("y", image, mask, mask)]
    scores = {"unet": {"test": 0.8, "test_real": 0.4}, "r34": {"test": 0.9}}  # r34 lacks test_real
    heat = np.random.default_rng(0).random((4, H, W))
    return {
        "examples_grid": lambda p: plots.plot_examples_grid(p, examples, "t"),
        "heatmaps": lambda p: plots.plot_heatmaps(p, heat, "t"),
        "training_curves": lambda p: plots.plot_training_curves(p, _history(), "t"),
        "confusion_matrix": lambda p: plots.plot_confusion_matrix(p, np.arange(16).reshape(4, 4), CLASS_NAMES, "t"),
        "prediction_grid": lambda p: plots.plot_prediction_grid(p, predictions, "t"),
        "compare_curves": lambda p: plots.plot_compare_curves(p, {"a": _history(), "b": _history(6)}, "t"),
        "bar_comparison": lambda p: plots.plot_bar_comparison(p, scores, "t", "mIoU"),
    }


@pytest.mark.parametrize("name", list(_calls()))
def test_each_plot_writes_a_png(tmp_path: Path, name: str):
    import matplotlib.pyplot as plt

    path = tmp_path / "out" / f"{name}.png"  # parent made on demand
    assert _calls()[name](path) == path
    img = cv2.imread(str(path))
    assert img is not None
    h, w = img.shape[:2]
    assert 200 <= w <= 1600 and 150 <= h <= 1200, (w, h)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files left
    assert plt.get_fignums() == []  # no figure left open


def _colour_count(path: Path, rgb: tuple[int, int, int]) -> int:
    bgr = cv2.imread(str(path))
    return int((bgr == np.array(rgb[::-1], dtype=np.uint8)).all(axis=2).sum())


def test_masks_drawn_in_palette_and_unlabeled_grey(tmp_path: Path):
    image, mask = _scene()
    clean = plots.plot_examples_grid(tmp_path / "clean.png", [("a", image, mask)], "t")
    for rgb in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]:
        assert _colour_count(clean, rgb) > 50, rgb
    assert _colour_count(clean, (0, 0, 0)) > 50  # ground is black
    assert _colour_count(clean, plots.UNLABELED_RGB) < 10  # a few anti-aliased text pixels at most
    mask[20:, :] = 255
    grey = plots.plot_examples_grid(tmp_path / "grey.png", [("a", image, mask)], "t")
    assert _colour_count(grey, plots.UNLABELED_RGB) > 50  # unlabeled shown grey, and in the legend


def test_existing_file_replaced_only_on_success(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from matplotlib.figure import Figure

    image, mask = _scene()
    path = tmp_path / "fig.png"
    path.write_bytes(b"old")
    with pytest.raises(LunarError, match="24x24"):
        plots.plot_examples_grid(path, [("a", image, mask[:, :24])], "t")  # sizes differ
    assert path.read_bytes() == b"old"

    def broken_savefig(self, target, *args, **kwargs):
        # Fails half-way through writing, as a full disk or a renderer error would.
        if hasattr(target, "write"):
            target.write(b"partial")
        else:
            Path(target).write_bytes(b"partial")
        raise RuntimeError("renderer failed")

    with monkeypatch.context() as m:
        m.setattr(Figure, "savefig", broken_savefig)
        with pytest.raises(RuntimeError):
            plots.plot_examples_grid(path, [("a", image, mask)], "t")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]

    plots.plot_examples_grid(path, [("a", image, mask)], "t")
    assert cv2.imread(str(path)) is not None


def test_bad_inputs_are_user_errors(tmp_path: Path):
    image, mask = _scene()
    out = tmp_path / "x.png"
    with pytest.raises(LunarError, match="class index"):
        plots.plot_examples_grid(out, [("a", image, np.full((H, W), 7, np.uint8))], "t")
    with pytest.raises(LunarError, match=r"\(H, W\)"):
        plots.plot_examples_grid(out, [("a", image, np.stack([mask] * 3, axis=2))], "t")
    with pytest.raises(LunarError, match="no examples"):
        plots.plot_examples_grid(out, [], "t")
    with pytest.raises(LunarError, match="heatmaps"):
        plots.plot_heatmaps(out, np.zeros((H, W)), "t")
    with pytest.raises(LunarError, match="does not match"):
        plots.plot_confusion_matrix(out, np.zeros((3, 3)), CLASS_NAMES, "t")
    with pytest.raises(LunarError, match="empty"):
        plots.plot_training_curves(out, [], "t")
    assert not out.exists()


def test_partial_history_and_grayscale_image(tmp_path: Path):
    history = _history(3)
    history[1]["val_loss"] = None  # an epoch without validation
    history[2]["val_miou"] = float("nan")
    assert cv2.imread(str(plots.plot_training_curves(tmp_path / "c.png", history, "t"))) is not None
    image, mask = _scene()
    gray = image[:, :, 0]
    assert cv2.imread(str(plots.plot_examples_grid(tmp_path / "g.png", [("a", gray, mask)], "t"))) is not None
