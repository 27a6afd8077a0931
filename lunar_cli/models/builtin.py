"""The trained model that ships inside lunar, so `lunar predict img.png -o mask.png` works right after install.

It lives in ``lunar_cli/models/builtin/``: ``builtin.pt``, a lunar checkpoint with fp16
weights (half the bytes; rebuilt as fp32 when loaded), and ``builtin.json``, the record of
how it was made and scored. Its ONNX export (for torch-free prediction) is one command
away, ``lunar export builtin -o builtin.onnx``: shipping it too would double what the model
adds to the wheel. ``tools/make_builtin_model.py`` makes the files, and MODEL_CARD.md says
what it was trained on and how well it does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lunar_cli.console import LunarError
from lunar_cli.files import atomic_path

NAME = "builtin"  # what --model and --init accept for it
FOLDER = Path(__file__).resolve().parent / "builtin"


def builtin_checkpoint() -> Path:
    """Return the path of the built-in checkpoint, or raise if this installation lacks it."""
    path = FOLDER / "builtin.pt"
    if not path.is_file():
        raise LunarError(f"{path}: the built-in model is missing from this installation; reinstall lunar")
    return path


def builtin_run(runs_dir: Path) -> Path:
    """Return ``runs_dir/builtin``, a run folder whose best.pt is the built-in model (copied once), for results."""
    source = builtin_checkpoint()
    folder = Path(runs_dir) / NAME
    target = folder / "best.pt"
    if not target.is_file() or target.stat().st_size != source.stat().st_size or target.read_bytes() != source.read_bytes():
        folder.mkdir(parents=True, exist_ok=True)

        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    return folder
