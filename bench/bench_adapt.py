"""Does `lunar adapt` help on real data? The built-in model zero-shot, then adapted in each mode, scored with the masks.

The real dev set (/work/shared/real-reference/labelled, in the dataset's layout): 14 real
Chang'e-3 photos (split test_real, hand masks g_PCAM*.png) and 38 original Kaggle renders
(split test, masks images/clean). For each of the two sets the photos alone, without their
masks, are copied into a folder; `lunar adapt builtin FOLDER --mode M` adapts the built-in
model to them, and `lunar evaluate` scores the adapted run on the same images with their
masks, whole frames at the labels' resolution. This is transductive (adapted on the very
images it is scored on, as a user adapts to the frames they want masks for) and measures
only: real images never go into the shipped model.

    .venv/bin/python bench/bench_adapt.py                 # print the table
    .venv/bin/python bench/bench_adapt.py --write         # also update bench/RESULTS.md
    .venv/bin/python bench/bench_adapt.py --adapt-flags "--epochs 5"   # other self-train settings
    .venv/bin/python bench/bench_adapt.py --model runs/train/custom     # another model than the built-in one
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from bench_results import REPO, machine, update_section

LABELLED = Path("/work/shared/real-reference/labelled")
SETS = {"test_real": ("real photos (14)", "real_moon_images", "PCAM*.png"),
        "test": ("Kaggle renders (38)", "images/render", "*.png")}  # fmt: skip
MODES = ("bn", "self-train", "bn+self-train")
CLASSES = ("ground", "sky", "small_rocks", "large_rocks")


def lunar(*args: str) -> dict:
    """Run ``lunar ARGS --json`` as a user does; return its JSON result (stderr passes through)."""
    cmd = [sys.executable, "-m", "lunar_cli", *map(str, args), "--json"]
    done = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {shlex.join(cmd)}")
    return json.loads(done.stdout)


def photos_only(data: Path, folder: str, pattern: str, out: Path) -> Path:
    """Copy the images of one set without their masks (the real photos' g_*.png share their folder)."""
    out.mkdir(parents=True)
    for path in sorted((data / folder).glob(pattern)):
        shutil.copy(path, out / path.name)
    return out


def score(model: str, data: Path, runs: Path, split: str) -> dict:
    return lunar("evaluate", model, "--data-dir", data, "--runs-dir", runs, "--split", split)["splits"][split]


def measure(work: Path, model: str, adapt_flags: list[str]) -> list[dict]:
    """Return one row per (set, stage): IoU per class, mIoU, ECE, and what adapt said (uncertainty, changed pixels)."""
    data, runs = work / "data", work / "runs"
    lunar("fetch", "--source", LABELLED, "--data-dir", data)
    lunar("split", "--data-dir", data, "--train", "0", "--val", "0", "--test", "1")
    rows = []
    for split, (title, folder, pattern) in SETS.items():
        photos = photos_only(data, folder, pattern, work / f"photos_{split}")
        rows.append({"set": title, "stage": "zero-shot", **score(model, data, runs, split), "adapt": None})
        for mode in MODES:
            start = time.perf_counter()
            adapted = lunar("adapt", model, photos, "--mode", mode, "--runs-dir", runs, "--name", f"{split}-{mode}",
                            *adapt_flags)  # fmt: skip
            seconds = time.perf_counter() - start
            rows.append({"set": title, "stage": mode, **score(adapted["model"], data, runs, split),
                         "adapt": {**adapted, "seconds": seconds}})  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    """Return the markdown table of the rows."""
    lines = ["| images | model | " + " | ".join(CLASSES) + " | **mIoU** | ECE | mean uncertainty | pixels changed | adapt time |",
             "| --- | --- | " + " | ".join("---:" for _ in CLASSES) + " | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for row in rows:
        a = row["adapt"]
        stages = a["stages"] if a else None
        last = stages[list(stages)[-1]] if stages else None
        unsure = f"{stages['source']['mean_uncertainty']:.3f} -> {last['mean_uncertainty']:.3f}" if a else ""
        changed = f"{100 * last['changed_from_source']:.1f}%" if a else ""
        when = f"{a['seconds']:.0f} s" if a else ""
        ious = " | ".join(f"{row['iou'][c]:.3f}" for c in CLASSES)
        lines.append(f"| {row['set']} | {row['stage']} | {ious} | **{row['miou']:.3f}** | {row['ece']:.3f} | {unsure} | "
                     f"{changed} | {when} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update the section of bench/RESULTS.md")
    parser.add_argument("--model", default="builtin", help="the model to adapt: builtin, a run folder or a checkpoint")
    parser.add_argument("--adapt-flags", default="", help="extra flags for every lunar adapt (e.g. '--epochs 5')")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with tempfile.TemporaryDirectory(prefix="bench_adapt_") as tmp:
        rows = measure(Path(tmp), args.model, shlex.split(args.adapt_flags))
    settings = rows[-1]["adapt"]["settings"]
    text = "\n".join([
        f"## Real images: adaptation (bench/bench_adapt.py, {date.today().isoformat()})", "",
        f"Machine: {machine()}.", "",
        f"Model: {args.model} (trained on synthetic scenes only), adapted with `lunar adapt MODEL PHOTOS --mode M` "
        "to each set's images without their masks, then scored by `lunar evaluate` on the same images with their "
        "masks: whole frames, IoU at the labels' resolution (the photos are 423x310 or 256x256 copies, the renders "
        "256x256 to 1601x1067). Real dev set only, for measuring; nothing of it goes into the shipped model. "
        f"Self-train settings: {settings['epochs']} epochs, lr {settings['lr']:g}, confidence {settings['confidence']}, "
        f"{settings['teacher']} teacher, loss {settings['loss']}, crops {settings['crop_size']}, batch {settings['batch_size']}. "
        "Mean uncertainty and changed pixels are what `lunar adapt` reports on the photos (no labels).", "",
        table(rows),
    ])  # fmt: skip
    print(text)
    if args.write:
        update_section(REPO / "bench" / "RESULTS.md", "## Real images: adaptation", text)


if __name__ == "__main__":
    main()
