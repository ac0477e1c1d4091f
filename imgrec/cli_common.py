"""What every command shares: errors shown as one line naming what to do (exit 2
for a usage error, 1 for a runtime failure), ``-v/--verbose`` anywhere on the line,
and older option spellings upgraded with a note."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer
from typer.core import TyperGroup

from imgrec import console
from imgrec.checkpoint import CheckpointError
from imgrec.cli_options import Option, flag_of
from imgrec.config import ConfigError
from imgrec.storage import StorageError

USAGE_EXIT = 2  # the input was wrong: an option, a URI, a config value (click's own usage errors too)
FAILURE_EXIT = 1  # the input was right and the work failed: a crashed or diverged run, an unreachable store


class clear_errors:
    """Show library errors as one line: a bad URI, missing bucket or bad config
    exits 2 (a config error names the option of the command's ``options`` that
    sets its field); any other failure once the work started exits 1, one line
    with what to do (``-v`` for the traceback). A Ctrl-C exits 130."""

    def __init__(self, options: Sequence[Option] = ()):
        self.options = options

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # an option parser's BadParameter is a usage error: click shows it and exits 2
        if exc is None or isinstance(exc, typer.Exit | typer.Abort | SystemExit | typer.BadParameter):
            return False
        if isinstance(exc, StorageError | ConfigError | CheckpointError | FileNotFoundError | ValueError):
            typer.secho(f"error: {self._text(exc)}", err=True, fg=typer.colors.RED)
            raise typer.Exit(USAGE_EXIT)
        if isinstance(exc, KeyboardInterrupt):
            typer.secho("interrupted", err=True, fg=typer.colors.RED)
            raise typer.Exit(130)
        if not isinstance(exc, Exception) or console.verbose():
            return False  # -v: the whole traceback
        typer.secho(f"error: {failure_text(exc)}", err=True, fg=typer.colors.RED)
        raise typer.Exit(FAILURE_EXIT)

    def _text(self, exc: BaseException) -> str:
        flag = flag_of(self.options, exc.field) if isinstance(exc, ConfigError) and exc.field else None
        return exc.naming(flag) if flag else str(exc)


def failure_text(exc: BaseException) -> str:
    """A runtime failure as one line: imgrec's own errors already say what to do;
    anything else gets its type, the first line of what went wrong where it was
    raised (inside a Ray task or Train worker: the worker's own error) and the way
    to the whole story."""
    if type(exc).__module__.startswith("imgrec"):
        return _first_line(exc)
    root = _root_cause(exc)
    where = f" in {type(root).__name__}" if root is not exc and type(root).__name__ not in type(exc).__name__ else ""
    return f"{type(exc).__name__}{where}: {_first_line(root)[:300]} (rerun with -v for the full traceback)"


def _root_cause(exc: BaseException) -> BaseException:
    """Down Ray's wrappers: a task's error (``cause``), Train's per-rank failures
    (``worker_failures``), then Python's chain."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        failures = getattr(exc, "worker_failures", None)
        inner = (next(iter(failures.values()), None) if isinstance(failures, dict) else None) \
            or getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


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


VERBOSE_FLAGS = ("-v", "--verbose")


def take_verbose(args: list[str]) -> list[str]:
    """``-v/--verbose`` anywhere on the line (``imgrec train ... -v``, a job's
    arguments): every line of TensorFlow and Ray back (``imgrec.console``)."""
    if any(a in VERBOSE_FLAGS for a in args):
        console.set_verbose(True)
    return [a for a in args if a not in VERBOSE_FLAGS]


class ImgrecGroup(TyperGroup):
    """The ``imgrec`` command group: ``-v`` taken and arguments upgraded before any
    command parses them."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, upgrade_args(take_verbose(list(args))))
