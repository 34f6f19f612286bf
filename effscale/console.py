"""The one place that owns the terminal: data on stdout, diagnostics on stderr.

Commands describe their tables as ``Column`` lists over plain-dict records; ``emit``
renders them as a rich table, JSON, CSV or Markdown. No Keras here.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

FORMATS = ("table", "json", "csv", "markdown")

out = Console(soft_wrap=False)
err = Console(stderr=True)
# Piped or redirected output would otherwise be cut to 80 columns with ellipses.
if not out.is_terminal:
    out = Console(soft_wrap=False, width=240)
if not err.is_terminal:
    err = Console(stderr=True, width=240)


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: Callable[[object], str] = str
    justify: str = "right"


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


def rich_table(records: Sequence[dict], columns: Sequence[Column], title: str | None = None,
               caption: str | None = None) -> Table:
    table = Table(title=title, caption=caption, header_style="bold")
    for col in columns:
        table.add_column(col.header, justify=col.justify)
    for record in records:
        table.add_row(*(col.fmt(record.get(col.key)) if record.get(col.key) is not None else "-"
                        for col in columns))
    return table


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
        out.print(rich_table(records, columns, title, caption))
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
