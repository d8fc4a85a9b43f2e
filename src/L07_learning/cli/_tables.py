"""Tables that fit the terminal without cutting an id: ids (what people copy) are never shortened or folded; other
text wraps; a column that does not fit any more is left out (from the right) and named under the table."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

# A token someone may copy: no spaces, at least 8 characters, with a digit (uuids, key ids, model names with a size).
_ID = re.compile(r"^(?=.*\d)[A-Za-z0-9][A-Za-z0-9_.:/@+=-]{7,}$")
_MIN_TEXT = 6  # narrowest a wrapping column is allowed to become


def _id_width(cells: list[str]) -> int:
    """Width of the longest id in a column (0: the column holds no id)."""
    return max((len(c) for c in cells if _ID.match(c)), default=0)


def _needed(widths: list[tuple[int, int]]) -> int:
    """Characters the table needs at the least for columns of ``(id width, longest cell)``."""
    # Without outer edges a column costs its text, one space each side and one rule between columns.
    return sum(max(ident, min(longest, _MIN_TEXT)) + 3 for ident, longest in widths) - 1


def fitted_table(title: str, columns: Iterable[Any], rows: Iterable[Iterable[Any]], width: int) -> tuple[Table, list[str]]:
    """A rich table for ``width`` characters, and the names of the columns left out to keep every id whole."""
    headers = [str(c) for c in columns]
    cells = [[str(x) if x is not None else "" for x in r] for r in rows]
    widths = {i: (_id_width([r[i] for r in cells if i < len(r)]),
                  max([len(headers[i])] + [len(r[i]) for r in cells if i < len(r)])) for i in range(len(headers))}
    # Columns are kept from the left (commands put what matters first) while they fit; the first always stays.
    keep = [0] if headers else []
    for i in range(1, len(headers)):
        if _needed([widths[k] for k in [*keep, i]]) <= width:
            keep.append(i)
    t = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False)
    for i in keep:
        ident = widths[i][0]
        t.add_column(headers[i], min_width=ident or None, no_wrap=bool(ident) and ident == widths[i][1],
                     overflow="fold")
    for r in cells:
        t.add_row(*[r[i] if i < len(r) else "" for i in keep])
    return t, [headers[i] for i in range(len(headers)) if i not in keep]


def print_table(console: Console, title: str, columns: Iterable[Any], rows: Iterable[Iterable[Any]]) -> None:
    """Print a fitted table; name what was left out (``--json`` prints every field)."""
    t, dropped = fitted_table(title, columns, rows, console.width)
    console.print(t)
    if dropped:
        console.print(f"(not shown at {console.width} columns: {', '.join(dropped)}; widen the terminal or use --json)")
