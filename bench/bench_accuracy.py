"""Accuracy: train on one fixed synthetic set, score test and test_real at full resolution, tabulate.

Every run is the real `lunar` CLI in a subprocess (fetch, split, train, evaluate), so the
numbers are what a user gets. The synthetic set depends only on its settings and seed, so
every run of this script trains and scores on the same images.

    python bench/bench_accuracy.py --mode cpu --write     # custom U-Net, default and seed recipes (~25 min, 2 cores)
    python bench/bench_accuracy.py --mode gpu --write     # four models x default and seed (~10 min, one H100/H200)
    python bench/bench_accuracy.py --mode gpu --budget-s 240 --out $OUT   # what fits in 4 minutes of a lent GPU
    python bench/bench_accuracy.py --run "wide:--width 24" --epochs 10   # one-off experiments (no --write)

Results go to a "## Accuracy" section of bench/RESULTS.md (``--write``) and to
``--out/results.json`` (small files only, for runs on a lent GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from bench_results import machine, update_section

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("ground", "sky", "small_rocks", "large_rocks")
# The fixed synthetic sets: (scenes, real-like photos, width, height, seed).
SETS = {"cpu": (300, 24, 480, 320, 42), "gpu": (1600, 36, 720, 480, 42)}
# (label, extra train flags) per mode; epochs and batch sizes fit each mode's time budget.
MODES = {
    "cpu": [
        ("custom, default", ["--backbone", "custom", "--epochs", "56", "--batch-size", "8"]),
        ("custom, --recipe seed", ["--backbone", "custom", "--recipe", "seed", "--epochs", "40", "--batch-size", "8"]),
    ],
    # In the order they are worth a lent GPU's minutes (--budget-s stops starting new runs): the default
    # recipe of each model first, then the study's recipe.
    "gpu": [
        (f"{b}, {r}", ["--backbone", b, "--encoder-weights", "none", "--epochs", "20", "--batch-size", "16",
                       *([] if r == "default" else ["--recipe", "seed"])])
        for r in ("default", "seed") for b in ("custom", "resnet18", "vgg11", "mobilenet_v3_large")
    ],
}


def lunar(*args: str, cwd: Path, env: dict) -> tuple[dict, float]:
    """Run ``lunar ARGS --json`` in ``cwd``; return (its JSON result, wall seconds). Stops the script on failure."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lunar_cli", *args, "--json"], cwd=cwd, env=env, text=True,
                          capture_output=True)  # fmt: skip
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"lunar {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), seconds


def make_data(work: Path, mode: str, env: dict) -> Path:
    """Generate and split the mode's fixed synthetic set under ``work`` (once; reused when present)."""
    count, real, width, height, seed = SETS[mode]
    data = work / f"data-{mode}-{count}-{real}-{width}x{height}-s{seed}"
    if not (data / "manifest.csv").is_file():
        lunar("fetch", "--source", "synthetic", "--count", str(count), "--real-count", str(real), "--width",
              str(width), "--height", str(height), "--seed", str(seed), "--data-dir", str(data), "--force",
              cwd=work, env=env)  # fmt: skip
        lunar("split", "--data-dir", str(data), cwd=work, env=env)
    return data


def run_one(label: str, flags: list[str], data: Path, work: Path, env: dict) -> dict:
    """Train with ``flags`` and score test and test_real; return one table row as a dict."""
    name = "-".join("".join(c if c.isalnum() else " " for c in label).split())  # "custom, --recipe seed" -> custom-recipe-seed
    trained, train_seconds = lunar("train", *flags, "--data-dir", str(data), "--runs-dir", str(work / "runs"),
                                   "--name", name, "--exist-ok", cwd=work, env=env)  # fmt: skip
    scored, _ = lunar("evaluate", trained["run_dir"], "--data-dir", str(data), "--split", "test", "--split",
                      "test_real", cwd=work, env=env)  # fmt: skip
    import csv

    with open(Path(trained["run_dir"]) / "history.csv", newline="") as fh:  # crops drawn = rate x time, per epoch
        seen = round(sum(float(r["images_per_second"]) * float(r["epoch_seconds"]) for r in csv.DictReader(fh)))
    row = {"model": label, "flags": " ".join(flags), "epochs": trained["epochs_run"], "best_epoch": trained["best_epoch"],
           "images_seen": seen, "train_wall_s": round(train_seconds, 1), "device": trained["device"]}  # fmt: skip
    for split in ("test", "test_real"):
        result = scored["splits"][split]
        row[split] = {**{c: result["iou"][c] for c in CLASSES}, "miou": result["miou"],
                      "resolution": result["resolution"], "images": result["images"]}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict], mode: str, total_s: float) -> str:
    """Return the markdown section for ``rows``."""
    count, real, width, height, seed = SETS[mode]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        f"## Accuracy, {mode} mode ({date.today().isoformat()})",
        "",
        f"Machine: {machine()}. Data: `lunar fetch --source synthetic --count {count} --real-count {real} --width "
        f"{width} --height {height} --seed {seed}`, `lunar split` (49/21/30%, real-like photos as test_real). "
        f"Scored by `lunar evaluate` on whole frames at full resolution ({width}x{height} labels). Images seen = "
        f"training crops drawn. Command: `python bench/bench_accuracy.py --mode {mode} --write` ({total_s / 60:.0f} min).",
        "",
        "| model, recipe | epochs (best) | images seen | train wall s | test ground | sky | small rocks | large rocks "
        "| **test mIoU** | test_real ground | sky | small rocks | large rocks | **test_real mIoU** |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        cells = [f"{r['model']} (`{r['flags']}`)", f"{r['epochs']} ({r['best_epoch']})", str(r["images_seen"]),
                 f"{r['train_wall_s']:.0f}"]  # fmt: skip
        for split in ("test", "test_real"):
            cells += [fmt(r[split][c]) for c in CLASSES] + [f"**{fmt(r[split]['miou'])}**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), default="cpu")
    parser.add_argument("--run", action="append", default=[], help="LABEL:FLAGS instead of the mode's runs")
    parser.add_argument("--epochs", type=int, help="override the epochs of every run")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".accuracy", help="data and runs folder")
    parser.add_argument("--out", type=Path, help="also write results.json here")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument("--budget-s", type=float, help="start no new run after this many seconds (data included)")
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = make_data(args.work, args.mode, env)
    runs = [(label, shlex.split(flags)) for label, flags in (r.split(":", 1) for r in args.run)] or MODES[args.mode]
    rows = []
    for label, flags in runs:
        if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s spent: {label} and the runs after it not run", flush=True)
            break
        if args.epochs is not None:
            flags = [*flags, "--epochs", str(args.epochs)]
        rows.append(run_one(label, flags, data, args.work, env))
        if args.out is not None:  # after each run: a run cut off by the lease still leaves the ones before it
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "results.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    text = table(rows, args.mode, time.perf_counter() - start)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    if args.write and not args.run:
        update_section(REPO / "bench" / "RESULTS.md", f"## Accuracy, {args.mode} mode", text)


if __name__ == "__main__":
    main()
