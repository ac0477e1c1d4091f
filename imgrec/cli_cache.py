"""``imgrec cache ls|rm``: the persistent decoded cache's entries (``imgrec.data.cache``)."""

from __future__ import annotations

import datetime as dt

import typer

from imgrec.cli_common import clear_errors
from imgrec.data import cache as decoded_cache
from imgrec.layout import DecodedCacheLayout
from imgrec.text_table import text_table

cache_app = typer.Typer(help="The decoded-pixel cache runs share (--cache; default <storage>/.cache/).",
                        no_args_is_help=True)

_ROOT_HELP = "The cache folder (local or s3://); default: the one under --storage."


def _root(cache: str | None, storage_uri: str) -> str:
    return cache or DecodedCacheLayout.default_root(storage_uri)


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f}"


@cache_app.command("ls")
def cache_ls(
    cache: str = typer.Argument(None, help=_ROOT_HELP),
    storage_uri: str = typer.Option("./runs", "--storage", help="Runs' storage, whose .cache/ is listed."),
) -> None:
    """Each entry (a source at one decode setting): its shards, size, last use, and the
    shards its last run did not use (left by changed files: `imgrec cache rm --stale`)."""
    with clear_errors():
        root = _root(cache, storage_uri)
        entries = decoded_cache.list_entries(root)
    if not entries:
        typer.echo(f"{root}: no decoded cache entries")
        return
    rows = [(e.layout.key[:12], e.meta.get("source", "?"), "x".join(map(str, e.meta.get("image_size", []))) or "?",
             e.shards, _mb(e.bytes), f"{e.unused_shards} ({_mb(sum(u[1] for u in e.unused))} MB)",
             e.meta.get("last_used", "?")) for e in entries]
    typer.echo(f"{root}:")
    typer.echo(text_table(("entry", "source", "size", "shards", "MB", "unused shards", "last used"), rows,
                          right=(3, 4)))


@cache_app.command("rm")
def cache_rm(
    entries: list[str] = typer.Argument(None, help="Entries to remove (a prefix of the key `cache ls` shows)."),
    cache: str = typer.Option(None, "--cache", help=_ROOT_HELP),
    storage_uri: str = typer.Option("./runs", "--storage", help="Runs' storage, whose .cache/ is meant."),
    stale: bool = typer.Option(False, help="Remove the shards no run used last (older than an hour: a run "
                               "going on now may use them)."),
    older_than: float = typer.Option(None, help="Remove whole entries no run used for this many days."),
    everything: bool = typer.Option(False, "--all", help="Remove every entry."),
) -> None:
    """Remove entries, stale shards, or everything; the next run decodes what it needs again."""
    if not (entries or stale or older_than is not None or everything):
        raise typer.BadParameter("say what to remove: ENTRY..., --stale, --older-than DAYS or --all")
    with clear_errors():
        root = _root(cache, storage_uri)
        files, freed = decoded_cache.remove(root, entries=list(entries or ()), stale=stale,
                                            older_than_days=older_than, everything=everything)
    typer.echo(f"{root}: removed {files} files, {_mb(freed)} MB ({dt.datetime.now():%H:%M:%S})")
