"""Zero-shot scores of models on the REAL labelled dev set: Chang'e-3 photos and the dataset's original renders.

Every step is the real `lunar` CLI in a subprocess: the dev set is fetched and split once
(`lunar fetch --source DEV`, `lunar split --train 0 --val 0 --test 1`: "test" = the original
renders, "test_real" = the real photos), then `lunar evaluate MODEL --json` scores each model,
whole frames at the labels' own resolution. Per class IoU (ground, sky, small, large) and mIoU
per set go to a table; --write puts it in the "## Real images" section of bench/RESULTS.md.

    python bench/bench_real.py builtin old=/tmp/runs_old/train/custom new=/tmp/runs_new/train/custom --write
    python bench/bench_real.py new=/tmp/runs_new/train/custom --heights 320,480   # also fed at those heights

--heights scores each model a second time per height: a copy of its checkpoint whose frame
size rule is that height, the aspect kept (`FrameSize(height=...)`, as the built-in model is fed).

Rows accumulate in --results (JSON, one row per model, stage and set), so scores of a later
stage can join them: score changed models (fine-tuned, say) with `--stage "fine-tuned"` under
the same labels and the summary table gets a column for it beside "zero-shot".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from bench_results import REPO, machine, update_section

DEV = Path("/work/shared/real-reference/labelled")
CLASSES = ("ground", "sky", "small_rocks", "large_rocks")
SETS = {"test_real": "real photos", "test": "original renders"}


def lunar(*args: str, env: dict) -> dict:
    """Run ``lunar ARGS --json``; return its JSON result. Stops the script with lunar's error on failure."""
    proc = subprocess.run([sys.executable, "-m", "lunar_cli", *args, "--json"], env=env, text=True,
                          capture_output=True)  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"lunar {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def prepare(dev: Path, work: Path, env: dict) -> Path:
    """Fetch and split the dev set under work/dev (once: an existing manifest is reused)."""
    data = work / "dev"
    if not (data / "manifest.csv").is_file():
        lunar("fetch", "--source", str(dev), "--data-dir", str(data), "--force", env=env)
        lunar("split", "--data-dir", str(data), "--train", "0", "--val", "0", "--test", "1", env=env)
    return data


def score(label: str, model: str, stage: str, data: Path, work: Path, env: dict) -> list[dict]:
    """Return one row per set (photos, renders) of a model's per-class IoU and mIoU."""
    start = time.perf_counter()
    result = lunar("evaluate", model, "--data-dir", str(data), "--runs-dir", str(work / "runs"), env=env)
    seconds = time.perf_counter() - start
    rows = []
    for split, name in SETS.items():
        part = result["splits"][split]
        rows.append({"model": label, "source": model, "stage": stage, "set": name, "images": part["images"],
                     "resolution": part["resolution"], "miou": part["miou"],
                     **{c: part["iou"][c] for c in CLASSES}, "seconds": round(seconds, 1)})
    return rows


def at_height(model: str, height: int, work: Path) -> Path:
    """Return a copy of ``model``'s checkpoint that is fed every photo at ``height``, aspect kept."""
    from lunar_cli.frames import FrameSize
    from lunar_cli.model_files import find_model
    from lunar_cli.models.checkpoint import load_checkpoint, save_checkpoint

    path, _ = find_model(model, work / "runs")
    ckpt = load_checkpoint(path)
    out = work / "heights" / f"{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}-h{height}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model_state=ckpt["model"], meta={**ckpt["meta"], "frame_size": FrameSize(height=height).as_meta()})
    return out


def merge(path: Path, rows: list[dict]) -> list[dict]:
    """Return the rows kept in `path` with the new ones replacing any of the same model, stage and set."""
    old = json.loads(path.read_text()) if path.is_file() else []
    key = lambda r: (r["model"], r["stage"], r["set"])  # noqa: E731
    fresh = {key(r) for r in rows}
    merged = [r for r in old if key(r) not in fresh] + rows
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=1))
    os.replace(tmp, path)
    return merged


def tables(rows: list[dict]) -> list[str]:
    """Return markdown lines: per-class scores, then mIoU per model and set with one column per stage."""
    lines = ["| model | stage | set | images | ground | sky | small rocks | large rocks | **mIoU** |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['stage']} | {r['set']} | {r['images']} | "
                     + " | ".join(f"{r[c]:.3f}" for c in CLASSES) + f" | **{r['miou']:.3f}** |")
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    lines += ["", "| model | set | " + " | ".join(f"{s} mIoU" for s in stages) + " |",
              "| --- | --- | " + " | ".join("---:" for _ in stages) + " |"]
    for model in dict.fromkeys(r["model"] for r in rows):
        for name in SETS.values():
            cells = [next((f"{r['miou']:.3f}" for r in rows if (r["model"], r["set"], r["stage"]) == (model, name, s)),
                          "-") for s in stages]
            lines.append(f"| {model} | {name} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="[LABEL=]MODEL", help="builtin, a run folder or a checkpoint")
    parser.add_argument("--dev", type=Path, default=DEV, help="the labelled real images, Kaggle layout")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_real"), help="dev copy and evaluation runs")
    parser.add_argument("--stage", default="zero-shot", help="what was done to the models before scoring")
    parser.add_argument("--results", type=Path, help="JSON the rows accumulate in (default: WORK/results.json)")
    parser.add_argument("--note", default="", help="a sentence for the section: how the models were trained")
    parser.add_argument("--heights", default="", help="comma-separated heights to also feed each model at (aspect kept)")
    parser.add_argument("--write", action="store_true", help="write the tables into bench/RESULTS.md")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    data = prepare(args.dev, args.work, env)
    rows = []
    for spec in args.models:
        label, _, model = spec.rpartition("=")
        rows += score(label or model, model, args.stage, data, args.work, env)
        for height in filter(None, args.heights.split(",")):
            copy = at_height(model, int(height), args.work)
            rows += score(f"{label or model} @ height {height}", str(copy), args.stage, data, args.work, env)
    rows = merge(args.results or args.work / "results.json", rows)
    resolutions = "; ".join(dict.fromkeys(f"{r['set']}: {r['resolution']}" for r in rows))
    text = [f"## Real images: zero-shot scores on the labelled dev set (bench/bench_real.py, {date.today().isoformat()})",
            "", f"Machine: {machine()}. REAL images: {args.dev} (14 Chang'e-3 photos with hand masks, resized copies; "
            f"38 original renders of the dataset with clean masks), scored by `lunar evaluate` whole frames ({resolutions}). "
            "Not a training set: no model here learnt from them. " + args.note, "", *tables(rows)]
    print("\n".join(text))
    if args.write:
        update_section(REPO / "bench/RESULTS.md", "## Real images: zero-shot", "\n".join(text))


if __name__ == "__main__":
    main()
