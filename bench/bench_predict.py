"""Time `lunar predict` on this machine: folder throughput against its ceiling, one photo with ONNX vs PyTorch.

Photos: generated 720x480 PNGs, predicted at their own size. Each table is its own section
of bench/RESULTS.md (``--part`` measures one of them).

(a) Folder throughput, images/s, per model and precision (fp32, and bf16 autocast where
    the CPU runs it natively), for the default custom U-Net (width 16, depth 4) and an smp
    resnet18 U-Net with random weights (speed does not depend on them) fed at scale 1:
    forward      - the bare forward pass, batch 8, on tensors already decoded (no I/O);
    decode+encode- bare cv2 decode + palette colouring + PNG encode + write, spread over all
                   cores with a thread pool (no model);
    ceiling      - the slower of the two: what any pipeline could reach here;
    lunar        - lunar_cli.predict.run_predict in-process (after a warm-up), and with
                   --tta and --uncertainty for their cost.
(b) One photo, whole process, seconds: `lunar predict one.png -o m.png --model builtin.onnx`
    (ONNX Runtime, torch never imported) against the same with the built-in PyTorch
    checkpoint, in its default precision and in fp32; the masks are compared pixel by pixel.

Runs alternate (A B A B ...) after one warm-up each; medians, with min-max.

    .venv/bin/python bench/bench_predict.py            # print the tables
    .venv/bin/python bench/bench_predict.py --write    # also update bench/RESULTS.md
    .venv/bin/python bench/bench_predict.py --part one-photo --write
    python bench/bench_predict.py --part folder --device cuda --batch 32 --photos 256 --write   # on a GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; before torch loads

import numpy as np
from bench_results import builtin_description, machine, model_kwargs, precisions, update_section

from lunar_cli.classes import PALETTE
from lunar_cli.parallel import cpu_cores

REPO = Path(__file__).resolve().parent.parent

CORES = cpu_cores()


def make_checkpoint(path: Path, backbone: str) -> Path:
    """Save a freshly initialised model as a lunar checkpoint fed at scale 1; return ``path``."""
    import torch

    from lunar_cli.frames import FrameSize
    from lunar_cli.models.checkpoint import checkpoint_meta, save_checkpoint
    from lunar_cli.models.registry import build_model, normalization

    torch.manual_seed(0)
    kwargs = model_kwargs(backbone)
    model = build_model(backbone, **kwargs)
    meta = checkpoint_meta(backbone, frame_size=FrameSize(), crop_size=256, normalization=normalization(backbone),
                           epoch=0, model_kwargs=kwargs)  # fmt: skip
    meta["calibration"] = {"temperature": 1.0, "ood_threshold": 0.5}
    save_checkpoint(path, model_state=model.state_dict(), meta=meta)
    return path


def make_photos(folder: Path, n: int) -> list[Path]:
    """Write ``n`` rendered 720x480 lunar scenes as PNGs; return their paths."""
    from lunar_cli.classes import write_png_atomic
    from lunar_cli.data.scene import render_scene

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = [folder / f"shot{i:03d}.png" for i in range(n)]
    for p in paths:
        write_png_atomic(p, render_scene(rng, 720, 480)[0])
    return paths


def forward_rate(ckpt: Path, photos: list[Path], amp: bool, batch: int, device: str) -> float:
    """Return images/s of the bare forward pass over the photos, decoded, normalised and on the device up front."""
    import cv2
    import torch

    from lunar_cli.torch_model import forward, load_model, to_input

    model = load_model(ckpt, device, amp=amp)
    frames = torch.from_numpy(np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in photos]))
    x = to_input(model, frames.to(model.device))
    forward(model, x[:batch])  # warm-up
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        logits = forward(model, x[i : i + batch])
    logits.cpu()  # waits for the device's queued work
    return len(x) / (time.perf_counter() - start)


def io_rate(photos: list[Path], out: Path) -> float:
    """Return images/s of bare decode + palette colouring + PNG encode + write, over all cores."""
    from concurrent.futures import ThreadPoolExecutor

    import cv2

    palette = np.ascontiguousarray(PALETTE[:, ::-1])  # BGR, as cv2 writes
    out.mkdir(parents=True, exist_ok=True)

    def one(path: Path) -> None:
        img = cv2.imread(str(path))
        classes = (img[:, :, 0] >> 6).astype(np.uint8)  # any class map of the photo's size
        cv2.imwrite(str(out / path.name), palette[classes])

    cv2.setNumThreads(1)
    start = time.perf_counter()
    with ThreadPoolExecutor(CORES) as pool:
        list(pool.map(one, photos))
    return len(photos) / (time.perf_counter() - start)


def lunar_rate(ckpt: Path, folder: Path, out: Path, amp: bool, batch: int, device: str, **options) -> float:
    """Return images/s of lunar's run_predict over the folder (in-process, warm)."""
    from lunar_cli.config import PredictConfig
    from lunar_cli.predict import run_predict

    start = time.perf_counter()
    result = run_predict([str(folder)], output=out, model=ckpt, runs_dir=out / "runs", device=device, amp=amp,
                         progress=False, options=PredictConfig(batch_size=batch, **options))  # fmt: skip
    return len(result["records"]) / (time.perf_counter() - start)


def median_range(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def throughput(work: Path, photos: list[Path], rounds: int, batch: int, device: str) -> list[str]:
    """Return the markdown rows of table (a)."""
    rows = []
    for backbone in ("custom", "resnet18"):
        ckpt = make_checkpoint(work / f"{backbone}.pt", backbone)
        for label, amp in [("fp32", False), ("bf16", True)] if device.startswith("cuda") else precisions():
            rate = lambda name, **kw: lunar_rate(ckpt, photos[0].parent, work / name, amp, batch, device, **kw)  # noqa: E731
            rate("warm")  # warm-up: imports, allocator, threads
            runs: dict[str, list[float]] = {k: [] for k in ("forward", "io", "lunar", "tta", "uncertainty")}
            for _ in range(rounds):
                runs["forward"].append(forward_rate(ckpt, photos, amp, batch, device))
                runs["io"].append(io_rate(photos, work / "io"))
                runs["lunar"].append(rate("out"))
                runs["tta"].append(rate("tta", tta=True))
                runs["uncertainty"].append(rate("unc", uncertainty=True))
            med = {k: statistics.median(v) for k, v in runs.items()}
            ceiling = min(med["forward"], med["io"])
            rows.append(f"| {backbone} | {label} | {median_range(runs['forward'])} | {median_range(runs['io'])} | "
                        f"{ceiling:.2f} | {median_range(runs['lunar'])} | **{med['lunar'] / ceiling:.2f}x** | "
                        f"{median_range(runs['tta'])} | {median_range(runs['uncertainty'])} |")  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def one_photo(work: Path, photo: Path, rounds: int) -> list[str]:
    """Return the markdown rows of table (b): whole-process latency, ONNX vs PyTorch, and mask agreement.

    The model is the built-in one (trained weights: random ones put many pixels on near-ties
    between classes, where any two precisions disagree), exported to ONNX first.
    """
    import cv2

    from lunar_cli.export import export_model
    from lunar_cli.models.builtin import builtin_checkpoint

    ckpt = builtin_checkpoint()
    onnx = Path(export_model(ckpt, work / "builtin.onnx")["output"])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = {"onnx": (onnx, []), "torch": (ckpt, []), "torch fp32": (ckpt, ["--no-amp"])}

    def run(name: str) -> float:
        model, extra = runs[name]
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lunar_cli", "predict", str(photo), "-o", str(work / f"{name}.png"),
                        "--model", str(model), "--device", "cpu", *extra], check=True, env=env, capture_output=True)  # fmt: skip
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in runs}
    for name in runs:  # warm-up: the page cache
        run(name)
    for _ in range(rounds):
        for name in runs:
            times[name].append(run(name))
    mask = {name: cv2.imread(str(work / f"{name}.png")) for name in runs}

    def same(a: str, b: str) -> str:
        return f"**{100 * float((mask[a] == mask[b]).all(axis=2).mean()):.3f}%**"

    speedup = statistics.median(times["torch"]) / statistics.median(times["onnx"])
    return [
        f"| `lunar predict one.png -o m.png --model builtin.onnx` (ONNX Runtime, fp32) | {median_range(times['onnx'])} |",
        f"| `lunar predict one.png -o m.png --model builtin` (PyTorch, default precision: {precision_name()}) "
        f"| {median_range(times['torch'])} |",
        f"| the same with `--no-amp` (PyTorch, fp32) | {median_range(times['torch fp32'])} |",
        f"| ONNX speed-up over the default PyTorch path | **{speedup:.1f}x** |",
        f"| pixels with the same class: ONNX and PyTorch fp32 | {same('onnx', 'torch fp32')} |",
        f"| pixels with the same class: ONNX and PyTorch default | {same('onnx', 'torch')} |",
    ]


def precision_name() -> str:
    """Return PyTorch's default precision on this CPU, as lunar says it (e.g. "cpu, bf16 autocast (AVX512-BF16), channels-last")."""
    import torch

    from lunar_cli.runtime import choose_precision

    return choose_precision(torch.device("cpu"), None, None).label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--part", choices=("all", "folder", "one-photo"), default="all", help="which table(s) to measure")
    parser.add_argument("--batch", type=int, default=8, help="photos per forward pass (folder table)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (folder table)")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    sections = []
    gpu = args.device.startswith("cuda")
    heading = "## Prediction on a GPU: lunar predict against" if gpu else "## Prediction: lunar predict against"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        photos = make_photos(work / "photos", args.photos if args.part != "one-photo" else 1)
        if args.part in ("all", "folder"):
            sections.append((heading, "\n".join([
                f"{heading} the machine's ceiling ({date.today().isoformat()})",
                "",
                f"Machine: {machine()}. On {args.device}. {args.photos} rendered 720x480 PNG photos predicted at their "
                f"own size (scale 1), batch {args.batch}, random weights (speed does not depend on them); medians of "
                f"{args.rounds} alternating rounds (min-max). Command: `python bench/bench_predict.py --part folder "
                f"--device {args.device} --batch {args.batch} --photos {args.photos} --write`.",
                "",
                "Folder throughput, images/s:",
                "",
                "| model | precision | bare forward | bare decode+encode (all cores) | ceiling | lunar predict "
                "| lunar / ceiling | lunar --tta | lunar --uncertainty |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
                *throughput(work, photos, args.rounds, args.batch, args.device),
            ])))
        if args.part in ("all", "one-photo"):
            rounds = 2 * args.rounds + 1
            sections.append(("## Prediction: one photo", "\n".join([
                f"## Prediction: one photo, ONNX Runtime against PyTorch ({date.today().isoformat()})",
                "",
                f"Machine: {machine()}. The built-in model ({builtin_description()}) on one rendered 720x480 "
                f"PNG, whole process (start-up included), seconds: medians of {rounds} alternating rounds (min-max). "
                "Command: `python bench/bench_predict.py --part one-photo --write`.",
                "",
                "| what | seconds |",
                "| --- | ---: |",
                *one_photo(work, photos[0], rounds),
            ])))  # fmt: skip
    for heading, text in sections:
        print(text + "\n")
        if args.write:
            update_section(REPO / "bench" / "RESULTS.md", heading, text)


if __name__ == "__main__":
    main()
