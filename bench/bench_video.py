"""Time `lunar predict` on a video against the same frames as PNGs, and its memory on a short and a long video.

(a) Frames/s, built-in model (its default precision on this CPU): a 720x480 MPEG-4 video of
    rendered scenes, `lunar predict clip.mp4 -o masks/`, against `lunar predict frames/ -o
    masks/` on the same frames decoded to PNGs (the same pixels, so the masks must agree).
    In-process run_predict after a warm-up, rounds alternating video / PNGs; medians (min-max).
    Target: video >= 0.9x the PNGs.
(b) Peak memory (max RSS of a whole `lunar predict` process) on a short and a ten times longer
    720x480 video, with a small model (memory is the pipeline's, not the model's): flat means
    the frames are streamed, not loaded.

    .venv/bin/python bench/bench_video.py            # print the tables
    .venv/bin/python bench/bench_video.py --write    # also update bench/RESULTS.md
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
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2
import numpy as np
from bench_results import machine, update_section

REPO = Path(__file__).resolve().parent.parent


def write_video(path: Path, count: int, scenes: int = 24) -> Path:
    """Write ``count`` 720x480 frames (``scenes`` rendered scenes, repeated) as an MPEG-4 video at 10 frames/s."""
    from lunar_cli.data.scene import render_scene

    rng = np.random.default_rng(0)
    frames = [cv2.cvtColor(render_scene(rng, 720, 480)[0], cv2.COLOR_RGB2BGR) for _ in range(min(count, scenes))]
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (720, 480))
    for i in range(count):
        writer.write(frames[i % len(frames)])
    writer.release()
    return path


def decode_to_pngs(video: Path, folder: Path) -> list[Path]:
    """Write each frame of ``video`` as a numbered PNG, exactly as OpenCV decodes it."""
    folder.mkdir(parents=True, exist_ok=True)
    capture, paths = cv2.VideoCapture(str(video)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            return paths
        paths.append(folder / f"frame_{len(paths):04d}.png")
        cv2.imwrite(str(paths[-1]), frame)


def rate(inputs: list[str], out: Path, model) -> tuple[float, dict]:
    """Return (frames/s of run_predict on ``inputs``, its result), in-process."""
    from lunar_cli.config import PredictConfig
    from lunar_cli.predict import run_predict

    start = time.perf_counter()
    result = run_predict(inputs, output=out, model=model, runs_dir=out / "runs", device="cpu", progress=False,
                         options=PredictConfig(format="index"))  # fmt: skip
    return len(result["records"]) / (time.perf_counter() - start), result


def median_range(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def video_against_pngs(work: Path, frames: int, rounds: int) -> list[str]:
    """Return the markdown lines of table (a)."""
    from lunar_cli.models.builtin import builtin_checkpoint

    video = write_video(work / "clip.mp4", frames)
    folder = work / "frames"
    decode_to_pngs(video, folder)
    model = builtin_checkpoint()
    rate([str(folder)], work / "warm", model)  # warm-up: imports, allocator, threads
    runs: dict[str, list[float]] = {"video": [], "pngs": []}
    for _ in range(rounds):
        video_rate, from_video = rate([str(video)], work / "v", model)
        png_rate, from_pngs = rate([str(folder)], work / "p", model)
        runs["video"].append(video_rate)
        runs["pngs"].append(png_rate)
        print(f"video {video_rate:.2f} frames/s, PNGs {png_rate:.2f} frames/s", flush=True)
    same = np.mean([np.array_equal(cv2.imread(a["output"][0], cv2.IMREAD_UNCHANGED),
                                   cv2.imread(b["output"][0], cv2.IMREAD_UNCHANGED))
                    for a, b in zip(from_video["records"], from_pngs["records"])])  # fmt: skip
    # Each round's pair ran back to back: the median of their ratios is steadier on a shared machine than
    # a ratio of medians taken minutes apart.
    ratios = [v / p for v, p in zip(runs["video"], runs["pngs"])]
    ratio = statistics.median(ratios)
    precision = from_video["records"][0]["precision"]
    return [
        "| input | frames/s |", "| --- | ---: |",
        f"| `lunar predict clip.mp4 -o masks/` ({frames} frames, MPEG-4) | {median_range(runs['video'])} |",
        f"| `lunar predict frames/ -o masks/` (the same frames as PNGs) | {median_range(runs['pngs'])} |",
        f"| video / PNGs, median of the rounds' ratios | **{ratio:.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}; "
        "target >= 0.9x) |",
        f"| frames whose mask is the same from the video and from its PNG | {100 * same:.0f}% |",
        "", f"Built-in model, {precision} (its default on this CPU), batch 8, `--format index`; {rounds} alternating "
        f"rounds after a warm-up.",
    ]  # fmt: skip


def peak_memory(video: Path, out: Path, model: Path) -> tuple[float, float, int]:
    """Return (peak RSS in MB, seconds, frames predicted) of one `lunar predict` process on ``video``."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "lunar_cli", "predict", str(video), "-o", str(out), "--model",
                             str(model), "--device", "cpu", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    assert status == 0, status
    import json

    return usage.ru_maxrss / 1024, time.perf_counter() - start, len(json.loads(stdout)["records"])


def memory(work: Path, short: int) -> list[str]:
    """Return the markdown lines of table (b)."""
    import torch

    from lunar_cli.frames import FrameSize
    from lunar_cli.models.checkpoint import checkpoint_meta, save_checkpoint
    from lunar_cli.models.registry import build_model

    kwargs = {"base_width": 4, "depth": 2}
    meta = checkpoint_meta("custom", frame_size=FrameSize(), crop_size=64, normalization={"mean": [0, 0, 0], "std": [1, 1, 1]},
                           epoch=0, model_kwargs=kwargs)  # fmt: skip
    model = work / "small.pt"
    save_checkpoint(model, model_state=build_model("custom", **kwargs).state_dict(), meta=meta)
    lines = ["| video | frames | peak memory (max RSS) | seconds |", "| --- | ---: | ---: | ---: |"]
    for count in (short, 10 * short):
        video = write_video(work / f"v{count}.mp4", count)
        mb, seconds, done = peak_memory(video, work / f"m{count}", model)
        assert done == count, (done, count)
        lines.append(f"| 720x480 MPEG-4, {count / 10:.0f} s at 10 frames/s | {count} | {mb:.0f} MB | {seconds:.0f} |")
        print(lines[-1], flush=True)
    lines += ["", "A custom U-Net of width 4 (the pipeline's memory, not the model's), `lunar predict v.mp4 -o masks/ "
              "--json` in a process of its own."]  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48, help="frames of the video in table (a)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--short", type=int, default=60, help="frames of the short video in table (b)")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lunar-bench-video-") as tmp:
        work = Path(tmp)
        speed = video_against_pngs(work, args.frames, args.rounds)
        flat = memory(work, args.short)
    text = "\n".join([
        f"## Prediction on video: frames/s against PNGs, memory on a long video ({date.today().isoformat()})", "",
        f"Machine: {machine()}. Command: `python bench/bench_video.py --write`.", "",
        "(a) A video against the same frames as PNGs:", "", *speed, "", "(b) Memory on a short and a long video:", "",
        *flat,
    ])  # fmt: skip
    print(text)
    if args.write:
        update_section(REPO / "bench" / "RESULTS.md", "## Prediction on video", text)


if __name__ == "__main__":
    main()
