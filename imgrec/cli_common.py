"""What every command shares: library errors shown as one line (exit 2)."""

from __future__ import annotations

import typer

from imgrec.checkpoint import CheckpointError
from imgrec.config import ConfigError
from imgrec.storage import StorageError


class clear_errors:
    """Show library errors (bad URI, missing bucket, bad config) as one line, exit 2."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):

        if exc is not None and isinstance(
            exc, StorageError | ConfigError | CheckpointError | FileNotFoundError | ValueError
        ):
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2)
        return False
