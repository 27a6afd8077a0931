"""Human-readable summaries of command results (rich tables on stdout)."""

from __future__ import annotations

from typing import Callable

from lunar_cli.console import out


def _table(title: str, columns: list[str], rows: list[list[object]]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    return table


def _fetch(result: dict) -> None:
    dataset = result.get("dataset")
    if dataset:
        counts = dataset.get("counts", {})
        out.print(_table(f"dataset in {result['data_dir']} (source: {dataset.get('source')})", ["folder", "files"],
                         [[k, v] for k, v in counts.items()]))
    for path in result.get("models", []):
        out.print(f"model: {path}")


def _split(result: dict) -> None:
    counts = result["counts"]
    total = result["total"] or 1
    rows = [[name, n, f"{100 * n / total:.1f}%"] for name, n in counts.items()]
    rows.append(["total", result["total"], "100.0%"])
    out.print(_table(f"split (seed {result['seed']}, masks: {result['mask_source']})", ["split", "pairs", "share"], rows))
    if result["skipped"]:
        out.print(f"skipped {len(result['skipped'])} bad pair(s)")
    out.print(f"manifest: {result['manifest']}")


RENDERERS: dict[str, Callable[[dict], None]] = {"fetch": _fetch, "split": _split}


def show(command: str, result: dict) -> None:
    """Print the result of ``command`` for a person reading a terminal."""
    RENDERERS[command](result)
