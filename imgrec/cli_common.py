"""What every command shares: library errors shown as one line (exit 2), and
older option spellings upgraded with a note."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer
from typer.core import TyperGroup

from imgrec.checkpoint import CheckpointError
from imgrec.cli_options import Option, flag_of
from imgrec.config import ConfigError
from imgrec.storage import StorageError


class clear_errors:
    """Show library errors (bad URI, missing bucket, bad config) as one line, exit 2;
    a config error names the option of the command's ``options`` that sets its field."""

    def __init__(self, options: Sequence[Option] = ()):
        self.options = options

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None and isinstance(
            exc, StorageError | ConfigError | CheckpointError | FileNotFoundError | ValueError
        ):
            typer.secho(f"error: {self._text(exc)}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2)
        return False

    def _text(self, exc: BaseException) -> str:
        flag = flag_of(self.options, exc.field) if isinstance(exc, ConfigError) and exc.field else None
        return exc.naming(flag) if flag else str(exc)


def _is_count(text: str) -> bool:
    return text.isdigit() and int(text) > 0


def upgrade_args(args: list[str]) -> list[str]:
    """One image-size syntax (``--image-size 128`` or ``128x96``): the older
    ``--image-size H W`` and ``--size HxW`` still work, with a deprecation note."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--size":
            print("note: --size is deprecated; use --image-size", file=sys.stderr)
            arg = "--image-size"
        if arg == "--image-size" and i + 2 < len(args) and _is_count(args[i + 1]) and _is_count(args[i + 2]):
            size = f"{args[i + 1]}x{args[i + 2]}"
            print(f"note: --image-size {args[i + 1]} {args[i + 2]} is deprecated; use --image-size {size}",
                  file=sys.stderr)
            out += [arg, size]
            i += 3
            continue
        out.append(arg)
        i += 1
    return out


class ImgrecGroup(TyperGroup):
    """The ``imgrec`` command group: arguments upgraded before any command parses them."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, upgrade_args(list(args)))
