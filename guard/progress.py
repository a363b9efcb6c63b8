"""Progress of long work as short lines, for a person watching a terminal.

The library reports to an optional ``Progress`` callable; the command line passes one
that prints on stderr when it is a terminal, and nothing otherwise, so pipes and files
get only the result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

Progress = Callable[[str], None]


def on_terminal(console: Console) -> Progress | None:
    """Progress lines on ``console`` (stderr) when a person watches it; None for a pipe
    or a file, which get only the result."""
    if not console.is_terminal:
        return None
    return lambda line: console.print(line, style="dim", markup=False, highlight=False)
