"""Shell completion scripts stay in sync with the CLI and are valid shell."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lunar_cli.completions import command_specs, render_all

FOLDER = Path(__file__).resolve().parent.parent / "completions"


@pytest.mark.parametrize("name", sorted(render_all()))
def test_committed_script_matches_the_app(name):
    expected = render_all()[name]
    committed = (FOLDER / name).read_text()
    assert committed == expected, f"completions/{name} is stale: run python -m lunar_cli.completions"


def test_every_command_and_option_is_offered():
    bash = (FOLDER / "lunar.bash").read_text()
    specs = command_specs()
    for command, options in specs.items():
        if command:
            assert f"        {command}) " in bash
        for option in options:
            assert all(name in bash for name in option.names)
    assert "clean ground" in bash  # choices complete too


@pytest.mark.parametrize("shell, name", [("bash", "lunar.bash"), ("zsh", "_lunar"), ("fish", "lunar.fish")])
def test_script_is_valid_syntax(shell, name):
    exe = shutil.which(shell)
    if exe is None:
        pytest.skip(f"{shell} not installed")
    flag = "--no-execute" if shell == "fish" else "-n"
    proc = subprocess.run([exe, flag, str(FOLDER / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_bash_completes_a_subcommand_option():
    if shutil.which("bash") is None:
        pytest.skip("bash not installed")
    script = f"source {FOLDER / 'lunar.bash'}; COMP_WORDS=(lunar split --mask); COMP_CWORD=2; _lunar; echo ${{COMPREPLY[@]}}"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert proc.stdout.split() == ["--mask-source"]
