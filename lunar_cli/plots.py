"""PNG figures for EDA, training and evaluation, each with a title and a legend.

Images are (H, W, 3) uint8 RGB (grayscale is accepted), masks are (H, W) class indices
shown in the dataset palette; 255 (unlabeled) is shown grey. Every function writes one
PNG atomically and returns its path.

Figures are made with ``matplotlib.figure.Figure`` rather than pyplot: such a figure
renders with the Agg canvas whatever backend is active (no display needed, no global
``matplotlib.use`` switch), and pyplot never registers it, so nothing has to be closed
and no figure can leak across hundreds of epochs.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from lunar_cli.classes import CLASS_NAMES, CLASSES, IGNORE_INDEX, NUM_CLASSES, PALETTE, encode_mask, to_rgb_uint8
from lunar_cli.console import LunarError
from lunar_cli.files import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100  # compact files; a 3-panel figure is about 1000 px wide
PANEL_IN = 3.2  # width of one image panel in inches
UNLABELED_RGB = (128, 128, 128)
EDGE = "0.35"  # outline drawn around colour swatches and bars so black ground stays visible
MAX_INLINE_LEGEND = 8  # runs named in a legend inside the mIoU plot; more go in rows under the figure


def plot_examples_grid(path: Path, rows: list[tuple[str, np.ndarray, np.ndarray]], title: str) -> Path:
    """Write one row per (label, image, mask): image | mask, labelled on the left; return ``path``."""
    if not rows:
        raise LunarError(f"{path}: no examples to plot")
    pairs = [_pair(image, mask) for _, image, mask in rows]
    fig = _figure(2 * PANEL_IN, sum(_panel_height(img) for img, _ in pairs) + 0.9)
    axes = fig.subplots(len(rows), 2, squeeze=False, height_ratios=[_panel_height(img) for img, _ in pairs])
    for r, ((label, _, _), (image, mask)) in enumerate(zip(rows, pairs)):
        _show(axes[r, 0], image, "image" if r == 0 else None)
        _show(axes[r, 1], _mask_rgb(mask), "mask" if r == 0 else None)
        axes[r, 0].set_ylabel(label, fontsize=9)
    return _finish(fig, path, title, unlabeled=any(_has_unlabeled(m) for _, m in pairs))


def plot_heatmaps(path: Path, heatmaps: np.ndarray, title: str) -> Path:
    """Write one panel per class of a (C, H, W) 0..1 map (e.g. frequencies), each with a colorbar.

    Each panel is scaled to its own maximum: rocks cover a few percent of any location,
    and on a shared 0..1 scale their maps would look empty.
    """
    maps = np.asarray(heatmaps, dtype=np.float32)
    if maps.ndim != 3:
        raise LunarError(f"{path}: heatmaps must be (classes, H, W), got shape {maps.shape}")
    names = _names(maps.shape[0])
    width = 2.6
    fig = _figure(width * len(maps), width * maps.shape[1] / maps.shape[2] + 1.2)
    axes = np.atleast_1d(fig.subplots(1, len(maps)))
    for ax, name, heat in zip(axes, names, maps):
        im = ax.imshow(heat, cmap="viridis", vmin=0, vmax=max(float(heat.max()), 1e-6), interpolation="nearest")
        _frame(ax, name)
        fig.colorbar(im, ax=ax, shrink=0.8)
    return _finish(fig, path, title, names=[n for n in names if n in CLASS_NAMES])


def plot_training_curves(path: Path, history: list[dict[str, Any]], title: str) -> Path:
    """Write loss (train, val) and IoU (mIoU, per class) against epoch from history rows.

    Rows have ``epoch``, ``train_loss``, ``val_loss``, ``val_miou`` and ``iou_<class>``;
    missing, None or NaN values are skipped, so partial rows are fine.
    """
    if not history:
        raise LunarError(f"{path}: training history is empty; nothing to plot")
    fig = _figure(10, 3.9)
    ax_loss, ax_iou = fig.subplots(1, 2)
    _line(ax_loss, history, "train_loss", "train", color="tab:orange")
    _line(ax_loss, history, "val_loss", "val", color="tab:purple")
    ax_loss.set_title("loss", fontsize=10)
    _line(ax_iou, history, "val_miou", "mIoU", color="0.5", linestyle="--", linewidth=2.5)
    for cls in CLASSES:
        _line(ax_iou, history, f"iou_{cls.name}", cls.name, color=_colour(cls.rgb))
    ax_iou.set_title("validation IoU", fontsize=10)
    ax_iou.set_ylim(0, 1.02)
    for ax in (ax_loss, ax_iou):
        _epoch_axis(ax)
    return _finish(fig, path, title, class_legend=False)


def plot_confusion_matrix(path: Path, matrix: Any, class_names: Sequence[str], title: str) -> Path:
    """Write the (C, C) confusion matrix (rows true, cols predicted) as an annotated heatmap.

    Each row is divided by its total, so a cell reads "share of this true class
    predicted as that class"; a class with no pixels gets an empty row.
    """
    counts = np.asarray(matrix, dtype=np.float64)
    n = len(class_names)
    if counts.shape != (n, n):
        raise LunarError(f"{path}: confusion matrix shape {counts.shape} does not match {n} class names")
    totals = counts.sum(axis=1, keepdims=True)
    values = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    fig = _figure(1.3 * n + 2.2, 1.1 * n + 1.8)
    ax = fig.subplots()
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1.0)
    fig.colorbar(im, ax=ax, label="share of true class", shrink=0.85)
    empty_rows = counts.sum(axis=1) == 0
    for i in range(n):
        for j in range(n):
            text = "-" if empty_rows[i] else f"{values[i, j]:.2f}"  # "-": no pixels of this true class
            colour = "white" if values[i, j] > 0.55 else "black"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=9)
    ax.set_xticks(range(n), class_names, rotation=20, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return _finish(fig, path, title, names=[c for c in class_names if c in CLASS_NAMES])


def plot_prediction_grid(
    path: Path, rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], title: str
) -> Path:
    """Write one row per (label, image, truth, prediction): image | truth | prediction; return ``path``.

    Under each prediction is its pixel accuracy against the truth (unlabeled pixels left out).
    """
    if not rows:
        raise LunarError(f"{path}: no predictions to plot")
    triples = []
    for _, image, truth, pred in rows:
        image, truth = _pair(image, truth)
        _, pred = _pair(image, pred)
        triples.append((image, truth, pred))
    heights = [_panel_height(img) for img, _, _ in triples]
    fig = _figure(3 * PANEL_IN, sum(heights) + 0.35 * len(rows) + 0.9)
    axes = fig.subplots(len(rows), 3, squeeze=False, height_ratios=heights)
    for r, ((label, *_), (image, truth, pred)) in enumerate(zip(rows, triples)):
        first = r == 0
        _show(axes[r, 0], image, "image" if first else None)
        _show(axes[r, 1], _mask_rgb(truth), "truth" if first else None)
        _show(axes[r, 2], _mask_rgb(pred), "prediction" if first else None)
        axes[r, 0].set_ylabel(label, fontsize=9)
        labeled = truth != IGNORE_INDEX
        if labeled.any():
            accuracy = (pred[labeled] == truth[labeled]).mean()
            axes[r, 2].set_xlabel(f"pixel accuracy {accuracy:.1%}", fontsize=8)
    unlabeled = any(_has_unlabeled(t) or _has_unlabeled(p) for _, t, p in triples)
    return _finish(fig, path, title, unlabeled=unlabeled)


def plot_compare_curves(path: Path, runs: dict[str, list[dict[str, Any]]], title: str) -> Path:
    """Write the loss curves (val solid, train dashed) and val mIoU of several runs overlaid."""
    from matplotlib.lines import Line2D  # heavy: only when a figure is drawn

    if not runs:
        raise LunarError(f"{path}: no runs to compare")
    # Many runs: their names go in a legend under both plots, in rows of five, so the plots keep their size.
    many = len(runs) > MAX_INLINE_LEGEND
    fig = _figure(10, 3.9 + (0.22 * math.ceil(len(runs) / 5) if many else 0))
    ax_loss, ax_iou = fig.subplots(1, 2)
    for k, (name, history) in enumerate(runs.items()):
        colour = f"C{k % 10}"
        _line(ax_loss, history, "val_loss", None, color=colour)
        _line(ax_loss, history, "train_loss", None, color=colour, linestyle=":")
        _line(ax_iou, history, "val_miou", name, color=colour)
    ax_loss.set_title("loss", fontsize=10)
    styles = [Line2D([], [], color="0.3", label="val"), Line2D([], [], color="0.3", linestyle=":", label="train")]
    ax_loss.legend(handles=styles, fontsize=8)
    ax_iou.set_title("validation mIoU", fontsize=10)
    ax_iou.set_ylim(0, 1.02)
    for ax in (ax_loss, ax_iou):
        _epoch_axis(ax, legend=ax is ax_iou and not many)
    if many:
        fig.legend(*ax_iou.get_legend_handles_labels(), loc="outside lower center", ncol=5, frameon=False, fontsize=7)
    return _finish(fig, path, title, class_legend=False)


def plot_bar_comparison(path: Path, values: dict[str, dict[str, float]], title: str, ylabel: str) -> Path:
    """Write grouped bars: one group per key of ``values``, one bar per inner key (e.g. split).

    ``{"unet": {"test": 0.8, "test_real": 0.4}, ...}``; missing or None values leave a gap.
    """
    series = list(dict.fromkeys(key for inner in values.values() for key in inner))
    if not series:
        raise LunarError(f"{path}: no values to compare")
    groups = list(values)
    table = {name: [_finite_or_nan(values[g].get(name)) for g in groups] for name in series}
    width = 0.8 / len(series)
    fig = _figure(max(5.0, 1.1 * len(groups) * max(len(series), 2) ** 0.5 + 2), 4.0)
    ax = fig.subplots()
    x = np.arange(len(groups))
    for k, (name, ys) in enumerate(table.items()):
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, ys, width, label=name, color=f"C{k % 10}")
        ax.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.3g}" for v in ys], padding=2, fontsize=8)
    long_names = max(len(g) for g in groups) * len(groups) > 60
    ax.set_xticks(x, groups, rotation=20 if long_names else 0, ha="right" if long_names else "center")
    ax.set_ylabel(ylabel)
    top = np.nanmax([v for ys in table.values() for v in ys] + [1e-9])
    ax.set_ylim(0, top * 1.18)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8)
    return _finish(fig, path, title, class_legend=False)


# --- shared pieces -------------------------------------------------------------------


def _figure(width_in: float, height_in: float) -> Figure:
    from matplotlib.figure import Figure  # heavy: only when a figure is drawn

    # Constrained layout keeps titles, colorbars and the legend below the axes from overlapping.
    return Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")


def _finish(
    fig: Figure,
    path: Path,
    title: str,
    *,
    class_legend: bool = True,
    names: Sequence[str] = CLASS_NAMES,
    unlabeled: bool = False,
) -> Path:
    """Add the title and class legend, render to memory, then write ``path`` atomically."""
    fig.suptitle(title, fontsize=12)
    if class_legend and (names or unlabeled):
        fig.legend(
            handles=_class_handles(names, unlabeled),
            loc="outside lower center",
            ncol=len(names) + unlabeled,
            frameon=False,
            fontsize=9,
        )
    # Rendering can fail (bad data, fonts); doing it before opening the target means an
    # existing PNG is only replaced by a complete one.
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


def _class_handles(names: Sequence[str], unlabeled: bool) -> list[Any]:
    from matplotlib.patches import Patch  # heavy: only when a figure is drawn

    handles = [Patch(facecolor=_class_colour(n), edgecolor=EDGE, label=n) for n in names]
    if unlabeled:
        handles.append(Patch(facecolor=_colour(UNLABELED_RGB), edgecolor=EDGE, label="unlabeled"))
    return handles


def _pair(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (RGB uint8 image, (H, W) mask) after checking they cover the same pixels."""
    rgb = to_rgb_uint8(np.asarray(image), "image")
    m = np.asarray(mask)
    if m.ndim != 2:
        raise LunarError(f"mask must be (H, W) class indices, got shape {m.shape}")
    if m.shape != rgb.shape[:2]:
        raise LunarError(f"image is {rgb.shape[1]}x{rgb.shape[0]} but mask is {m.shape[1]}x{m.shape[0]}")
    return rgb, m


def _mask_rgb(mask: np.ndarray) -> np.ndarray:
    """Return the palette colours of a class-index mask; unlabeled (255) pixels grey."""
    unlabeled = mask == IGNORE_INDEX
    if not unlabeled.any():
        return encode_mask(mask)
    rgb = encode_mask(np.where(unlabeled, 0, mask))
    rgb[unlabeled] = UNLABELED_RGB
    return rgb


def _has_unlabeled(mask: np.ndarray) -> bool:
    return bool((mask == IGNORE_INDEX).any())


def _panel_height(image: np.ndarray) -> float:
    # Very tall or very wide images still get a readable panel.
    return float(np.clip(PANEL_IN * image.shape[0] / image.shape[1], 1.0, 2.5 * PANEL_IN))


def _show(ax: Axes, rgb: np.ndarray, title: str | None = None) -> None:
    ax.imshow(rgb, interpolation="nearest")
    _frame(ax, title)


def _frame(ax: Axes, title: str | None) -> None:
    # Ticks off but the frame kept: a mostly black (ground) mask still shows its edge.
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)


def _line(ax: Axes, history: list[dict[str, Any]], key: str, label: str | None, **style: Any) -> None:
    """Plot ``key`` against epoch over the rows that have a finite value for it."""
    points = [
        (row.get("epoch", i + 1), float(row[key]))
        for i, row in enumerate(history)
        if row.get(key) is not None and math.isfinite(float(row[key]))
    ]
    if points:
        xs, ys = zip(*points)
        style.setdefault("linewidth", 1.8)
        ax.plot(xs, ys, label=label, marker="o" if len(points) < 30 else None, markersize=3, **style)


def _epoch_axis(ax: Axes, legend: bool = True) -> None:
    from matplotlib.ticker import MaxNLocator  # heavy: only when a figure is drawn

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _colour(rgb: Sequence[int]) -> tuple[float, float, float]:
    return (rgb[0] / 255, rgb[1] / 255, rgb[2] / 255)


def _class_colour(name: str) -> tuple[float, float, float]:
    """Return the palette colour of the class called ``name``; grey for other names."""
    if name in CLASS_NAMES:
        return _colour(PALETTE[CLASS_NAMES.index(name)])
    return (0.6, 0.6, 0.6)


def _finite_or_nan(value: Any) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else math.nan


def _names(count: int) -> list[str]:
    return list(CLASS_NAMES) if count == NUM_CLASSES else [f"class {i}" for i in range(count)]


def plot_side_by_side_predictions(path: Path, rows: list, model_names: Sequence[str], title: str) -> Path:
    """Write one row per image: image | truth | each model's prediction (its mIoU below); return ``path``.

    ``rows`` are (label, image, truth, [prediction per model], [mIoU per model]).
    """
    if not rows:
        raise LunarError(f"{path}: no images to compare predictions on")
    columns = 2 + len(model_names)
    panel = 3.2 if columns <= 4 else 2.6 if columns <= 6 else 2.1  # keeps wide grids within ~2000 px
    heights = [panel * _panel_height(image) / 3.2 for _, image, *_ in rows]
    fig = _figure(columns * panel, sum(heights) + 0.35 * len(rows) + 1.0)
    axes = fig.subplots(len(rows), columns, squeeze=False, height_ratios=heights)
    for r, (label, image, truth, preds, scores) in enumerate(rows):
        image, truth = _pair(image, truth)
        first = r == 0
        _show(axes[r, 0], image, "image" if first else None)
        _show(axes[r, 1], _mask_rgb(truth), "truth" if first else None)
        axes[r, 0].set_ylabel(label, fontsize=8)
        for c, (name, pred, score) in enumerate(zip(model_names, preds, scores), start=2):
            _show(axes[r, c], _mask_rgb(_pair(image, pred)[1]), name if first else None)
            axes[r, c].set_xlabel("mIoU n/a" if math.isnan(score) else f"mIoU {score:.2f}", fontsize=8)
    return _finish(fig, path, title)
