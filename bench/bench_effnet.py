"""EfficientNet-Lite0 with its packaged ImageNet weights against random init and the custom U-Net.

The README's main job (`lunar fetch --source synthetic`, `lunar split`, `lunar train --epochs 14
--batch-size 4`) per model, every step the real `lunar` CLI in a subprocess; each run is scored on
the synthetic test split and on the real labelled dev set (38 original Kaggle renders as split
"test", 14 real Chang'e-3 photos as "test_real"; measured on only, never trained on).

    python bench/bench_effnet.py --write                       # the default rows (~1 h on 2 cores)
    python bench/bench_effnet.py --run "custom, 30 epochs:--backbone custom --epochs 30" --write   # add a row

Rows are kept in ``--work/rows.json``, so a later call adds or replaces rows (by label) and the
section is written from all of them. A row whose flags hold ``--decoder-channels A,B,C,D,E``
trains and scores an smp U-Net with those decoder widths: lunar has no such option, so for that
row this script runs the CLI in-process with ``registry.build_model`` given ``decoder_channels``
(measurement only; its checkpoints do not record them).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from bench_results import machine, model_kwargs, update_section

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("ground", "sky", "small_rocks", "large_rocks")
MAIN_JOB = ["--epochs", "14", "--batch-size", "4"]
SMALL_DECODER = "128,64,32,16,8"
ROWS = [
    ("custom", ["--backbone", "custom", *MAIN_JOB]),
    ("efficientnet_lite0, imagenet", ["--backbone", "efficientnet_lite0", *MAIN_JOB]),
    ("efficientnet_lite0, random init", ["--backbone", "efficientnet_lite0", "--encoder-weights", "none", *MAIN_JOB]),
    (f"efficientnet_lite0, imagenet, decoder {SMALL_DECODER}",
     ["--backbone", "efficientnet_lite0", "--decoder-channels", SMALL_DECODER, *MAIN_JOB]),
]  # fmt: skip
HEADING = "## EfficientNet-Lite0: packaged ImageNet weights against random init"


def default_real_set() -> Path:
    """Return the real labelled dev set's folder (shared/real-reference/labelled beside the checkout)."""
    for root in (REPO, *REPO.parents):
        candidate = root / "shared" / "real-reference" / "labelled"
        if candidate.is_dir():
            return candidate
    return REPO / "shared" / "real-reference" / "labelled"


def lunar(args: list[str], env: dict, decoder: str | None = None) -> tuple[dict, float]:
    """Run ``lunar ARGS --json`` (with ``decoder`` channels, see the module doc); return (its JSON, wall seconds)."""
    command = [sys.executable, "-m", "lunar_cli"] if decoder is None else [sys.executable, __file__, "--as-lunar", decoder, "--"]
    start = time.perf_counter()
    proc = subprocess.run([*command, *args, "--json"], env=env, text=True, capture_output=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"lunar {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), seconds


def as_lunar(decoder: str, argv: list[str]) -> int:
    """Run the lunar CLI in this process with smp U-Nets built with ``decoder`` channels; return its exit code."""
    from lunar_cli.cli import run
    from lunar_cli.models import registry

    channels = tuple(int(c) for c in decoder.split(","))
    build = registry.build_model

    def with_decoder(backbone, **kwargs):
        if registry.smp_encoder_name(backbone) is not None:
            kwargs["decoder_channels"] = channels
        return build(backbone, **kwargs)

    registry.build_model = with_decoder
    return run(argv)


def model_size(backbone: str, decoder: str | None) -> dict:
    """Return the U-Net's parameter count and the MB of its fp16 state dict (torch.save), as the default recipe builds it."""
    import torch

    from lunar_cli.models.registry import build_model

    kwargs = {"decoder_channels": tuple(int(c) for c in decoder.split(","))} if decoder else model_kwargs(backbone)
    model = build_model(backbone, encoder_weights="none", **kwargs)
    half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(half, buffer)
    return {"parameters": sum(p.numel() for p in model.parameters()), "fp16_mb": buffer.tell() / 1e6}


def prepare(work: Path, real: Path, env: dict) -> tuple[Path, Path]:
    """Return (synthetic data, real dev data) folders under ``work``, made once with the README's commands."""
    data, realdev = work / "data", work / "realdev"
    if not (data / "manifest.csv").is_file():
        lunar(["fetch", "--source", "synthetic", "--data-dir", str(data), "--force"], env)
        lunar(["split", "--data-dir", str(data)], env)
    if not (realdev / "manifest.csv").is_file():
        lunar(["fetch", "--source", str(real), "--data-dir", str(realdev), "--force"], env)
        lunar(["split", "--data-dir", str(realdev), "--train", "0", "--val", "0", "--test", "1"], env)
    return data, realdev


def run_row(label: str, flags: list[str], data: Path, realdev: Path, work: Path, env: dict) -> dict:
    """Train with ``flags``; score it on synthetic test and the real dev set; return the row."""
    decoder = None
    if "--decoder-channels" in flags:
        at = flags.index("--decoder-channels")
        decoder, flags = flags[at + 1], flags[:at] + flags[at + 2 :]
    name = "-".join("".join(c if c.isalnum() else " " for c in label).split())
    load = os.getloadavg()[0]
    trained, wall = lunar(["train", *flags, "--data-dir", str(data), "--runs-dir", str(work / "runs"), "--name", name,
                           "--exist-ok"], env, decoder)  # fmt: skip
    run_dir = trained["run_dir"]
    synthetic, _ = lunar(["evaluate", run_dir, "--data-dir", str(data), "--split", "test"], env, decoder)
    real, _ = lunar(["evaluate", run_dir, "--data-dir", str(realdev), "--runs-dir", str(work / "realruns")], env, decoder)
    backbone = trained["backbone"]
    row = {"label": label, "flags": " ".join(flags + (["--decoder-channels", decoder] if decoder else [])),
           "backbone": backbone, "best_epoch": trained["best_epoch"], "epochs": trained["epochs_run"],
           "train_s": round(trained["train_seconds"], 1), "train_wall_s": round(wall, 1), "load_before": round(load, 2),
           **model_size(backbone, decoder)}  # fmt: skip
    for key, result, split in (("synthetic", synthetic, "test"), ("real_renders", real, "test"), ("real_photos", real, "test_real")):
        scored = result["splits"][split]
        row[key] = {**{c: scored["iou"][c] for c in CLASSES}, "miou": scored["miou"],
                    "images": scored["images"], "resolution": scored["resolution"]}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def section(rows: list[dict]) -> str:
    """Return the markdown section for ``rows``."""
    fmt = lambda v: f"{v:.3f}"  # noqa: E731
    first = rows[0]
    lines = [
        f"{HEADING} ({date.today().isoformat()})",
        "",
        f"Machine: {machine()}; 2 cores shared with other jobs (load average before each run in the table).",
        "Data: `lunar fetch --source synthetic` (defaults) and `lunar split`; the real labelled dev set "
        "(`lunar fetch --source shared/real-reference/labelled`, `lunar split --train 0 --val 0 --test 1`): **real renders** = the 38 original Kaggle renders (split test), "
        "**real photos** = the 14 real Chang'e-3 photos (split test_real), used for measuring only. Each row: "
        "`lunar train FLAGS` (train s = time in training steps, `train_seconds`), then `lunar evaluate` on whole "
        f"frames, each at its own labels' resolution: synthetic test {first['synthetic']['images']} frames at 480x320, "
        f"real renders {first['real_renders']['images']} and real photos {first['real_photos']['images']} as the real "
        "set's resized copies hold them (256x256 to 1601x1067; photos mostly 423x310). "
        "Size: parameters and the MB of the fp16 state dict. One seed each: differences under about 0.03 are noise. "
        "Rerun: `python bench/bench_effnet.py --write`.",
        "",
        "| model | flags | params | fp16 MB | best epoch | train s (load) | synthetic test ground / sky / small / large "
        "| **synthetic mIoU** | real renders ground / sky / small / large | **real renders mIoU** "
        "| real photos ground / sky / small / large | **real photos mIoU** |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: | --- | ---: |",
    ]
    for r in rows:
        cells = [r["label"], f"`{r['flags']}`", f"{r['parameters'] / 1e6:.2f}M", f"{r['fp16_mb']:.1f}",
                 f"{r['best_epoch']} of {r['epochs']}", f"{r['train_s']:.0f} ({r['load_before']:.1f})"]  # fmt: skip
        for key in ("synthetic", "real_renders", "real_photos"):
            cells += [" / ".join(fmt(r[key][c]) for c in CLASSES), f"**{fmt(r[key]['miou'])}**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 3 and sys.argv[1] == "--as-lunar" and sys.argv[3] == "--":
        sys.exit(as_lunar(sys.argv[2], sys.argv[4:]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=[], help="LABEL:FLAGS instead of the default rows")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".effnet", help="data, runs and rows.json")
    parser.add_argument("--real", type=Path, default=default_real_set(), help="the real labelled dev set")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument("--table", action="store_true", help="only tabulate the rows in --work/rows.json")
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    args.work.mkdir(parents=True, exist_ok=True)
    saved = args.work / "rows.json"
    rows = json.loads(saved.read_text()) if saved.is_file() else []
    todo = [(label, shlex.split(flags)) for label, flags in (r.split(":", 1) for r in args.run)] or ROWS
    if args.table:
        todo = []
    else:
        data, realdev = prepare(args.work, args.real, env)
    for label, flags in todo:
        row = run_row(label, flags, data, realdev, args.work, env)
        rows = [r for r in rows if r["label"] != label] + [row]
        saved.write_text(json.dumps(rows, indent=2))
    for row in rows:  # sizes as the default recipe builds each model
        flags = shlex.split(row["flags"])
        decoder = flags[flags.index("--decoder-channels") + 1] if "--decoder-channels" in flags else None
        row.update(model_size(row["backbone"], decoder))
    text = section(rows)
    print(text)
    if args.write:
        update_section(REPO / "bench" / "RESULTS.md", HEADING, text)


if __name__ == "__main__":
    main()
