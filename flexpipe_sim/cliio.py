"""The CLI's two consoles and its one-line error and warning (shared by cli.py and calibratecli.py)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

console = Console()
err = Console(stderr=True)



def _error(message: object) -> None:
    """One red line; the message is escaped (rich would eat '[kernel]' or a --set value's '[a]' as markup)."""
    err.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def _warn(message: str) -> None:
    err.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)
