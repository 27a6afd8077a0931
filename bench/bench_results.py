"""Keep bench/RESULTS.md as one ``## `` section per benchmark, each rewritten by its own script."""

from __future__ import annotations

from pathlib import Path


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
