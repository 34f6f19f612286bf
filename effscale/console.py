"""The one place that owns the terminal: data on stdout, diagnostics on stderr.

Commands describe their tables as ``Column`` lists over plain-dict records; ``emit``
renders them as a rich table, JSON, CSV or Markdown. No Keras here.

A rich table wider than the terminal would cut its cells to "…", so ``fit_tables`` never
lets that happen: a table that does not fit is split into several, each repeating the
key columns (a one-record table turns into a vertical key/value list instead). Nothing
is dropped; ``--format csv|json|markdown`` always keep every column.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

FORMATS = ("table", "json", "csv", "markdown")

out = Console(soft_wrap=False)
err = Console(stderr=True)
# Piped or redirected output has no width of its own: rich would assume 80 columns. A
# COLUMNS the user sets still wins (rich reads it itself).
if not out.is_terminal and "COLUMNS" not in os.environ:
    out = Console(soft_wrap=False, width=240)
if not err.is_terminal and "COLUMNS" not in os.environ:
    err = Console(stderr=True, width=240)


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: Callable[[object], str] = str
    justify: str = "right"
    repeat: bool = False  # repeated in every part when a table is split to fit the terminal


def fmt_int(value) -> str:
    return f"{int(value):,}"


def fmt_gmacs(value) -> str:
    return f"{value / 1e9:.3f}"


def fmt_float(digits: int = 3) -> Callable[[object], str]:
    def render(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value:.{digits}f}"

    return render


def fmt_ratio(value) -> str:
    return f"{value:.2f}x"


def fmt_pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _cells(records: Sequence[dict], columns: Sequence[Column]) -> list[list[str]]:
    return [[col.fmt(record.get(col.key)) if record.get(col.key) is not None else "-" for col in columns]
            for record in records]


def rich_table(records: Sequence[dict], columns: Sequence[Column], title: str | None = None,
               caption: str | None = None) -> Table:
    table = Table(title=title, caption=caption, header_style="bold")
    for col in columns:
        # fold, not "…": a cell wider than the whole terminal wraps instead of losing text
        table.add_column(col.header, justify=col.justify, overflow="fold")
    for row in _cells(records, columns):
        table.add_row(*row)
    return table


def _width(texts) -> int:
    return max(cell_len(line) for text in texts for line in str(text).splitlines() or [""])


def _table_width(widths: Sequence[int]) -> int:
    # rich's default box: one border per column plus one, and one space of padding each side
    return 1 + sum(w + 3 for w in widths)


def fit_tables(records: Sequence[dict], columns: Sequence[Column], width: int, title: str | None = None,
               caption: str | None = None) -> list[Table]:
    """Tables that show every cell of ``records`` in full within ``width`` columns."""
    cells = _cells(records, columns)
    widths = [_width([col.header, *(row[i] for row in cells)]) for i, col in enumerate(columns)]
    if _table_width(widths) <= width or not columns:
        return [rich_table(records, columns, title, caption)]
    if len(records) == 1:
        table = Table(title=title, caption=caption, header_style="bold")
        table.add_column("", justify="left", overflow="fold")
        table.add_column("", justify="left", overflow="fold")
        for col, cell in zip(columns, cells[0]):
            table.add_row(col.header, cell)
        table.show_header = False
        return [table]
    keys = [i for i, col in enumerate(columns) if col.repeat] or [0]
    rest = [i for i in range(len(columns)) if i not in keys]

    def pack(limit: int) -> list[list[int]]:
        groups: list[list[int]] = []
        for i in rest:
            if groups and _table_width([widths[k] for k in keys + groups[-1] + [i]]) <= limit:
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups

    groups = pack(width)
    # The narrowest limit that needs no more parts: parts of even width, not one leftover column.
    for limit in range(max(_table_width([widths[k] for k in keys + [i]]) for i in rest), width):
        if len(balanced := pack(limit)) <= len(groups):
            groups = balanced
            break
    tables = []
    for n, group in enumerate(groups):
        chosen = [columns[i] for i in sorted(keys + group)]
        part = f"{title} ({n + 1}/{len(groups)})" if title else None
        tables.append(rich_table(records, chosen, part, caption if n == len(groups) - 1 else None))
    return tables


def to_frame(records: Sequence[dict], columns: Sequence[Column] | None = None):
    import pandas as pd  # deferred: keeps --help fast

    frame = pd.DataFrame(list(records))
    if columns is not None:
        frame = frame[[c.key for c in columns if c.key in frame.columns]]
    return frame


def render(records: Sequence[dict], columns: Sequence[Column], fmt: str) -> str:
    """JSON keeps every key; CSV and Markdown keep the table's columns with raw values."""
    if fmt == "json":
        return json.dumps(list(records), indent=2, default=str) + "\n"
    frame = to_frame(records, columns)
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "markdown":
        return frame.to_markdown(index=False) + "\n"
    raise ValueError(f"unknown format {fmt!r}")


def emit(records: Sequence[dict], columns: Sequence[Column], fmt: str = "table",
         title: str | None = None, caption: str | None = None) -> None:
    if fmt == "table":
        for table in fit_tables(records, columns, out.width, title, caption):
            out.print(table)
    else:
        sys.stdout.write(render(records, columns, fmt))


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` with every run of whitespace (newlines included) as one space, cut to ``limit``.

    The single helper behind every one-line message: CLI errors, FAILED trial records and
    the reasons quoted from library exceptions.
    """
    flat = " ".join(str(text).split())
    return flat if limit is None else flat[:limit]


def describe(exc: BaseException, limit: int | None = None) -> str:
    """``Type: message`` of an exception on one line."""
    return one_line(f"{type(exc).__name__}: {exc}", limit)


def info(message: str) -> None:
    err.print(message, highlight=False)


def warn(message: str) -> None:
    err.print(f"[yellow]Warning:[/yellow] {message}", highlight=False)
