"""Config precedence (defaults < YAML < flags) and clear errors for bad YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lunar_cli.config import Config, load_config
from lunar_cli.config_tree import as_plain
from lunar_cli.console import LunarError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_without_file():
    cfg = load_config()
    assert cfg.seed == 42 and cfg.split.train == 0.49 and cfg.data_dir == Path("data")


def test_yaml_overrides_defaults_and_flags_override_yaml(tmp_path):
    path = write(tmp_path, "seed: 7\nsplit:\n  mask_source: ground\nfetch:\n  count: 10\n")
    cfg = load_config(path, {"seed": 9, "fetch.count": None})
    assert cfg.seed == 9  # flag wins
    assert cfg.fetch.count == 10  # flag not given (None) keeps the file's value
    assert cfg.split.mask_source == "ground"


def test_unknown_key_is_named_with_suggestion(tmp_path):
    with pytest.raises(LunarError, match=r"unknown config key 'split.trian': did you mean 'train'\?"):
        load_config(write(tmp_path, "split:\n  trian: 0.5\n"))


def test_unknown_section_is_named(tmp_path):
    with pytest.raises(LunarError, match="unknown config key 'fetchh'"):
        load_config(write(tmp_path, "fetchh: {}\n"))


@pytest.mark.parametrize(
    "text, key",
    [
        ("seed: forty\n", "seed"),
        ("seed: 4.5\n", "seed"),
        ("split:\n  strict: 'yes'\n", "split.strict"),
        ("split:\n  mask_source: dirty\n", "split.mask_source"),
        ("fetch: 3\n", "fetch"),
        ("fetch:\n  count: true\n", "fetch.count"),
    ],
)
def test_wrong_type_names_the_key(tmp_path, text, key):
    with pytest.raises(LunarError, match=f"config key '{key}'"):
        load_config(write(tmp_path, text))


def test_shares_must_add_up(tmp_path):
    with pytest.raises(LunarError, match="add up to 1"):
        load_config(write(tmp_path, "split:\n  train: 0.9\n"))


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(LunarError, match="invalid YAML at line"):
        load_config(write(tmp_path, "seed: [1,\n"))
    with pytest.raises(LunarError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_example_yaml_is_rendered_from_the_config():
    from lunar_cli.config import example_yaml

    assert (ROOT / "example.yaml").read_text() == example_yaml(), "regenerate: python -m lunar_cli.config > example.yaml"


def test_choices_are_declared_once_and_help_completions_and_example_follow():
    """Add a value to one Literal in config.py: --help, the completions and example.yaml all offer it."""
    script = (
        "import typing\n"
        "from lunar_cli import config\n"
        "config.Loss = typing.Literal['ce', 'dice', 'focal', 'ce+dice', 'lovasz']\n"
        "from typer.testing import CliRunner\n"
        "from lunar_cli.cli import app\n"
        "from lunar_cli.completions import render_all\n"
        "print(CliRunner().invoke(app, ['train', '--help'], terminal_width=200).output)\n"
        "print(render_all()['lunar.bash'])\n"
        "print(config.example_yaml())\n"
    )
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    help_text, rest = proc.stdout.split("# bash completion", 1)
    bash, example = rest.split("# lunar configuration", 1)
    assert "--loss <ce|dice|focal|ce+dice|lovasz>" in help_text
    assert '"ce dice focal ce+dice lovasz"' in bash
    assert "loss: ce+dice           # [ce | dice | focal | ce+dice | lovasz]" in example


def test_example_yaml_documents_every_option_with_its_default():
    text = (ROOT / "example.yaml").read_text()
    data = yaml.safe_load(text)
    assert data == as_plain(Config()), "example.yaml must show every option at its default"
    for line in text.splitlines():
        if ":" in line and not line.strip().startswith("#") and not line.rstrip().endswith(":"):
            assert "#" in line, f"option without a comment in example.yaml: {line.strip()}"
    assert load_config(ROOT / "example.yaml") == Config()


def test_cli_config_flag_and_bad_file_errors(cli, tmp_path):
    bad = write(tmp_path, "split:\n  nope: 1\n")
    result = cli("split", "--config", bad)
    assert result.code == 1 and "unknown config key 'split.nope'" in result.err
    assert result.err.count("\n") == 1
    result = cli("train", "--config", bad)  # even unbuilt commands check their config
    assert result.code == 1 and "split.nope" in result.err
