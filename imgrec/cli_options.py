"""One source for the options of the commands that build a config: ``train``,
``transfer``, ``tune`` and ``predict``.

An ``Option`` names the config field(s) it sets. Its type and default come from
that field of the config dataclass, unless the command declares its own default
(``transfer`` starts from MobileNet at 128); an enumerated field's tuple in
``imgrec.config`` becomes a choice the parser refuses before any work starts.
``command(...)`` turns a list of options into a typer command, and
``build(root, options, values)`` turns parsed values into the config, so what
``--help`` shows as a default is what the config receives
(``tests/test_cli_options.py`` checks every option).
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from imgrec.config import ConfigError, from_dict
from imgrec.models.registry import top_blocks

_FROM_CONFIG = object()  # the default is the config field's


@dataclass(frozen=True)
class Option:
    """One command-line option: ``--<name>`` sets the config field(s) at ``paths``."""

    name: str  # the parameter; the flag is --name-with-dashes unless ``flags`` says
    paths: tuple[str, ...]  # dotted config paths, e.g. ("data.validation_split",)
    help: str
    default: Any = _FROM_CONFIG  # in command-line form (e.g. "128", "light")
    parse: Callable[[Any], Any] | None = None  # command-line value -> config value
    kind: type | None = None  # command-line type when not the field's (e.g. str for "N or all")
    choices: tuple[str, ...] | None = None
    flags: tuple[str, ...] = ()  # explicit declarations, e.g. ("--input",) or ("--resume",)
    required: bool = False

    def under(self, prefix: str, **changes: Any) -> Option:
        """The same option setting ``<prefix>.<path>`` (``tune``'s options of its base run)."""
        return dataclasses.replace(self, paths=tuple(f"{prefix}.{p}" for p in self.paths), **changes)

    def with_(self, **changes: Any) -> Option:
        return dataclasses.replace(self, **changes)


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``128`` or ``128x96`` (height x width) -> (h, w): the one image-size syntax."""
    if text is None or text == "":
        return None
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes, default=0) < 1:
        raise typer.BadParameter(f"image size {text!r}: use N or HxW, e.g. 128 or 128x96")
    return (sizes[0], sizes[0]) if len(sizes) == 1 else (sizes[0], sizes[1])


def parse_list(kind: type = str, option: str = "") -> Callable[[str | None], list | None]:
    """A parser of ``"0,20,all"`` -> ``[0, 20, "all"]`` (kind=int keeps "all"); empty -> None."""

    def parse(text: str | None) -> list | None:
        if not text:
            return None
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            return [t if (kind is int and t == "all") else kind(t) for t in items]
        except ValueError:
            raise typer.BadParameter(f"{option} {text!r}: expected a comma-separated list, e.g. 0,20,40") from None

    return parse


def parse_freeze(text: str) -> int | str:
    """``--freeze-depth``: a number of backbone layers, ``all`` or ``all-K``."""
    if text.isdigit():
        return int(text)
    if text == "all" or top_blocks(text) is not None:
        return text
    raise typer.BadParameter(f"--freeze-depth {text!r}: give a number of backbone layers (e.g. 20), 'all', or "
                             "'all-K' (all but the top K blocks, e.g. all-2)")


def flag_of(options: Sequence[Option], path: str) -> str | None:
    """The command-line flag (``--lr``) of the option setting config field ``path``."""
    for opt in options:
        if path in opt.paths:
            return opt.flags[0].split("/")[0] if opt.flags else "--" + opt.name.replace("_", "-")
    return None


# --------------------------------------------------------------------------- config side


def field_of(root: type, path: str) -> dataclasses.Field:
    """The dataclass field at a dotted path of ``root``."""
    cls: Any = root
    *heads, last = path.split(".")
    for head in heads:
        cls = typing.get_type_hints(cls)[head]
    for f in dataclasses.fields(cls):
        if f.name == last:
            return f
    raise KeyError(f"{root.__name__} has no field {path!r}")


def config_default(root: type, path: str) -> Any:
    f = field_of(root, path)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def get_path(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def build(root: type, options: Sequence[Option], values: dict[str, Any]) -> Any:
    """The config ``root`` with every option's (parsed) value at its paths."""
    tree: dict[str, Any] = {}
    for opt in options:
        value = values[opt.name]
        value = value.value if isinstance(value, enum.Enum) else value
        value = opt.parse(value) if opt.parse else value
        for path in opt.paths:
            *heads, last = path.split(".")
            node = tree
            for head in heads:
                node = node.setdefault(head, {})
            node[last] = value
    return from_dict(root, tree)


# --------------------------------------------------------------------------- typer side


def _field_type(root: type, path: str) -> type:
    *heads, last = path.split(".")
    cls: Any = root
    for head in heads:
        cls = typing.get_type_hints(cls)[head]
    hint = typing.get_type_hints(cls)[last]
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if len(kinds) != 1 or kinds[0] not in (int, float, str, bool):
        raise TypeError(f"{root.__name__}.{path} is {hint}: give the Option a kind= and parse=")
    return kinds[0]


def cli_default(root: type, opt: Option) -> Any:
    """What ``--help`` shows and the parser hands over when the option is not given."""
    if opt.required:
        return ...
    if opt.default is not _FROM_CONFIG:
        return opt.default
    value = config_default(root, opt.paths[0])
    return str(value) if opt.kind is str and value is not None else value


def command(root: type, options: Sequence[Option], run: Callable[[dict[str, Any]], None], doc: str):
    """A function typer makes a command of: one keyword parameter per option
    (its type, default, help and choices as above); it calls ``run(values)``."""
    params, annotations = [], {}
    for opt in options:
        kind = opt.kind or (str if opt.choices else _field_type(root, opt.paths[0]))
        default = cli_default(root, opt)
        if opt.choices:
            kind = enum.Enum(opt.name.title().replace("_", ""), {v: v for v in opt.choices}, type=str)
            default = default if default in (None, ...) else kind(default)
        info = typer.Option(*opt.flags, help=opt.help)
        annotation = Annotated[kind, info]
        params.append(inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=annotation))
        annotations[opt.name] = annotation

    def typer_command(**values: Any) -> None:
        run(values)

    typer_command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    typer_command.__annotations__ = annotations
    typer_command.__doc__ = doc
    return typer_command


def values_from_args(command_fn, args: Sequence[str]) -> dict[str, Any]:
    """Parse ``args`` with a command made by ``command`` (for ``jobs/*.py`` helpers
    and tests that look at the config without running it)."""
    one = typer.Typer(add_completion=False)
    one.command()(command_fn)
    click_command = typer.main.get_command(one)  # a lone command, not a group
    try:
        ctx = click_command.make_context("imgrec", list(args))
    except Exception as exc:  # click's usage errors
        raise ConfigError(str(exc)) from None
    return dict(ctx.params)
