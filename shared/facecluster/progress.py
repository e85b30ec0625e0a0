"""Progress bars: rich on a terminal, silent otherwise (logs stay clean in Jobs)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


def want_progress() -> bool:
    return sys.stderr.isatty()


class _Null:
    def advance(self, n: int = 1) -> None:
        pass


class _Bar:
    def __init__(self, progress, task):
        self._p, self._t = progress, task

    def advance(self, n: int = 1) -> None:
        self._p.advance(self._t, n)


@contextmanager
def bar(description: str, total: int | None, enabled: bool | None = None) -> Iterator[_Null | _Bar]:
    """``with bar("embedding", n) as b: b.advance(k)`` — a no-op when disabled or not a TTY."""
    if enabled is None:
        enabled = want_progress()
    if not enabled:
        yield _Null()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as p:
        yield _Bar(p, p.add_task(description, total=total))
