"""Values that come from data, printed as plain text: never read as rich markup, and control
characters (ESC, CR, NUL, ...) shown escaped instead of reaching the terminal."""

from __future__ import annotations

import re
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escaped(value: object, pattern: re.Pattern[str] = _CONTROL) -> str:
    text = "" if value is None else str(value)
    return pattern.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def shown(value: object) -> Text:
    return Text(_escaped(value))


def marked(template: str, **values: object) -> Text:
    """One line whose markup is ours and whose `{fields}` are data, e.g.
    `marked("[red]window {key} failed[/red]: {error}", key=k, error=e)`: each value is escaped
    for rich and its control characters, newlines included, are shown escaped."""
    safe = {k: escape(_escaped(v, _CONTROL_OR_NEWLINE)) for k, v in values.items()}
    return Text.from_markup(template.format(**safe))


class DataTable(Table):
    """A table whose string cells are data: each is added as `shown(cell)`. A cell that is
    meant to carry markup is passed as a `Text` (e.g. `Text.from_markup("[red]x[/red]")`)."""

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        cells = [c if isinstance(c, Text) or c is None else shown(c) for c in renderables]
        super().add_row(*cells, **kwargs)
