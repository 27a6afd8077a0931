"""int8 against fp32 for the built-in model: `lunar benchmark`'s table, and QDQ against QOperator.

Data: `lunar fetch --source synthetic` (300 rendered scenes and 12 real-like photos at
480x320, seed 42) split as `lunar split` does (90 test, 63 val frames); int8 files are
calibrated on 32 val frames, mIoU is scored on the synthetic test split at 480x320.

(a) `lunar benchmark builtin --data-dir D` itself: each form's file size, ms per 720x480
    frame (one at a time), images/s (batches of 4), test mIoU and its drop against fp32.
(b) The quantisation format (lunar_cli.quantize.QUANT_FORMAT is chosen from this): one fp32
    export quantised as QDQ and as QOperator; ms per 720x480 frame over rounds alternating
    the three files (medians, min-max), size, test mIoU, and the pixels whose class agrees
    with the fp32 file on the test frames.

    .venv/bin/python bench/bench_int8.py            # print the tables
    .venv/bin/python bench/bench_int8.py --write    # also update bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; before torch loads

import numpy as np
from bench_results import machine, update_section

REPO = Path(__file__).resolve().parent.parent


def here(text: str, data: Path) -> str:
    """Return ``text`` with the temporary data folder named for what it is."""
    return text.replace(f"of {data}", "of the synthetic data")


def make_data(work: Path) -> Path:
    """Generate and split the synthetic dataset in ``work/data``; return the folder."""
    from lunar_cli.cli import run

    data = work / "data"
    assert run(["fetch", "--source", "synthetic", "--data-dir", str(data)]) == 0
    assert run(["split", "--data-dir", str(data)]) == 0
    return data


def benchmark_table(data: Path, work: Path, runs: int) -> tuple[list[str], dict]:
    """Return the markdown lines of table (a) and the benchmark's result."""
    from lunar_cli.benchmark import benchmark_model

    result = benchmark_model("builtin", data_dir=data, runs_dir=work / "runs", runs=runs, device="cpu")
    lines = ["| form | file MB | ms per 720x480 frame | images/s (batch 4) | test mIoU | drop vs PyTorch fp32 |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for form in result["forms"]:
        drop = "" if form["form"] == "pytorch fp32" else f"{form['miou_drop']:+.4f}"
        lines.append(f"| {form['form']} | {form['bytes'] / 1e6:.2f} | {form['ms_per_frame']:.0f} | "
                     f"{form['images_per_second']:.2f} | {form['miou']:.4f} | {drop} |")  # fmt: skip
    by = {f["form"]: f for f in result["forms"]}
    fp32, int8 = by["onnx fp32"], by["onnx int8"]
    lines += ["", f"int8 against ONNX fp32: {fp32['bytes'] / int8['bytes']:.1f}x smaller, "
              f"{fp32['ms_per_frame'] / int8['ms_per_frame']:.2f}x faster per frame, "
              f"{int8['images_per_second'] / fp32['images_per_second']:.2f}x the images/s; mIoU "
              f"{int8['miou'] - fp32['miou']:+.4f}. Calibrated on {here(int8['quantization']['calibration'], data)}; its "
              "class agrees "
              f"with PyTorch on {100 * int8['class_agreement']:.2f}% of the pixels of export's check. Median of {runs} "
              f"runs after 2 warm-up, one form after the other."]  # fmt: skip
    return lines, result


def formats_table(data: Path, work: Path, rounds: int) -> tuple[list[str], float]:
    """Return the markdown lines of table (b) and how many times faster int8 QDQ ran than ONNX fp32."""
    from lunar_cli.benchmark import FRAME_SIZE, predictor_miou
    from lunar_cli.data.cache import build_or_load_cache, cache_folder
    from lunar_cli.data.scene import render_scene
    from lunar_cli.data.split import split_pairs
    from lunar_cli.export import export_model
    from lunar_cli.frames import model_scale_frames
    from lunar_cli.onnx_model import load_onnx
    from lunar_cli.quantize import calibration_set, quantize_onnx

    fp32 = work / "fp32.onnx"
    export_model("builtin", fp32, "onnx", work / "runs")
    base = load_onnx(fp32)
    frames, source = calibration_set(base.spec, data, None, 32)
    files = {"ONNX fp32": fp32}
    for fmt in ("QDQ", "QOperator"):
        files[f"int8 {fmt}"] = work / f"int8_{fmt}.onnx"
        start = time.perf_counter()
        quantize_onnx(fp32, files[f"int8 {fmt}"], frames, base.spec.pad_multiple, base.spec.meta, source, fmt)
        print(f"{fmt}: quantised in {time.perf_counter() - start:.0f} s", flush=True)
    models = {name: load_onnx(path) for name, path in files.items()}
    rng = np.random.default_rng(0)
    frame = model_scale_frames(base.spec.frame_size, [render_scene(rng, FRAME_SIZE[1], FRAME_SIZE[0])[0]])
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.logits(frame)  # warm-up
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.logits(frame)
            times[name].append(1000 * (time.perf_counter() - start))
    test = build_or_load_cache(split_pairs(data, "test"), base.spec.frame_size, cache_folder(data), name="test")
    rows = np.arange(len(test))
    classes = {name: np.concatenate([model.logits(np.ascontiguousarray(test.images[i : i + 1])).argmax(1).astype(np.uint8).ravel()
                                     for i in rows]) for name, model in models.items()}  # fmt: skip
    lines = ["| file | MB | ms per 720x480 frame | test mIoU | pixels of the fp32 file's class |",
             "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name, model in models.items():
        miou = predictor_miou(model, test, rows, 4, None)["miou"]
        agree = float((classes[name] == classes["ONNX fp32"]).mean())
        lines.append(f"| {name} | {files[name].stat().st_size / 1e6:.2f} | {statistics.median(times[name]):.0f} "
                     f"({min(times[name]):.0f}-{max(times[name]):.0f}) | {miou:.4f} | {100 * agree:.2f}% |")  # fmt: skip
        print(lines[-1], flush=True)
    lines += ["", f"Both calibrated on {here(source, data)}, per-channel int8 weights and uint8 activations; {rounds} rounds "
              "alternating the three files after a warm-up each."]  # fmt: skip
    return lines, statistics.median(times["ONNX fp32"]) / statistics.median(times["int8 QDQ"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per form in table (a)")
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds in table (b)")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lunar-bench-int8-") as tmp:
        work = Path(tmp)
        data = make_data(work)
        formats, speedup = formats_table(data, work, args.rounds)
        table, result = benchmark_table(data, work, args.runs)
    by = {f["form"]: f for f in result["forms"]}
    drop = by["pytorch fp32"]["miou"] - by["onnx int8"]["miou"]
    text = "\n".join([
        f"## int8 against fp32: lunar benchmark builtin ({date.today().isoformat()})", "",
        f"Machine: {machine()}. Command: `python bench/bench_int8.py --write`. Synthetic data: 300 rendered scenes at "
        "480x320 (`lunar fetch --source synthetic`, seed 42), test split 90 frames scored at 480x320.", "",
        "(a) `lunar benchmark builtin --data-dir D`:", "", *table, "",
        "(b) The quantisation format (QDQ against QOperator, same calibration):", "", *formats, "",
        f"Targets: int8 mIoU within 0.01 of fp32 on the synthetic test split: {'met' if abs(drop) <= 0.01 else 'missed'} "
        f"(drop {drop:+.4f}); int8 faster than ONNX fp32 on this CPU: {speedup:.2f}x in the alternating rounds of (b), "
        f"{by['onnx fp32']['ms_per_frame'] / by['onnx int8']['ms_per_frame']:.2f}x in (a); the file "
        f"{by['onnx fp32']['bytes'] / by['onnx int8']['bytes']:.1f}x smaller than ONNX fp32.",
    ])  # fmt: skip
    print(text)
    if args.write:
        update_section(REPO / "bench" / "RESULTS.md", "## int8 against fp32", text)


if __name__ == "__main__":
    main()
