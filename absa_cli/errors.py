"""Errors a user can cause.

A ``UserError`` is printed by the CLI as one line (no traceback) and exits with code 2. Its message must name
the problem and the fix. Internal errors are not ``UserError`` and keep their traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: wrong key, wrong type, missing file, unknown name."""

    exit_code = 2


class DataNotFoundError(UserError):
    """A dataset's files are not where the config says they should be."""
