"""What every command shares: turning user errors into one line and exit code 2."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

import typer

from absa_cli.errors import UserError


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a ``UserError`` as ``error: <message>`` on stderr (no traceback) and exit with its code (2)."""
    try:
        yield
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(exc.exit_code) from None
