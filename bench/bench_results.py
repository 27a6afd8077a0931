"""What the bench scripts share: bench/RESULTS.md as one ``## `` section per benchmark (each
rewritten by its own script), the machine in words, the built-in model in words, the default custom U-Net, the precisions.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the checkout's lunar_cli, also where it is not installed (a lent GPU machine)
    sys.path.insert(1, str(REPO))


def machine() -> str:
    """Return the machine in words: CPU model, cores, native bf16, GPU if any, torch (threads) and Python."""
    import torch

    from lunar_cli.parallel import cpu_cores
    from lunar_cli.runtime import cpu_bf16_support

    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)  # fmt: skip
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {cpu_cores()} cores (native bf16: {cpu_bf16_support() or 'none'}){gpu}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {sys.version.split()[0]}")  # fmt: skip


def model_kwargs(backbone: str) -> dict:
    """Return the options the default recipe builds ``backbone`` with (the custom U-Net's width and depth)."""
    from lunar_cli.config import TrainConfig

    defaults = TrainConfig()
    return {"base_width": defaults.width, "depth": defaults.depth} if backbone == "custom" else {}


def precisions() -> list[tuple[str, bool]]:
    """Return the (label, amp) pairs to time on this CPU: fp32, and bf16 autocast where it runs natively."""
    from lunar_cli.runtime import cpu_bf16_support

    return [("fp32", False)] + ([("bf16", True)] if cpu_bf16_support() else [])


def update_section(path: Path, heading_prefix: str, text: str) -> None:
    """Replace the section whose heading line starts with ``heading_prefix`` by ``text``, or append it.

    A section runs from its heading line up to the next line starting with ``## `` (or
    the end of the file). ``text`` should itself start with the heading. The file is
    written atomically, so a crash never leaves half a results file.
    """
    from lunar_cli.files import write_text_atomic

    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    lines = old.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(heading_prefix)), None)
    block = text.strip("\n").splitlines()
    if start is None:
        while lines and not lines[-1].strip():
            lines.pop()
        new = lines + [""] + block
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = lines[:start] + block + ([""] if end < len(lines) else []) + lines[end:]
    write_text_atomic(path, "\n".join(new) + "\n")


def builtin_description() -> str:
    """Return what the built-in model is, from its own metadata (backbone, frame size rule)."""
    from lunar_cli.model_spec import ModelSpec
    from lunar_cli.models.builtin import builtin_checkpoint
    from lunar_cli.models.checkpoint import load_checkpoint

    spec = ModelSpec(load_checkpoint(builtin_checkpoint())["meta"])
    return f"{spec.backbone}, fed at {spec.frame_size.describe()}"
