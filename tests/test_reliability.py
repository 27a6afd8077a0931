"""Every bad input of tests/corpus.py against every command that takes it.

The rule for each (input, command) case: a one-line error naming the input and a
non-zero exit code where the command cannot use it, or a documented warning (or a
silent conversion) and exit 0 where it can; never a traceback; and nothing good lost:
the good files handled in the same run still get their outputs.

Photos and masks reach fetch, split and eda inside one "dirty" dataset holding every
bad pair beside good ones (as a user's download would); train and evaluate stop at
the first bad pair, so each unusable pair gets its own dataset, and the usable ones
share one run. ``predict`` takes each photo in a folder with two good photos (the big
frame goes to predict only, with and without ``--tile``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from lunar_cli.classes import encode_mask, read_image_rgb, write_png_atomic
from lunar_cli.cli import run
from lunar_cli.data.probe import probe_image
from tests import corpus
from tests.conftest import CliResult, make_dataset
from tests.corpus import ARCHIVE, CHECKPOINT, CONFIG, CORPUS, MASK, PHOTO
from tests.test_fetch import http_server  # noqa: F401 - a fixture: a local HTTP server, no network
from tests.test_predict import save_model

COMMANDS = ("fetch", "split", "eda", "train", "evaluate", "predict", "compare")
SIZE = 32  # the models and datasets here are 32x32: the whole matrix runs in seconds


def lunar(*args) -> CliResult:
    """Run ``lunar ARGS`` in-process with the streams a real process has.

    stdout is UTF-8 that refuses what it cannot encode (as a pipe or terminal does),
    stderr escapes it (Python's own stderr policy). The ``cli`` fixture of conftest
    captures stderr strictly, which would fail on non-UTF-8 file names that a real
    stderr prints as escapes.
    """
    out_buf, err_buf = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_buf, encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(err_buf, encoding="utf-8", errors="backslashreplace", write_through=True)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run([str(a) for a in args])
    return CliResult(code, out_buf.getvalue().decode("utf-8"), err_buf.getvalue().decode("utf-8"))


@dataclass
class Case:
    """One input against one command: what was expected, what happened, and the verdict."""

    item: str
    command: str
    expect: str  # "error": refused, exit != 0 | "warn": used, with a warning naming it | "ok": used
    result: CliResult | None = None
    handled: bool = False
    lost: int = 0  # good files (or pairs) whose output is missing after the run
    why: str = ""


def judge(case: Case, result: CliResult, token: str, lost: int = 0, listed: bool | None = None) -> Case:
    """Fill in ``case`` from ``result``: handled when the exit code, the lines and the naming are as expected.

    ``token`` is a part of the input's name that the message must show; ``listed``
    says whether a result file names it, for commands whose warning names only the first
    bad input (eda).
    """
    case.result, case.lost = result, lost
    lines = result.err.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    warnings = [line for line in lines if line.startswith("warning:") and token in line]
    problems = []
    if "Traceback" in result.err or "(a bug:" in result.err:
        problems.append("traceback or unexpected exception")
    if case.expect == "error":
        if result.code == 0:
            problems.append("exit code 0")
        if case.command == "predict" and not errors:  # a batch: the bad photo is skipped with a warning
            if not warnings:
                problems.append(f"no warning naming {token}")
        elif len(errors) != 1 or lines[-1] != errors[0] or token not in errors[0]:
            problems.append(f"not one error line naming {token}")
    else:
        if result.code != 0:
            problems.append(f"exit code {result.code}")
        if errors:
            problems.append("error line")
        named = bool(warnings) if listed is None else listed and any(ln.startswith("warning:") for ln in lines)
        if case.expect == "warn" and not named:
            problems.append(f"no warning naming {token}")
    if lost:
        problems.append(f"{lost} good output(s) lost")
    case.handled = not problems
    case.why = "; ".join(problems) + (f" | {result.err.strip()[-300:]}" if problems else "")
    return case


# --- the dirty dataset (fetch, split, eda) and per-case datasets (train, evaluate) ---------------------


def _mask_for(image: Path, mask: Path) -> None:
    """Write a palette mask at ``mask`` sized like lunar decodes the photo ``image`` (JPEGs upright)."""
    height, width = read_image_rgb(image).shape[:2]
    write_png_atomic(mask, encode_mask(corpus.scene(height, width)[1]))


def add_pair(root: Path, number: int, it: corpus.Item) -> tuple[Path, Path]:
    """Add the pair number ``number`` to the dataset at ``root`` with ``it`` as its photo or mask; return (image, mask)."""
    render, clean = root / "images" / "render", root / "images" / "clean"
    image, mask = render / f"render{number:04d}.png", clean / f"clean{number:04d}.png"
    if it.kind == PHOTO:
        image = it.build(image)
        mask = clean / f"clean{image.stem.removeprefix('render')}.png"
        if it.usable:
            _mask_for(image, mask)
        else:
            write_png_atomic(mask, encode_mask(corpus.scene(SIZE, SIZE)[1]))
    else:
        write_png_atomic(image, corpus.scene(SIZE, SIZE)[0])
        mask = it.build(mask, SIZE, SIZE)
    return image, mask


def write_manifest(root: Path, rows: list[tuple[Path, Path, str]]) -> None:
    """Write manifest.csv by hand (as if files went bad after lunar split); raw bytes keep non-UTF-8 names."""
    lines = [b"image,mask,split\n"]
    for image, mask, split in rows:
        lines.append(b",".join([os.fsencode(image.relative_to(root)), os.fsencode(mask.relative_to(root)),
                                split.encode()]) + b"\n")  # fmt: skip
    (root / "manifest.csv").write_bytes(b"".join(lines))


def good_rows(root: Path) -> list[tuple[Path, Path, str]]:
    """Return manifest rows for the 4 good rendered pairs and the real photo made by ``small_dataset``."""
    pair = lambda i: (root / f"images/render/render{i:04d}.png", root / f"images/clean/clean{i:04d}.png")  # noqa: E731
    return [(*pair(1), "train"), (*pair(2), "train"), (*pair(3), "val"), (*pair(4), "test"),
            (root / "real_moon_images/PCAM1.png", root / "real_moon_images/g_PCAM1.png", "test_real")]  # fmt: skip


def small_dataset(root: Path) -> Path:
    """Return a dataset of 4 good 32x32 rendered pairs and 1 real photo."""
    return make_dataset(root, n_render=4, n_real=1, size=(SIZE, SIZE))


def pair_items() -> list[corpus.Item]:
    """Return the photos and masks that reach the dataset commands (a big frame is a predict matter)."""
    return [it for it in CORPUS if it.kind in (PHOTO, MASK) and not it.name.startswith("huge")]


def kept_by_split(it: corpus.Item) -> bool:
    """True when lunar split keeps the pair: a usable file whose name is UTF-8 (the manifest is UTF-8 text)."""
    return it.usable and it.name != "non_utf8_name"


def token_of(path: Path) -> str:
    """Return the part of a file name that a message must show (its ASCII start for a non-UTF-8 name)."""
    name = path.name
    return name.split("_\udce9")[0] if "\udce9" in name else name


# --- the matrix --------------------------------------------------------------------------------


def dataset_cases(tmp: Path) -> list[Case]:
    """fetch, split and eda on one dirty dataset; train and evaluate per unusable pair and once for the usable ones."""
    cases: list[Case] = []
    src = small_dataset(tmp / "dirty")
    pairs = {it.name: add_pair(src, 100 + n, it) for n, it in enumerate(pair_items())}

    data = tmp / "fetched"
    result = lunar("fetch", "--source", src, "--data-dir", data)
    for it in pair_items():
        image, mask = pairs[it.name]
        wanted = [p for p in (image, mask) if p.exists()]
        lost = sum(not (data / p.relative_to(src)).exists() for p in wanted)
        cases.append(judge(Case(it.name, "fetch", "ok"), result, token_of(image), lost))

    result = lunar("split", "--data-dir", data)
    listed = set()
    if result.code == 0:
        with open(data / "manifest.csv", newline="", encoding="utf-8") as fh:
            listed = {row["image"] for row in csv.DictReader(fh)}
    good_missing = sum(f"images/render/render{i:04d}.png" not in listed for i in range(1, 5))
    for it in pair_items():
        image, mask = pairs[it.name]
        lost = good_missing + (kept_by_split(it) and image.relative_to(src).as_posix() not in listed)
        token = token_of(image if it.kind == PHOTO else mask)
        cases.append(judge(Case(it.name, "split", "ok" if kept_by_split(it) else "warn"), result, token, lost))

    result = lunar("eda", "--data-dir", data, "--out", tmp / "eda", "--workers", "0")
    report = json.loads((tmp / "eda" / "eda.json").read_text()) if result.code == 0 else {}
    flagged = " ".join(report.get("problems", []) + report.get("bad_files", []))  # eda.json names every bad pair
    usable = [it for it in pair_items() if kept_by_split(it)]
    lost = max(0, 4 + len(usable) - report.get("counts", {}).get("rendered", 0))
    for it in pair_items():
        image, mask = pairs[it.name]
        token = token_of(image if it.kind == PHOTO else mask)
        case = Case(it.name, "eda", "ok" if kept_by_split(it) else "warn")
        cases.append(judge(case, result, token, lost, listed=token in flagged))

    model = save_model(tmp / "model.pt", square=SIZE)
    for it in pair_items():
        if kept_by_split(it):
            continue
        root = small_dataset(tmp / "case" / it.name)
        image, mask = add_pair(root, 100, it)
        # One manifest for train, one for evaluate: a frame in both splits is refused on its own.
        write_manifest(root, good_rows(root) + [(image, mask, "train")])
        token = "manifest.csv" if it.name == "non_utf8_name" else (image if it.kind == PHOTO else mask).name
        result = lunar("train", "--data-dir", root, "--runs-dir", root / "runs", "--epochs", "1", "--image-size",
                       SIZE, "--batch-size", "4", "--workers", "0", "--device", "cpu")  # fmt: skip
        cases.append(judge(Case(it.name, "train", "error"), result, token))
        shutil.copy(model, root / "best.pt")
        write_manifest(root, good_rows(root) + [(image, mask, "test")])
        result = lunar("evaluate", root / "best.pt", "--data-dir", root, "--workers", "0", "--device", "cpu")
        cases.append(judge(Case(it.name, "evaluate", "error"), result, token))

    root = small_dataset(tmp / "usable")
    added = {it.name: add_pair(root, 100 + n, it) for n, it in enumerate(usable)}
    write_manifest(root, good_rows(root) + [(i, m, "train") for i, m in added.values()])
    result = lunar("train", "--data-dir", root, "--runs-dir", root / "runs", "--epochs", "1", "--image-size", SIZE,
                   "--batch-size", "4", "--workers", "0", "--device", "cpu")  # fmt: skip
    metas = [json.loads(p.read_text()) for p in (root / "cache").glob("*/meta.json")]
    cached = {meta["name"]: meta["count"] for meta in metas}
    for it in usable:  # the train split: 2 good pairs and every usable one
        lost = (2 + len(usable)) - cached.get("train", 0)
        cases.append(judge(Case(it.name, "train", "ok"), result, it.name, lost))
    shutil.copy(model, root / "best.pt")
    write_manifest(root, good_rows(root) + [(i, m, "test") for i, m in added.values()])
    result = lunar("evaluate", root / "best.pt", "--data-dir", root, "--workers", "0", "--device", "cpu")
    scored = json.loads((root / "eval.json").read_text())["splits"]["test"]["images"] if result.code == 0 else 0
    for it in usable:  # the test split: 1 good pair and every usable one
        cases.append(judge(Case(it.name, "evaluate", "ok"), result, it.name, (1 + len(usable)) - scored))
    return cases


def predict_cases(tmp: Path) -> list[Case]:
    """Each photo in a folder with two good photos; the big frame also tiled at the model's own size."""
    cases = []
    model = save_model(tmp / "model.pt", square=SIZE)
    notes = {"grayscale": "grayscale", "16_bit": "16-bit", "rgba": "RGBA"}
    for it in (i for i in CORPUS if i.kind == PHOTO):
        folder = tmp / it.name / "in"
        folder.mkdir(parents=True)
        for name in ("good1.png", "good2.png"):
            write_png_atomic(folder / name, corpus.scene()[0])
        photo = it.build(folder / f"{it.name}.png")
        out = tmp / it.name / "out"
        result = lunar("predict", folder, "-o", out, "--model", model, "--device", "cpu")
        wanted = ["good1.png", "good2.png"] + ([f"{photo.stem}.png"] if it.usable else [])
        lost = sum(not (out / name).is_file() for name in wanted)
        if it.usable and not lost:  # the mask covers the photo as it is shown (JPEGs upright by EXIF)
            lost = int(probe_image(out / f"{photo.stem}.png") != probe_image(photo))
        expect = "error" if not it.usable else ("warn" if it.name in notes else "ok")
        case = judge(Case(it.name, "predict", expect), result, notes.get(it.name, token_of(photo)), lost)
        cases.append(case)
        if it.name.startswith("huge"):
            tiler = save_model(tmp / "tiler.pt", square=256, base_width=1, depth=1)
            result = lunar("predict", photo, "-o", tmp / "tiled.png", "--model", tiler, "--tile", "--overlap", "0",
                           "--device", "cpu")  # fmt: skip
            lost = int(result.code != 0 or probe_image(tmp / "tiled.png") != probe_image(photo))
            cases.append(judge(Case(it.name, "predict --tile", "ok"), result, photo.name, lost))
    return cases


def archive_cases(tmp: Path, server) -> list[Case]:
    """Unsafe zips: fetch --source for the datasets, fetch --models over local HTTP for the checkpoints."""
    www, base = server
    cases = []
    for it in (i for i in CORPUS if i.kind == ARCHIVE):
        folder = tmp / it.name
        data, models = folder / "deep" / "data", folder / "deep" / "models"
        data.mkdir(parents=True)
        if it.name.startswith("models"):
            archive = it.build(www / f"{it.name}.zip")
            result = lunar("fetch", "--models", f"{base}/{archive.name}", "--models-dir", models, "--data-dir", data)
            token = "escaped.pt"
        else:
            archive = it.build(folder / f"{it.name}.zip")
            result = lunar("fetch", "--source", archive, "--data-dir", data)
            token = archive.name
        escaped = [p for p in folder.rglob("escaped*") if p.is_file()] + list(Path(www).parent.glob("escaped*"))
        installed = (data / "dataset.json").exists() or (models.exists() and any(models.iterdir()))
        cases.append(judge(Case(it.name, "fetch", "error"), result, token, lost=len(escaped) + installed))
    return cases


def checkpoint_cases(tmp: Path) -> list[Case]:
    """Each bad checkpoint as predict --model, evaluate TARGET, train --resume RUN and compare RUN."""
    cases = []
    data = small_dataset(tmp / "data")
    write_manifest(data, good_rows(data))
    photo = tmp / "photo.png"
    write_png_atomic(photo, corpus.scene()[0])
    for it in (i for i in CORPUS if i.kind == CHECKPOINT):
        marker = tmp / f"{it.name}-pickle-ran"
        run_dir = tmp / it.name / "run"
        run_dir.mkdir(parents=True)
        args = (marker,) if it.name == "pickle_payload" else ()
        it.build(run_dir / "best.pt", *args)
        shutil.copy(run_dir / "best.pt", run_dir / "last.pt")
        calls = {
            "predict": ("predict", photo, "-o", tmp / it.name / "mask.png", "--model", run_dir / "best.pt"),
            "evaluate": ("evaluate", run_dir / "best.pt", "--data-dir", data),
            "train": ("train", "--resume", run_dir, "--data-dir", data, "--runs-dir", tmp / "runs"),
            "compare": ("compare", run_dir, "--data-dir", data, "--out", tmp / it.name / "compare"),
        }
        for command, call in calls.items():
            result = lunar(*call, "--device", "cpu")
            token = "last.pt" if command == "train" else "best.pt"
            cases.append(judge(Case(it.name, command, "error"), result, token, lost=int(marker.exists())))
    return cases


def config_cases(tmp: Path) -> list[Case]:
    """Each bad YAML file given to every command with --config."""
    cases = []
    tmp.mkdir(parents=True)
    for it in (i for i in CORPUS if i.kind == CONFIG):
        marker = tmp / f"{it.name}-tag-ran"
        config = it.build(tmp / f"{it.name}.yaml", *((marker,) if it.name == "yaml_python_tag" else ()))
        for command in COMMANDS:
            extra = {"predict": ["photo.png"]}.get(command, [])
            result = lunar(command, *extra, "--config", config, "--data-dir" if command != "predict" else "--runs-dir",
                           tmp / "nothing")  # fmt: skip
            cases.append(judge(Case(it.name, command, "error"), result, config.name, lost=int(marker.exists())))
    return cases


def summary(cases: list[Case]) -> str:
    """Return the per-command counts and the totals, one line each."""
    lines = []
    for command in sorted({c.command for c in cases}):
        mine = [c for c in cases if c.command == command]
        lines.append(f"  {command:<16} tried {len(mine):>3}  handled {sum(c.handled for c in mine):>3}  "
                     f"lost {sum(c.lost for c in mine)}")  # fmt: skip
    items = {c.item for c in cases}
    lines.append(f"  {len(items)} inputs x their commands: tried {len(cases)}, handled {sum(c.handled for c in cases)}, "
                 f"lost {sum(c.lost for c in cases)}")  # fmt: skip
    return "\n".join(lines)


def test_every_bad_input_against_every_command(tmp_path, http_server, capsys):  # noqa: F811
    cases = (
        dataset_cases(tmp_path / "datasets")
        + predict_cases(tmp_path / "predict")
        + archive_cases(tmp_path / "archives", http_server)
        + checkpoint_cases(tmp_path / "checkpoints")
        + config_cases(tmp_path / "configs")
    )
    with capsys.disabled():
        print("\nreliability corpus x commands:\n" + summary(cases))
    assert {c.item for c in cases} == {it.name for it in CORPUS}, "an input was never tried"
    failures = [f"{c.item} x {c.command} (expected {c.expect}): {c.why}" for c in cases if not c.handled]
    assert not failures, "\n".join(failures)
    assert len(cases) == 108 and sum(c.lost for c in cases) == 0


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LUNAR_SLOW") != "1", reason="8000x6000 tiling takes about 30 s: set LUNAR_SLOW=1")
def test_8000x6000_frame_is_tiled_at_full_resolution(tmp_path):
    tiler = save_model(tmp_path / "tiler.pt", square=256, base_width=1, depth=1)
    photo = corpus.huge_png(tmp_path / "huge.png", width=8000, height=6000)
    result = lunar("predict", photo, "-o", tmp_path / "mask.png", "--model", tiler, "--tile", "--device", "cpu")
    assert result.code == 0, result.err
    assert probe_image(tmp_path / "mask.png") == (8000, 6000)  # width, height: the mask is at the photo's own size
