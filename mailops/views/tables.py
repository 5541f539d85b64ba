"""Tables for a terminal or a CI log, where addresses and hosts are never cut.

A row's key columns (address, host) are what a reader searches for, so they are
shown whole. When the console is too narrow for a table whose key columns are whole
and whose other columns are still readable, the rows are shown as blocks instead:
the key on a line of its own, the other columns indented below it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

# A column other than a key column narrower than this is no longer readable in a table.
_READABLE = 12
# A value of another column is cut after this many characters (a subject of 200,000 would fill
# thousands of lines); --json shows it whole.
MAX_SHOWN = 300


@dataclass(frozen=True)
class Column:
    title: str
    key: bool = False  # shown whole: never wrapped, folded or cut


def records(console: Console, title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> RenderableType:
    """A table when it fits ``console``, else one block per row. A value of a column that is no key is cut
    after :data:`MAX_SHOWN` characters. A value's lines are its own
    (``\\n``); any other control character is shown escaped, never sent to the terminal."""
    from rich.table import Table
    from rich.text import Text

    from mailops.errors import printable

    title = printable(title)  # it may carry what a user typed (a search): shown, never markup or a control
    rows = [
        [
            "\n".join(printable(line) for line in (value if column.key else _shortened(value)).split("\n"))
            for value, column in zip(row, columns, strict=True)
        ]
        for row in rows
    ]
    widths = [max([len(column.title)] + [_widest_line(row[i]) for row in rows]) for i, column in enumerate(columns)]
    needed = sum(w if c.key else min(w, _READABLE) for w, c in zip(widths, columns, strict=True))
    needed += 3 * len(columns) + 1  # borders and padding
    if needed <= console.width:
        table = Table(title=Text(title), title_justify="left")
        for column, width in zip(columns, widths, strict=True):
            if column.key:
                table.add_column(column.title, no_wrap=True, min_width=width)
            else:
                table.add_column(column.title, overflow="fold")
        for row in rows:
            table.add_row(*(Text(value) for value in row))  # text, never rich markup
        return table
    text = Text(title + "\n", style="bold")
    label_width = max(len(c.title) for c in columns if not c.key) + 1
    for row in rows:
        keys = "  ".join(value for value, column in zip(row, columns, strict=True) if column.key and value)
        text.append("\n" + keys + "\n")
        for value, column in zip(row, columns, strict=True):
            if column.key or not value:
                continue
            indent = " " * (label_width + 4)
            lines = value.splitlines()
            text.append(f"  {column.title + ':':<{label_width}} {lines[0]}\n")
            for line in lines[1:]:
                text.append(f"{indent}{line}\n")
    return text


def _widest_line(value: str) -> int:
    return max((len(line) for line in value.splitlines()), default=0)


def _shortened(value: str) -> str:
    return value if len(value) <= MAX_SHOWN else value[: MAX_SHOWN - 1] + "…"
