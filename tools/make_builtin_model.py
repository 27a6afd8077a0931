"""Make the built-in model that ships in lunar_cli/models/builtin/: generate data, train, check, export, score.

One command reproduces it (on a CPU; pass --device cuda on a GPU, where it is much faster):

    python tools/make_builtin_model.py                 # the shipped model's settings (SETTINGS below)
    python tools/make_builtin_model.py --epochs 2      # a quick dry run of the whole path

It runs the real CLI: `lunar fetch --source synthetic` (the training set), `lunar split`,
`lunar train` (the default recipe), then stores the best checkpoint with fp16 weights (half
the size; lunar loads them back as fp32), checks its ONNX export (not shipped: `lunar
export builtin` makes it), generates a *fresh* synthetic test set (another seed) and scores
the model on it and on its real-like photos at full resolution. Everything it did is
written to lunar_cli/models/builtin/builtin.json, which MODEL_CARD.md quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "lunar_cli" / "models" / "builtin"
# The shipped model: what it is trained on and how. Change here, rerun, and commit the three files.
SETTINGS = {
    "train_data": {"count": 1200, "real_count": 36, "width": 480, "height": 320, "seed": 7},
    # Most scenes to training: the fresh test set below is what the model is scored on.
    "train_split": ["--train", "0.7", "--val", "0.1", "--test", "0.2"],
    "test_data": {"count": 120, "real_count": 36, "width": 480, "height": 320, "seed": 2027},
    # The ImageNet encoder that works offline (bench/RESULTS.md: on the lit scenes it finds large rocks
    # from epoch 3 where the custom U-Net has not found them by epoch 14 of the main job).
    "train_flags": ["--backbone", "efficientnet_lite0", "--encoder-weights", "imagenet", "--epochs", "18",
                    "--batch-size", "8", "--seed", "7"],  # fmt: skip
}


def lunar(*args: str, work: Path, device: str) -> dict:
    """Run ``lunar ARGS --json`` in ``work``; return its JSON result (exit on failure, with its error)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    device_args = ["--device", device] if args[0] in ("train", "evaluate") else []
    proc = subprocess.run([sys.executable, "-m", "lunar_cli", *args, *device_args, "--json"], cwd=work, env=env,
                          text=True, capture_output=True)  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"lunar {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    sys.stderr.write(proc.stderr)
    return json.loads(proc.stdout)


def fetch(work: Path, name: str, data: dict, device: str, split: tuple[str, ...] = ()) -> Path:
    """Generate and split a synthetic set under ``work/name``; return its folder."""
    folder = work / name
    if not (folder / "manifest.csv").is_file():
        lunar("fetch", "--source", "synthetic", "--data-dir", str(folder), "--force",
              *[f"--{k.replace('_', '-')}={v}" for k, v in data.items()], work=work, device=device)  # fmt: skip
        lunar("split", "--data-dir", str(folder), *split, work=work, device=device)
    return folder


def store_half(best: Path, target: Path, frame_height: int) -> None:
    """Write ``best`` with its floating-point weights in fp16 (lunar loads them back as fp32), fed at ``frame_height``."""
    import torch

    from lunar_cli.frames import FrameSize
    from lunar_cli.models.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(best)
    half = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    meta = {**ckpt["meta"], "weights_stored_as": str(torch.float16), "frame_size": FrameSize(height=frame_height).as_meta()}
    save_checkpoint(target, model_state=half, meta=meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "tools" / ".builtin", help="data and runs folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, help="override the epochs (a dry run)")
    parser.add_argument("--from-run", type=Path, help="store, check and score this finished training run instead of "
                        "training one (its metrics.json says how it trained)")  # fmt: skip
    args = parser.parse_args()
    from lunar_cli import __version__
    from lunar_cli.export import export_model

    args.work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    flags = SETTINGS["train_flags"] + (["--epochs", str(args.epochs)] if args.epochs else [])
    if args.from_run:
        trained = {**json.loads((args.from_run / "metrics.json").read_text()), "run_dir": str(args.from_run)}
    else:
        train_data = fetch(args.work, "train-data", SETTINGS["train_data"], args.device, SETTINGS["train_split"])
        trained = lunar("train", *flags, "--data-dir", str(train_data), "--runs-dir", str(args.work / "runs"),
                        "--name", "builtin", "--exist-ok", work=args.work, device=args.device)  # fmt: skip
    FOLDER.mkdir(parents=True, exist_ok=True)
    # Photos are fed at the training scenes' height, aspect kept, so rocks have the size in pixels they were
    # learnt at (bench/RESULTS.md "Real images": real renders mIoU 0.35 at their own size, 0.53 at height 320).
    store_half(Path(trained["run_dir"]) / "best.pt", FOLDER / "builtin.pt", SETTINGS["train_data"]["height"])
    exported = export_model(FOLDER / "builtin.pt", args.work / "builtin.onnx", "onnx")
    test_data = fetch(args.work, "test-data", SETTINGS["test_data"], args.device)
    # By name: evaluate scores its copy under --runs-dir and writes its figures there, not into the package.
    scored = lunar("evaluate", "builtin", "--data-dir", str(test_data), "--split", "test", "--split", "test_real",
                   "--runs-dir", str(args.work / "runs"), work=args.work, device=args.device)  # fmt: skip
    record = {
        "lunar_version": __version__, "settings": SETTINGS, "epochs_override": args.epochs, "device": trained["device"],
        "train": {k: trained[k] for k in ("epochs_run", "best_epoch", "best_val_miou", "train_seconds", "parameters",
                                          "calibration")},
        "export": {k: exported[k] for k in ("bytes", "class_agreement", "max_probability_difference")},
        "checkpoint_bytes": (FOLDER / "builtin.pt").stat().st_size,
        "fresh_test": {split: {"iou": r["iou"], "miou": r["miou"], "ece": r["ece"], "resolution": r["resolution"],
                               "images": r["images"], "out_of_distribution_share": r["out_of_distribution_share"]}
                       for split, r in scored["splits"].items()},
        "stored_from_run": None if args.from_run is None else str(args.from_run),
        "wall_seconds": round(time.time() - start),
    }  # fmt: skip
    (FOLDER / "builtin.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
