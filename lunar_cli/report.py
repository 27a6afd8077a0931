"""Human-readable summaries of command results (rich tables on stdout)."""

from __future__ import annotations

from typing import Callable

from lunar_cli.classes import CLASS_NAMES
from lunar_cli.console import map_leaves, number, printable, stdout


def _table(title: str, columns: list[str], rows: list[list[object]]):
    from rich.table import Table  # rich loads on first output, not for lunar --help

    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    return table


def _fetch(result: dict) -> None:
    dataset = result.get("dataset")
    if dataset:
        counts = dataset.get("counts", {})
        stdout().print(_table(f"dataset in {result['data_dir']} (source: {dataset.get('source')})", ["folder", "files"],
                         [[k, v] for k, v in counts.items()]))
    for path in result.get("models", []):
        stdout().print(f"model: {path}")


def _split(result: dict) -> None:
    counts = result["counts"]
    total = result["total"] or 1
    rows = [[name, n, f"{100 * n / total:.1f}%"] for name, n in counts.items()]
    rows.append(["total", result["total"], "100.0%"])
    stdout().print(_table(f"split (seed {result['seed']}, masks: {result['mask_source']})", ["split", "pairs", "share"], rows))
    if result["skipped"]:
        stdout().print(f"skipped {len(result['skipped'])} bad pair(s)")
    stdout().print(f"manifest: {result['manifest']}")


def _train(result: dict) -> None:
    best = result.get("best") or {}
    rows = [["mIoU", number(best.get("val_miou"))], ["pixel accuracy", number(best.get("val_pixel_accuracy"))]]
    rows += [[f"IoU {k[4:]}", number(v)] for k, v in best.items() if k.startswith("iou_")]
    stdout().print(_table(f"{result['backbone']}: best val epoch {result['best_epoch']} of {result['epochs_run']}",
                     ["metric", "value"], rows))
    stdout().print(f"run: {result['run_dir']}  (best.pt, last.pt, history.csv, curves.png, metrics.json)")


def _eda(result: dict) -> None:
    sets = [s for s in ("rendered", "real", "all") if s in result["class_shares"]]
    rows = []
    for name in CLASS_NAMES:
        rows.append([name, *[f"{100 * result['class_shares'][s][name]:.2f}%" for s in sets],
                     *[f"{result['class_presence_percent'][s][name]:.1f}%" for s in sets]])
    columns = ["class", *[f"pixels {s}" for s in sets], *[f"in images {s}" for s in sets]]
    stdout().print(_table(f"eda: {result['counts']}", columns, rows))
    off = result["off_palette"]
    stdout().print(f"off-palette mask pixels: mean {100 * off['mean_share']:.3f}%, max {100 * off['max_share']:.3f}%, "
              f"{off['masks_with_off_palette']} of {off['masks']} masks")
    stdout().print(f"figures and numbers: {result['out_dir']}")


def _evaluate(result: dict) -> None:
    splits = result["splits"]
    rows = [[f"IoU {n}", *[number(splits[s]["iou"].get(n)) for s in splits]] for n in CLASS_NAMES]
    rows += [["mIoU", *[number(splits[s]["miou"]) for s in splits]],
             ["pixel accuracy", *[number(splits[s]["pixel_accuracy"]) for s in splits]]]
    if all("tta" in splits[s] for s in splits):
        rows += [[f"with --tta: IoU {n}", *[number(splits[s]["tta"]["iou"].get(n)) for s in splits]] for n in CLASS_NAMES]
        rows += [["with --tta: mIoU", *[number(splits[s]["tta"]["miou"]) for s in splits]]]
    rows += [["calibration error (ECE)", *[number(splits[s].get("ece")) for s in splits]],
             ["out-of-distribution images", *[_share(splits[s].get("out_of_distribution_share")) for s in splits]],
             ["images", *[splits[s]["images"] for s in splits]]]
    stdout().print(_table(f"evaluate {result['model']} ({next(iter(splits.values()))['resolution']})", ["metric", *splits],
                     rows))
    stdout().print(f"files: {len(result['files'])} written beside the model (eval.json, confusion and prediction figures)")


def _predict(result: dict) -> None:
    records = result["records"]
    stdout().print(f"model: {result['model']}")
    for record in records[:20]:
        fractions = "  ".join(f"{k} {100 * v:.1f}%" for k, v in record["class_fractions"].items())
        at = f" ({record['time_s']:.2f} s)" if record.get("time_s") is not None else ""
        frame = f" frame {record['frame']}{at}" if "frame" in record else ""
        stdout().print(f"{record['input']}{frame} -> {', '.join(record['output'])}  ({fractions})")
        if "hazard" in record and record["hazard"].get("largest_safe_region"):
            region = record["hazard"]["largest_safe_region"]
            stdout().print(f"    safe ground: {100 * record['hazard']['safe_fraction']:.1f}%, largest safe circle at "
                      f"{region['center_xy']} radius {region['radius_px']} px")
    if len(records) > 20:
        stdout().print(f"... and {len(records) - 20} more")
    what = "frame(s)" if any("frame" in r for r in records) else "image(s)"
    stdout().print(f"{len(records)} {what} done in {result['seconds']:.1f} s ({result['frames_per_second']:.2f}/s), "
                   f"{result['written']} file(s) written, {len(result['failed'])} failed")  # fmt: skip


def _share(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _export(result: dict) -> None:
    precision = ", int8" if result.get("precision") == "int8" else ""
    stdout().print(f"{result['model']} -> {result['output']} ({result['format']}{precision}, {result['bytes'] / 1e6:.1f} MB)")
    stdout().print(f"checked on {result['frames_checked']} rendered scenes: class agrees on "
              f"{100 * result['class_agreement']:.3f}% of pixels, largest probability difference "
              f"{result['max_probability_difference']:.2g}")


def _benchmark(result: dict) -> None:
    rows = [[f["form"], f"{f['bytes'] / 1e6:.2f}", f"{f['ms_per_frame']:.1f}", f"{f['images_per_second']:.2f}",
             number(f["miou"]), "" if i == 0 else _signed(f["miou_drop"])] for i, f in enumerate(result["forms"])]  # fmt: skip
    machine = result["machine"]
    stdout().print(_table(f"benchmark {result['model']} on {machine['cpu']} ({machine['cores']} cores, "
                          f"{machine['device']})", ["form", "file MB", "ms/frame", "images/s",
                                                    f"mIoU {result['split']}", "drop vs fp32"], rows))  # fmt: skip
    stdout().print(f"timed on {result['timed_frames']} (model time; median of {result['runs']} runs after "
                   f"{result['warmup']} warm-up, images/s in batches of {result['batch_size']}); mIoU on "
                   f"{result['images']} {result['split']} frames, {result['resolution']}")  # fmt: skip


def _signed(value) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def _compare(result: dict) -> None:
    stdout().print(result["table"])
    stdout().print(f"figures: {', '.join(result['files'])}")


RENDERERS: dict[str, Callable[[dict], None]] = {"fetch": _fetch, "split": _split, "train": _train, "eda": _eda, "evaluate": _evaluate,
                                            "predict": _predict, "compare": _compare, "export": _export,
                                            "benchmark": _benchmark}


def show(command: str, result: dict) -> None:
    """Print the result of ``command`` for a person reading a terminal."""
    # File names with non-UTF-8 bytes print as \\xNN, on any terminal.
    RENDERERS[command](map_leaves(result, lambda v: printable(v) if isinstance(v, str) else v))
