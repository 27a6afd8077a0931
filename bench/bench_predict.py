"""Time `lunar predict` against bare PyTorch on the same model and photos, on this machine.

The model is the custom U-Net (random weights; speed does not depend on them) saved
as a lunar checkpoint at 256x256 with mean 0 / std 1; the photos are generated 720x480
PNGs. Two questions:

(a) Throughput on a folder, images/s. Four ways, run alternately (A B C D A B C D ...):
    bare forward   - forward only, batch 8, on tensors already decoded, resized and
                     normalised, under torch.inference_mode (no file I/O at all);
    bare pipeline  - a plain cv2/torch loop doing the work predict does: decode, resize
                     to 256, forward (batch 8), upsample logits to 720x480, argmax,
                     palette colours, PNG encode + write (the fair comparison);
    run_predict    - lunar_cli.predict.run_predict in-process, after a warm-up: the
                     same work plus listing inputs, planning outputs, loading the
                     checkpoint, class fractions and atomic (temp + rename) writes;
    lunar CLI      - `python -m lunar_cli predict DIR -o OUT --model CKPT --device cpu
                     --json` as a whole process: run_predict plus Python and torch
                     start-up and the CLI (typer, config).
(b) Single-image latency of a whole process, seconds: `lunar predict one.png -o m.png`
    against `python -c` doing one forward of the same model (and against a `python -c`
    bare pipeline for one photo, and `import torch` alone as the floor).

Every process gets OMP_WAIT_POLICY=PASSIVE (the CLI sets it itself), so the threading
is the same on both sides. Medians over rounds, with min and max.

    .venv/bin/python bench/bench_predict.py            # print the table
    .venv/bin/python bench/bench_predict.py --write    # also update bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; before torch loads

import numpy as np

RESULTS = Path(__file__).with_name("RESULTS.md")
REPO = Path(__file__).resolve().parent.parent

# One forward of the checkpoint's model on one image: the smallest honest PyTorch script.
BARE_FORWARD = """\
import torch
from lunar_cli.models.unet import UNet
ckpt = torch.load({ckpt!r}, map_location="cpu", weights_only=True)
model = UNet(num_classes=ckpt["meta"]["num_classes"], **ckpt["meta"]["model_kwargs"])
model.load_state_dict(ckpt["model"])
with torch.inference_mode():
    model.eval()(torch.rand(1, 3, {size}, {size})).argmax(1)
"""

# The same, plus what predict does around it for one photo.
BARE_ONE_PHOTO = """\
import cv2, numpy as np, torch
import torch.nn.functional as F
from lunar_cli.models.unet import UNet
ckpt = torch.load({ckpt!r}, map_location="cpu", weights_only=True)
model = UNet(num_classes=ckpt["meta"]["num_classes"], **ckpt["meta"]["model_kwargs"])
model.load_state_dict(ckpt["model"])
photo = cv2.cvtColor(cv2.imread({photo!r}), cv2.COLOR_BGR2RGB)
small = cv2.resize(photo, ({size}, {size}), interpolation=cv2.INTER_AREA)
with torch.inference_mode():
    logits = model.eval()(torch.from_numpy(small).permute(2, 0, 1)[None].float() / 255)
    indices = F.interpolate(logits, size=photo.shape[:2], mode="bilinear").argmax(1)[0].to(torch.uint8).numpy()
palette = np.array([[0, 0, 0], [0, 0, 255], [0, 255, 0], [255, 0, 0]], np.uint8)  # lunar's, as BGR
cv2.imwrite({out!r}, palette[indices])
"""


def make_checkpoint(path: Path, size: int) -> Path:
    """Save a freshly initialised custom U-Net as a lunar checkpoint at ``size`` x ``size``; return ``path``."""
    import torch

    from lunar_cli.models.checkpoint import checkpoint_meta, save_checkpoint
    from lunar_cli.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("custom")
    meta = checkpoint_meta("custom", image_size=size, normalization={"mean": [0.0] * 3, "std": [1.0] * 3}, epoch=0)
    save_checkpoint(path, model_state=model.state_dict(), meta=meta)
    return path


def load_bare_model(ckpt_path: Path):
    """Return the checkpoint's U-Net in eval mode, built with plain torch (no lunar loading code)."""
    import torch

    from lunar_cli.models.unet import UNet

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model = UNet(num_classes=ckpt["meta"]["num_classes"], **ckpt["meta"]["model_kwargs"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


def decoded_inputs(paths: list[Path], size: int):
    """Return the photos as one normalised float tensor (N, 3, size, size), decoded and resized up front."""
    import cv2
    import torch

    small = [cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_AREA)
             for p in paths]  # fmt: skip
    return torch.from_numpy(np.stack(small)).permute(0, 3, 1, 2).float() / 255  # mean 0, std 1


def bare_forward(model, x, batch: int) -> float:
    """Return seconds for forward passes (batch ``batch``) over ``x``; nothing else."""
    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            model(x[i : i + batch])
    return time.perf_counter() - start


def bare_pipeline(model, paths: list[Path], out_dir: Path, size: int, batch: int) -> tuple[float, dict[str, float]]:
    """Return (seconds, seconds per stage) of a plain loop doing predict's work for ``paths``.

    decode -> resize -> forward (batch ``batch``) -> upsample logits to the photo's
    size -> argmax -> palette colours -> PNG encode and write, with cv2 and torch only.
    """
    import cv2
    import torch
    import torch.nn.functional as F

    from lunar_cli.classes import PALETTE

    palette_bgr = np.ascontiguousarray(PALETTE[:, ::-1])
    stages = dict.fromkeys(("decode", "resize", "forward", "upsample+argmax", "colour+encode+write"), 0.0)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            t0 = time.perf_counter()
            photos = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths[i : i + batch]]
            t1 = time.perf_counter()
            small = np.stack([cv2.resize(p, (size, size), interpolation=cv2.INTER_AREA) for p in photos])
            t2 = time.perf_counter()
            logits = model(torch.from_numpy(small).permute(0, 3, 1, 2).float() / 255)
            t3 = time.perf_counter()
            masks = []
            for photo, one in zip(photos, logits):
                up = F.interpolate(one[None], size=photo.shape[:2], mode="bilinear", align_corners=False)
                masks.append(up[0].argmax(0).to(torch.uint8).numpy())
            t4 = time.perf_counter()
            for path, indices in zip(paths[i : i + batch], masks):
                cv2.imwrite(str(out_dir / path.name), palette_bgr[indices])
            t5 = time.perf_counter()
            for name, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                stages[name] += seconds
    return time.perf_counter() - start, stages


def lunar_in_process(folder: Path, out_dir: Path, ckpt: Path, batch: int) -> float:
    """Return seconds for one run_predict call over ``folder`` (the CLI's work minus start-up)."""
    from lunar_cli.predict import run_predict

    start = time.perf_counter()
    result = run_predict([str(folder)], output=out_dir, model=ckpt, runs_dir=out_dir / "runs", batch_size=batch,
                         device="cpu", progress=False)  # fmt: skip
    seconds = time.perf_counter() - start
    if result["failed"]:
        raise SystemExit(f"run_predict failed on {result['failed'][0]}")
    return seconds


def timed_process(argv: list[str], expect_json: int | None = None) -> float:
    """Return the wall seconds of running ``argv`` as a process (it must succeed)."""
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    if expect_json is not None:
        records = json.loads(proc.stdout)["records"]
        if len(records) != expect_json:
            raise SystemExit(f"lunar predict wrote {len(records)} masks, expected {expect_json}")
    return seconds


def alternate(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each of ``runs`` once to warm up, then ``rounds`` times in turn (A B C A B C ...); return the times."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(run())
    return times


def argmax_cost(height: int = 480, width: int = 720, classes: int = 4, repeats: int = 7) -> tuple[float, float]:
    """Return median ms of ``argmax(0)`` and of ``max(0).indices`` (the same answer) on (C, H, W) float logits."""
    import torch

    logits = torch.randn(classes, height, width, generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits.argmax(0), logits.max(0).indices)
    times: dict[str, list[float]] = {"argmax": [], "max": []}
    with torch.inference_mode():
        for _ in range(repeats):
            for name, op in (("argmax", lambda: logits.argmax(0)), ("max", lambda: logits.max(0).indices)):
                start = time.perf_counter()
                op()
                times[name].append((time.perf_counter() - start) * 1000)
    return statistics.median(times["argmax"]), statistics.median(times["max"])


def spread(values: list[float]) -> tuple[float, float, float]:
    """Return (median, min, max)."""
    return statistics.median(values), min(values), max(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=48, help="generated 720x480 photos in the folder")
    parser.add_argument("--size", type=int, default=256, help="the checkpoint's input size (square)")
    parser.add_argument("--batch", type=int, default=8, help="images per forward, for lunar and bare alike")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of the folder throughput runs")
    parser.add_argument("--latency-rounds", type=int, default=7, help="timed rounds of the single-image processes")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()

    from bench_loader import machine, make_pairs

    py = sys.executable
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="lunar-bench-predict-") as tmp_name:
        tmp = Path(tmp_name)
        ckpt = make_checkpoint(tmp / "custom.pt", args.size)
        photos = [image for image, _mask in make_pairs(tmp / "data", args.count)]
        folder = photos[0].parent
        print(f"{len(photos)} photos 720x480 in {folder}; custom U-Net at {args.size}x{args.size}; batch {args.batch}")

        model = load_bare_model(ckpt)
        x = decoded_inputs(photos, args.size)
        cli = [py, "-m", "lunar_cli", "predict", str(folder), "-o", str(tmp / "out_cli"), "--model", str(ckpt),
               "--device", "cpu", "--batch-size", str(args.batch), "--json"]  # fmt: skip
        stage_runs: list[dict[str, float]] = []

        def pipeline() -> float:
            seconds, stages = bare_pipeline(model, photos, tmp / "out_bare", args.size, args.batch)
            stage_runs.append(stages)
            return seconds

        folder_times = alternate(
            {
                "bare forward": lambda: bare_forward(model, x, args.batch),
                "bare pipeline": pipeline,
                "run_predict": lambda: lunar_in_process(folder, tmp / "out_lunar", ckpt, args.batch),
                "lunar CLI": lambda: timed_process(cli, expect_json=len(photos)),
            },
            args.rounds,
        )
        for name, values in folder_times.items():
            med, lo, hi = spread(values)
            print(f"(a) {name:14s} {len(photos) / med:7.1f} images/s   median {med:.2f}s  min {lo:.2f}  max {hi:.2f}")

        one = str(photos[0])
        lunar_one = [py, "-m", "lunar_cli", "predict", one, "-o", str(tmp / "m.png"), "--model", str(ckpt),
                     "--device", "cpu"]  # fmt: skip
        bare_forward_one = [py, "-c", BARE_FORWARD.format(ckpt=str(ckpt), size=args.size)]
        bare_photo_one = [py, "-c", BARE_ONE_PHOTO.format(ckpt=str(ckpt), photo=one, out=str(tmp / "b.png"),
                                                          size=args.size)]  # fmt: skip
        latency_times = alternate(
            {
                "lunar predict": lambda: timed_process(lunar_one),
                "bare forward": lambda: timed_process(bare_forward_one),
                "bare one photo": lambda: timed_process(bare_photo_one),
                "import torch": lambda: timed_process([py, "-c", "import torch"]),
            },
            args.latency_rounds,
        )
        for name, values in latency_times.items():
            med, lo, hi = spread(values)
            print(f"(b) {name:14s} median {med:.2f}s  min {lo:.2f}  max {hi:.2f}")

    argmax_ms, max_ms = argmax_cost()
    print(f"argmax(0) {argmax_ms:.1f} ms, max(0).indices {max_ms:.1f} ms on (4, 480, 720) logits")
    n = len(photos)
    ips = {name: n / statistics.median(values) for name, values in folder_times.items()}
    lat = {name: spread(values) for name, values in latency_times.items()}
    stages = {name: statistics.median(run[name] for run in stage_runs) for name in stage_runs[0]}
    startup = statistics.median(folder_times["lunar CLI"]) - statistics.median(folder_times["run_predict"])
    r_fwd = ips["run_predict"] / ips["bare forward"]
    r_pipe = ips["run_predict"] / ips["bare pipeline"]
    r_cli = ips["lunar CLI"] / ips["bare pipeline"]
    r_lat = lat["lunar predict"][0] / lat["bare forward"][0]
    r_lat_photo = lat["lunar predict"][0] / lat["bare one photo"][0]
    # Fastest run over fastest run: what the code costs when the neighbours leave the cores alone.
    fast = {name: min(values) for name, values in folder_times.items()}
    b_fwd, b_pipe = fast["bare forward"] / fast["run_predict"], fast["bare pipeline"] / fast["run_predict"]
    best = {name: min(values) for name, values in latency_times.items()}
    loads = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"

    def row(name: str, what: str) -> str:
        med, lo, hi = spread(folder_times[name])
        return f"| {name} | {what} | {ips[name]:.1f} | {med:.2f} ({lo:.2f}-{hi:.2f}) |"

    def lat_row(name: str, what: str) -> str:
        med, lo, hi = lat[name]
        return f"| {name} | {what} | {med:.2f} | {lo:.2f} | {hi:.2f} |"

    lines = [
        f"## Prediction: lunar predict vs bare PyTorch ({date.today().isoformat()})",
        "",
        f"Machine: {machine()}. Custom U-Net (registry, random weights) saved as a lunar checkpoint at "
        f"{args.size}x{args.size}, mean 0 / std 1; {n} generated 720x480 PNG photos; batch {args.batch}; CPU; "
        "OMP_WAIT_POLICY=PASSIVE everywhere. Runs alternate (A B C D A B C D ...) after one warm-up each; "
        f"medians of {args.rounds} rounds (a) and {args.latency_rounds} rounds (b), min-max in brackets; "
        f"{loads} (2 means both cores were busy with something else). "
        "Command: `python bench/bench_predict.py --write`.",
        "",
        f"(a) Folder throughput, {n} photos",
        "",
        "| what | does | images/s | seconds per folder |",
        "| --- | --- | ---: | ---: |",
        row("bare forward", "forward only, batch 8, on tensors already decoded + resized"),
        row("bare pipeline", "plain cv2/torch loop: decode, resize, forward, upsample to 720x480, argmax, colour, "
            "PNG write"),
        row("run_predict", "lunar in-process: the same + list/plan, checkpoint load, class fractions, atomic writes"),
        row("lunar CLI", "`python -m lunar_cli predict DIR --json` whole process: the same + start-up"),
        "",
        f"run_predict / bare forward: **{r_fwd:.2f}x** (target >= 0.9x; not like for like: the forward does "
        f"no decode, resize, upsample, argmax or PNG write). run_predict / bare pipeline (the fair one): "
        f"**{r_pipe:.2f}x**. Fastest run over fastest run: {b_fwd:.2f}x and {b_pipe:.2f}x. "
        f"Whole CLI process / bare pipeline: {r_cli:.2f}x; CLI start-up (CLI minus run_predict) {startup:.1f}s.",
        "Where the bare pipeline's time goes, per folder (median): "
        + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in stages.items())
        + f". Most of upsample+argmax is the argmax: on this torch build `logits.argmax(0)` on one (4, 480, 720) "
        f"float tensor takes {argmax_ms:.0f} ms, `logits.max(0).indices` (same answer) {max_ms:.0f} ms; "
        "lunar's `classify` and the bare pipeline both use argmax.",
        "",
        "(b) Single-image latency, whole process (one 720x480 photo)",
        "",
        "| what | command | median s | min s | max s |",
        "| --- | --- | ---: | ---: | ---: |",
        lat_row("lunar predict", "`python -m lunar_cli predict one.png -o m.png --model CKPT --device cpu`"),
        lat_row("bare forward", "`python -c` import torch, load the checkpoint, one forward on a random 256x256 "
                "tensor"),
        lat_row("bare one photo", "`python -c` the same + cv2 decode, resize, upsample, argmax, PNG write"),
        lat_row("import torch", "`python -c \"import torch\"` (the floor)"),
        "",
        f"lunar predict / bare forward: **{r_lat:.2f}x** (target <= 1.3x); / bare one photo: {r_lat_photo:.2f}x. "
        f"Fastest over fastest: {best['lunar predict'] / best['bare forward']:.2f}x and "
        f"{best['lunar predict'] / best['bare one photo']:.2f}x. "
        f"`import torch` alone is {lat['import torch'][0] / lat['lunar predict'][0]:.0%} of lunar predict's time.",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if args.write:
        from bench_results import update_section

        update_section(RESULTS, "## Prediction", text)
        print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
