"""Two lunar jobs at once: predict batches sharing an output folder, a training meeting a run folder in use.

The predict jobs are real ``python -m lunar_cli`` processes that import everything
first and then wait for one "go" file, so their work (and their writes) overlap.
Trainings started together into one runs folder, each getting its own run folder, are
in tests/test_interrupts.py (the same three processes are then killed and resumed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lunar_cli.classes import write_png_atomic
from lunar_cli.rundir import lock_run_dir
from tests import corpus
from tests.conftest import make_dataset
from tests.test_interrupts import WAIT_FOR_GO, start_lunar
from tests.test_predict import make_photos, photo, predict, save_model
from tests.test_train import history


def run_together(jobs: list[list], go: Path) -> list[tuple[int, str, str]]:
    """Start every job (lunar arguments), let them all go at once; return (exit code, stdout, stderr) of each."""
    procs = [start_lunar(*args, patch=WAIT_FOR_GO.format(go=str(go))) for args in jobs]
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        results.append((proc.returncode, out, err))
    return results


def test_two_predict_batches_into_one_folder_never_mix_files(tmp_path):
    model = save_model(tmp_path / "model.pt", square=32)
    make_photos(tmp_path / "a", 24, seed=1)  # shot0..shot23
    rng = np.random.default_rng(2)
    b_photos = [tmp_path / "b" / f"shot{i}.png" for i in range(12, 36)]  # 12 names in common with a
    for path in b_photos:
        write_png_atomic(path, photo(rng))
    corpus.truncated_png(tmp_path / "a" / "broken.png")  # a batch job meets a bad file too
    out = tmp_path / "out"
    args = ["-o", out, "--model", model, "--device", "cpu", "--batch-size", "1", "--json"]
    (code_a, out_a, err_a), (code_b, out_b, _) = run_together(
        [["predict", tmp_path / "a", *args], ["predict", tmp_path / "b", *args]], tmp_path / "go"
    )

    # Job a: one bad file among 25 is one warning line (no OpenCV noise) and exit 1; the 24 others are done.
    assert code_a == 1 and code_b == 0
    assert err_a.splitlines() == [line for line in err_a.splitlines() if "broken.png" in line] and len(
        err_a.splitlines()) == 1 and err_a.startswith("warning:"), err_a  # fmt: skip
    records_a, records_b = json.loads(out_a)["records"], json.loads(out_b)["records"]
    assert len(records_a) == 24 and len(records_b) == 24

    # Each file in the shared folder is whole and is exactly one job's mask: its own, or for the
    # 12 names both jobs use, the one written last (each file is replaced in one rename).
    alone_a = predict([tmp_path / "a" / f"shot{i}.png" for i in range(24)], tmp_path / "alone_a", model, batch_size=1)
    alone_b = predict(b_photos, tmp_path / "alone_b", model, batch_size=1)
    assert alone_a["written"] == 24 and alone_b["written"] == 24
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"shot{i}.png" for i in range(36)), "a missing, extra or temporary file"
    for i in range(36):
        got = (out / f"shot{i}.png").read_bytes()
        mine_a = (tmp_path / "alone_a" / f"shot{i}.png").read_bytes() if i < 24 else None
        mine_b = (tmp_path / "alone_b" / f"shot{i}.png").read_bytes() if i >= 12 else None
        assert got in (mine_a, mine_b), f"shot{i}.png is neither job's mask"


def test_a_run_folder_in_use_is_refused_for_resume_and_exist_ok(tmp_path, cli):
    data = make_dataset(tmp_path / "data", n_render=8, n_real=1, size=(32, 32))
    assert cli("split", "--data-dir", data).code == 0
    args = ["--data-dir", data, "--runs-dir", tmp_path / "runs", "--epochs", "1", "--image-size", "32",
            "--batch-size", "4", "--workers", "0", "--device", "cpu"]  # fmt: skip
    assert cli("train", "--name", "busy", *args).code == 0
    run_dir = tmp_path / "runs" / "train" / "busy"
    last = (run_dir / "last.pt").read_bytes()

    held = lock_run_dir(run_dir)  # as a training still running there holds it
    try:
        for extra in (["--resume", run_dir, "--epochs", "2"], ["--name", "busy", "--exist-ok"]):
            result = cli("train", *args, *extra)
            assert result.code == 1 and result.err.count("\n") == 1, result.err
            assert "another lunar train" in result.err and str(run_dir) in result.err, result.err
        assert (run_dir / "last.pt").read_bytes() == last, "the refused training wrote into the run"
    finally:
        held.close()
    assert cli("train", *args, "--resume", run_dir, "--epochs", "2").code == 0  # free again
    assert len(history(run_dir)) == 2
