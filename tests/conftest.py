"""Shared test helpers: run the CLI in-process, and make tiny datasets in tmp_path."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; before torch loads

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lunar_cli.classes import encode_mask, write_png_atomic
from lunar_cli.cli import run


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def cli(capsys):
    """Run ``lunar ARGS`` in-process; return exit code, stdout and stderr."""

    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        code = run([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


def tiny_scene(rng: np.random.Generator, height: int = 48, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Return (RGB image, class-index mask): sky band on top, ground, a small and a large rock."""
    mask = np.zeros((height, width), np.uint8)
    horizon = int(rng.integers(height // 6, height // 3))
    mask[:horizon] = 1
    y, x = int(rng.integers(horizon + 4, height - 6)), int(rng.integers(4, width - 6))
    mask[y : y + 3, x : x + 3] = 2
    y, x = int(rng.integers(horizon + 2, height - 12)), int(rng.integers(2, width - 12))
    mask[y : y + 9, x : x + 9] = 3
    image = np.stack([mask * 60 + 20] * 3, axis=2).astype(np.uint8)
    return image, mask


def make_dataset(root: Path, n_render: int = 20, n_real: int = 3, seed: int = 0, size=(48, 64)) -> Path:
    """Write a tiny dataset in the original layout under ``root`` (with dataset.json)."""
    rng = np.random.default_rng(seed)
    for sub in ("images/render", "images/clean", "images/ground", "real_moon_images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(1, n_render + 1):
        image, mask = tiny_scene(rng, *size)
        write_png_atomic(root / f"images/render/render{i:04d}.png", image)
        write_png_atomic(root / f"images/clean/clean{i:04d}.png", encode_mask(mask))
        write_png_atomic(root / f"images/ground/ground{i:04d}.png", encode_mask(mask))
    for i in range(1, n_real + 1):
        image, mask = tiny_scene(rng, *size)
        write_png_atomic(root / f"real_moon_images/PCAM{i}.png", image)
        write_png_atomic(root / f"real_moon_images/g_PCAM{i}.png", encode_mask(mask))
    (root / "dataset.json").write_text(json.dumps({"source": "test", "counts": {"render": n_render}}))
    return root


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """A tiny hand-made dataset (20 rendered scenes, 3 real photos) under tmp_path/data."""
    return make_dataset(tmp_path / "data")
