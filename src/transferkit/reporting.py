"""How errors and progress reach the user: one stderr console, one error format.

Kept free of heavy imports (no torch) so the CLI and the server start fast.
"""

from __future__ import annotations

from rich.console import Console

from transferkit.errors import TransferkitError

console = Console(stderr=True, soft_wrap=True)


def report_error(error: TransferkitError) -> int:
    """Show a user-facing error (no traceback) and return its exit code."""
    console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    return error.exit_code
