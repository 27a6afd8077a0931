"""The command line as a user meets it: help, version, errors, exit codes, startup time."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

COMMANDS = ["fetch", "split", "eda", "train", "evaluate", "predict", "compare", "serve"]


def test_root_help_lists_every_command(cli):
    result = cli("--help")
    assert result.code == 0
    for command in COMMANDS:
        assert command in result.out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(cli, command):
    result = cli(command, "--help")
    assert result.code == 0
    assert f"lunar {command}" in result.out
    assert "--config" in result.out


def test_version(cli):
    from lunar_cli import __version__

    result = cli("--version")
    assert result.code == 0
    assert result.out.strip() == f"lunar {__version__}"


def test_unknown_option_is_one_line_usage_error(cli):
    result = cli("split", "--bogus")
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert "--bogus" in result.err and "lunar split --help" in result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize("args, flag", [
    (["split", "--mask-source", "dirty"], "--mask-source"),
    (["evaluate", "--split", "tests"], "--split"),
    (["predict", "x.png", "--format", "jpeg"], "--format"),
    (["train", "--loss", "hinge"], "--loss"),
])  # fmt: skip
def test_bad_choice_is_one_line(cli, args, flag):
    result = cli(*args)
    assert result.code == 2
    assert result.err.count("\n") == 1 and flag in result.err


def test_missing_dataset_says_which_command_makes_it(cli, tmp_path):
    result = cli("split", "--data-dir", tmp_path / "nothing")
    assert result.code == 1
    assert "run lunar fetch --source synthetic" in result.err
    assert result.err.count("\n") == 1


def test_help_does_not_import_torch_and_is_fast():
    code = (
        "import sys, time; t = time.perf_counter();"
        "from lunar_cli.cli import run; rc = run(['--help']);"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules and 'rich' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'rich'));"
        "print(time.perf_counter() - t)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # In-process import + help; generous bound so a loaded CI machine does not flake.
    assert float(proc.stdout.strip().splitlines()[-1]) < 1.0


def test_python_dash_m_runs_the_same_app():
    proc = subprocess.run([sys.executable, "-m", "lunar_cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("lunar ")


def test_debug_shows_traceback(cli, tmp_path):
    result = cli("--debug", "split", "--data-dir", tmp_path)
    assert result.code == 1
    assert "Traceback" in result.err


def test_startup_timing_for_the_record():
    """Not a timing assertion: `lunar --help` as a subprocess must simply succeed."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lunar_cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert time.perf_counter() - start < 10
