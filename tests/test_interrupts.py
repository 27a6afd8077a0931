"""kill -9 at bad moments: a training resumes to the very same history, and fetch or split leave nothing that looks valid.

Each victim is a real ``python -m lunar_cli`` process. Three trainings are let go at
the same moment into one runs folder (each must get its own run folder); two are
killed at seeded random times (counted in epochs, so the points land mid-run on any
machine) and one from inside ``torch.save`` halfway through a checkpoint. fetch and
split are killed from inside their writes (a patch that SIGKILLs the process at that
call), and by the clock. The tests then check what a later command sees.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from lunar_cli.data.split import make_split
from lunar_cli.models.checkpoint import load_checkpoint
from tests.conftest import make_dataset
from tests.test_train import history

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
TRAIN = ["--epochs", "6", "--image-size", "32", "--batch-size", "4", "--deterministic", "--device", "cpu",
         "--workers", "0"]  # fmt: skip

# Python run first in a job that must start at the same moment as others: import the
# heavy parts, then wait for the "go" file (not cv2: lunar sets its log level first).
WAIT_FOR_GO = """
import pathlib, time
import torch, lunar_cli.torch_model, lunar_cli.predict, lunar_cli.train
while not pathlib.Path({go!r}).exists():
    time.sleep(0.002)
"""
KILL_IN_TORCH_SAVE = """
import os, signal, torch
_real, _calls = torch.save, [0]
def _save(obj, f, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] == {n}:  # write the start of a checkpoint, then die
        f.write(b"PK\\x03\\x04 half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return _real(obj, f, *args, **kwargs)
torch.save = _save
"""
KILL_IN_COPYFILEOBJ = """
import os, shutil, signal
_real, _calls = shutil.copyfileobj, [0]
def _copy(src, dst, length=0):
    _calls[0] += 1
    if _calls[0] == {n}:  # half of one file unpacked, then die
        dst.write(src.read(16))
        dst.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return _real(src, dst, length)
shutil.copyfileobj = _copy
"""
KILL_IN_OS_REPLACE = """
import os, signal
_real, _calls = os.replace, [0]
def _replace(src, dst):
    _calls[0] += 1
    if _calls[0] == {n}:
        os.kill(os.getpid(), signal.SIGKILL)
    return _real(src, dst)
os.replace = _replace
"""
KILL_IN_WRITE_TEXT = """
import os, pathlib, signal
_real = pathlib.Path.write_text
def _write_text(self, text, *args, **kwargs):
    if self.name.startswith(".{name}."):  # the temporary file beside it: write half, then die
        _real(self, text[: len(text) // 2], *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    return _real(self, text, *args, **kwargs)
pathlib.Path.write_text = _write_text
"""
KILL_IN_UNLINK = """
import os, pathlib, signal
_real = pathlib.Path.unlink
def _unlink(self, *args, **kwargs):
    if self.name == "{name}":
        os.kill(os.getpid(), signal.SIGKILL)
    return _real(self, *args, **kwargs)
pathlib.Path.unlink = _unlink
"""


def start_lunar(*args, patch: str | None = None) -> subprocess.Popen:
    """Start ``python -m lunar_cli ARGS`` (after running ``patch``, if given) with single-threaded OpenMP."""
    if patch is None:
        cmd = [sys.executable, "-m", "lunar_cli", *map(str, args)]
    else:
        main = "import sys\nfrom lunar_cli.cli import main\nsys.argv = ['lunar', *sys.argv[1:]]\nmain()\n"
        cmd = [sys.executable, "-c", patch + main, *map(str, args)]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def killed_from_inside(*args, patch: str) -> str:
    """Run lunar with a patch that SIGKILLs it; return its stderr, failing if it was not killed."""
    proc = start_lunar(*args, patch=patch)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"not killed (exit {proc.returncode}): {err[-1500:]}"
    return err


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll every 5 ms until ``condition()`` holds; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"ended early: {proc.communicate()[1][-1500:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def rows_in(path: Path) -> int:
    """Return the data rows in a history.csv (0 when absent or being replaced)."""
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except OSError:
        return 0


def checkpoints_load(run_dir: Path) -> list[str]:
    """Return the epoch held by each .pt in the run folder, loading each as lunar does (a damaged one raises)."""
    return [f"{p.name}@{load_checkpoint(p)['meta']['epoch']}" for p in sorted(run_dir.glob("*.pt"))]


# --- training -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    root = make_dataset(tmp_path_factory.mktemp("interrupts") / "data", n_render=24, n_real=1, size=(64, 64))
    make_split(root)
    return root


def run_folders(runs: Path, procs: list[subprocess.Popen]) -> dict[int, Path]:
    """Return each training's run folder (pid -> folder), read from the lock each one holds."""
    found: dict[int, Path] = {}

    def all_found() -> bool:
        for lock in runs.glob("train/*/.lock"):
            text = lock.read_text().strip()
            if text.isdigit():
                found[int(text)] = lock.parent
        return all(p.pid in found for p in procs)

    for proc in procs:
        wait_for(all_found, proc)
    return {p.pid: found[p.pid] for p in procs}


def kill_by_the_clock(proc: subprocess.Popen, run_dir: Path, delay_epochs: float) -> str:
    """kill -9 ``proc`` ``delay_epochs`` epochs after its first epoch ends (its own epoch time is the clock)."""
    wait_for(lambda: rows_in(run_dir / "history.csv") >= 1, proc)
    epoch_seconds = float((run_dir / "history.csv").read_text().splitlines()[1].split(",")[-2])
    time.sleep(delay_epochs * epoch_seconds)
    alive = proc.poll() is None
    proc.kill()
    proc.communicate()
    assert alive, "the training ended before the kill: make the run longer"
    return f"killed {delay_epochs:.2f} epochs after epoch 1 (history then had {rows_in(run_dir / 'history.csv')} rows)"


def test_trainings_started_together_get_own_folders_and_resume_after_kill_9_to_the_same_history(
    train_data, tmp_path, cli
):
    reference = cli("train", "--data-dir", train_data, "--runs-dir", tmp_path / "reference", *TRAIN)
    assert reference.code == 0, reference.err
    expected = history(tmp_path / "reference" / "train" / "custom")
    best_and_last = checkpoints_load(tmp_path / "reference" / "train" / "custom")
    assert len(expected) == 6 and best_and_last[1] == "last.pt@6"

    # Three identical trainings let go at the same moment into one runs folder (a batch job
    # started twice): each gets its own folder. Two are killed by the clock at seeded random
    # points, one from inside torch.save halfway through its 4th checkpoint write.
    runs, go = tmp_path / "runs", tmp_path / "go"
    args = ("train", "--data-dir", train_data, "--runs-dir", runs, *TRAIN)
    clocks = [start_lunar(*args, patch=WAIT_FOR_GO.format(go=str(go))) for _ in range(2)]
    saver = start_lunar(*args, patch=WAIT_FOR_GO.format(go=str(go)) + KILL_IN_TORCH_SAVE.format(n=4))
    go.touch()
    folders = run_folders(runs, [*clocks, saver])
    assert sorted(f.name for f in folders.values()) == ["custom", "custom2", "custom3"]

    seen: dict[Path, str] = {}
    delays = [round(random.Random(seed).uniform(0.1, 3.0), 2) for seed in (1, 5)]
    threads = [threading.Thread(target=lambda p=p, d=d: seen.update({folders[p.pid]: kill_by_the_clock(
        p, folders[p.pid], d)})) for p, d in zip(clocks, delays)]  # fmt: skip
    for thread in threads:
        thread.start()
    _, err = saver.communicate(timeout=300)
    assert saver.returncode == -signal.SIGKILL, err[-1500:]
    seen[folders[saver.pid]] = "killed halfway through its 4th checkpoint write"
    for thread in threads:
        thread.join(timeout=300)
    assert len(seen) == 3, seen  # a clock thread that failed says why above

    for run_dir, how in sorted(seen.items()):
        held = checkpoints_load(run_dir)  # every .pt loads: none is half-written
        assert any(h.startswith("last.pt@") for h in held), (run_dir.name, how, held)
        resumed = cli("train", "--resume", run_dir, "--data-dir", train_data, "--device", "cpu")
        assert resumed.code == 0, (run_dir.name, how, resumed.err)
        assert history(run_dir) == expected, (run_dir.name, how, held)
        assert checkpoints_load(run_dir) == best_and_last, (run_dir.name, how)


# --- fetch ----------------------------------------------------------------------------


def big_zip(path: Path, renders: int = 300) -> Path:
    """Write a dataset zip with ``renders`` tiny pairs (enough files that unpacking takes a while)."""
    from tests.corpus import _dataset_entries

    entries = _dataset_entries()
    png = entries["images/render/render0001.png"]
    mask = entries["images/clean/clean0001.png"]
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(1, renders + 1):
            zf.writestr(f"lunar/images/render/render{i:04d}.png", png)
            zf.writestr(f"lunar/images/clean/clean{i:04d}.png", mask)
        zf.writestr("lunar/real_moon_images/PCAM1.png", png)
        zf.writestr("lunar/real_moon_images/g_PCAM1.png", mask)
    return path


def no_dataset_anywhere(cli, data: Path) -> None:
    """Assert that nothing in ``data`` looks like a dataset to split and train, and that they say so in one line."""
    assert not (data / "dataset.json").exists()
    for command in ("split", "train"):
        result = cli(command, "--data-dir", data, *(["--runs-dir", data.parent / "runs"] if command == "train" else []))
        assert result.code == 1 and result.err.count("\n") == 1, result.err
        assert "no dataset in" in result.err and "run lunar fetch" in result.err, result.err


@pytest.mark.parametrize("how", ["clock", "mid-file"])
def test_kill_9_during_extraction_leaves_no_dataset(tmp_path, cli, how):
    archive = big_zip(tmp_path / "lunar.zip")
    data = tmp_path / "data"
    if how == "clock":  # the moment the first file appears in the staging folder
        proc = start_lunar("fetch", "--source", archive, "--data-dir", data)
        wait_for(lambda: any(data.glob(".fetch-*.partial/extract/lunar/images/render/*")), proc)
        proc.kill()
        proc.communicate()
    else:
        killed_from_inside("fetch", "--source", archive, "--data-dir", data, patch=KILL_IN_COPYFILEOBJ.format(n=50))
    assert list(data.glob(".fetch-*.partial")), "the kill missed the extraction"
    no_dataset_anywhere(cli, data)

    again = cli("fetch", "--source", archive, "--data-dir", data)  # no --force needed: nothing was installed
    assert again.code == 0, again.err
    assert (data / "dataset.json").is_file() and len(list((data / "images" / "render").iterdir())) == 300
    assert not list(data.glob(".fetch-*")), "the next fetch cleans up what the killed one left"


@pytest.mark.parametrize("point", ["manifest unlink", "moving parts"])
def test_kill_9_while_replacing_a_dataset_leaves_nothing_that_looks_valid(tmp_path, cli, point):
    data = make_dataset(tmp_path / "data", n_render=6, n_real=1)
    make_split(data)
    archive = big_zip(tmp_path / "lunar.zip", renders=10)
    patch = (KILL_IN_UNLINK.format(name="manifest.csv") if point == "manifest unlink"
             else KILL_IN_OS_REPLACE.format(n=2))  # fmt: skip  # old images moved aside, new ones not yet in
    killed_from_inside("fetch", "--source", archive, "--data-dir", data, "--force", patch=patch)
    no_dataset_anywhere(cli, data)

    refused = cli("fetch", "--source", archive, "--data-dir", data)
    assert refused.code == 1 and "pass --force" in refused.err, refused.err
    assert cli("fetch", "--source", archive, "--data-dir", data, "--force").code == 0
    assert cli("split", "--data-dir", data).code == 0


# --- split ----------------------------------------------------------------------------


def test_kill_9_while_writing_the_manifest_keeps_the_old_one_or_none(tmp_path, cli):
    data = make_dataset(tmp_path / "data", n_render=30, n_real=2)
    manifest = data / "manifest.csv"
    make_split(data, seed=2)
    new = manifest.read_bytes()
    make_split(data, seed=1)
    old = manifest.read_bytes()
    assert old != new

    killed_from_inside("split", "--data-dir", data, "--seed", 2, patch=KILL_IN_WRITE_TEXT.format(name="manifest.csv"))
    assert manifest.read_bytes() == old  # the half-written temporary file is not the manifest
    killed_from_inside("split", "--data-dir", data, "--seed", 2, patch=KILL_IN_OS_REPLACE.format(n=1))
    assert manifest.read_bytes() == old

    rng = random.Random(3)
    for _ in range(3):  # and by the clock: whatever the moment, the old manifest or the whole new one
        proc = start_lunar("split", "--data-dir", data, "--seed", 2)
        time.sleep(rng.uniform(0.0, 1.0))
        proc.kill()
        proc.communicate()
        assert manifest.read_bytes() in (old, new)
    assert cli("split", "--data-dir", data, "--seed", 2).code == 0 and manifest.read_bytes() == new

    manifest.unlink()  # a first split killed mid-write: no manifest, and train says to run split
    killed_from_inside("split", "--data-dir", data, patch=KILL_IN_WRITE_TEXT.format(name="manifest.csv"))
    assert not manifest.exists()
    result = cli("train", "--data-dir", data, "--runs-dir", tmp_path / "runs")
    assert result.code == 1 and "no manifest" in result.err and "run lunar split" in result.err, result.err
