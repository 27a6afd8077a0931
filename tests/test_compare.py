"""lunar compare as a user runs it: every figure, a ranked table, missing evaluations filled in once."""

from __future__ import annotations

import json

import pytest

from lunar_cli.compare import compare_runs, format_table, rank_rows
from lunar_cli.console import LunarError
from lunar_cli.data.split import make_split
from tests.conftest import make_dataset
from tests.test_evaluate import train_tiny

FIGURES = ["curves.png", "miou.png", "predictions.png"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data_dir = make_dataset(root / "data", n_render=16, n_real=3, size=(64, 64))
    make_split(data_dir)
    runs_dir = root / "runs"
    train_tiny(data_dir, runs_dir, "alpha", seed=0, epochs=1)
    train_tiny(data_dir, runs_dir, "beta", seed=1, epochs=2)
    return data_dir, runs_dir


def test_compare_all_runs_writes_figures_and_a_ranked_table(setup, tmp_path, capsys):
    data_dir, runs_dir = setup
    out = tmp_path / "compare"
    result = compare_runs(None, runs_dir=runs_dir, data_dir=data_dir, out_dir=out, device="cpu", n_images=3,
                          progress=False)  # fmt: skip

    for name in [*FIGURES, "compare.json", "compare.md"]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        assert str(out / name) in result["files"]
    assert json.loads((out / "compare.json").read_text()) == json.loads(json.dumps(result))
    rows = result["rows"]
    assert [r["rank"] for r in rows] == [1, 2] and {r["run"] for r in rows} == {"alpha", "beta"}
    key = [(r["test_real_miou"], r["test_miou"]) for r in rows]
    assert key == sorted(key, reverse=True)
    for row in rows:
        run = runs_dir / "train" / row["run"]
        saved = json.loads((run / "eval.json").read_text())["splits"]  # evaluated on the way
        metrics = json.loads((run / "metrics.json").read_text())
        assert row["test_miou"] == saved["test"]["miou"] and row["test_real_miou"] == saved["test_real"]["miou"]
        assert row["backbone"] == "custom" and row["parameters"] == metrics["parameters"]
        assert row["best_epoch"] == metrics["best_epoch"] and row["epochs_run"] == metrics["epochs_run"]
        assert row["best_val_miou"] == metrics["best_val_miou"]
    assert "evaluating now" in capsys.readouterr().err
    table = (out / "compare.md").read_text()
    assert table.index("| 1 ") < table.index(f"| {rows[0]['run']} ") < table.index("| 2 ")


def test_a_second_compare_reuses_eval_json(setup, tmp_path, capsys):
    data_dir, runs_dir = setup
    compare_runs(None, runs_dir=runs_dir, data_dir=data_dir, out_dir=tmp_path / "a", device="cpu", n_images=1,
                 progress=False)  # fmt: skip
    stamps = {p: p.stat().st_mtime_ns for p in (runs_dir / "train").glob("*/eval.json")}
    capsys.readouterr()
    result = compare_runs(["beta"], runs_dir=runs_dir, data_dir=data_dir, out_dir=tmp_path / "b", device="cpu",
                          n_images=0, progress=False)  # fmt: skip
    assert "evaluating now" not in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert [r["run"] for r in result["rows"]] == ["beta"]
    assert not (tmp_path / "b" / "predictions.png").exists()  # n_images=0


def test_compare_without_runs_compares_the_builtin_model_and_a_wrong_run_is_an_error(setup, tmp_path):
    data_dir, runs_dir = setup
    result = compare_runs(None, runs_dir=tmp_path / "empty", data_dir=data_dir, out_dir=tmp_path / "out", device="cpu",
                          n_images=1, progress=False)  # fmt: skip
    assert [row["run"] for row in result["rows"]] == ["builtin"]
    assert (tmp_path / "empty" / "builtin" / "eval.json").is_file()  # results beside a copy, not in the package
    with pytest.raises(LunarError, match="not a run folder with best.pt") as exc:
        compare_runs(["gamma"], runs_dir=runs_dir, data_dir=data_dir, device="cpu", progress=False)
    assert "\n" not in str(exc.value)


def test_ranking_puts_real_photos_first_and_missing_scores_last():
    rows = [
        {"run": "a", "test_real_miou": 0.4, "test_miou": 0.9},
        {"run": "b", "test_real_miou": 0.5, "test_miou": 0.1},
        {"run": "c", "test_real_miou": None, "test_miou": 0.99},
        {"run": "d", "test_real_miou": 0.4, "test_miou": 0.95},
    ]
    ranked = rank_rows(rows)
    assert [(r["rank"], r["run"]) for r in ranked] == [(1, "b"), (2, "d"), (3, "a"), (4, "c")]
    lines = format_table(ranked).splitlines()
    assert len(lines) == 2 + 4 and lines[0].startswith("| rank") and set(lines[1]) <= {"|", "-"}
    assert "| 4    | c " in lines[-1] and "| -" in lines[-1]
