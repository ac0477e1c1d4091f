"""Local temp files of killed processes, and the per-node download cache trimmed LRU-first."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable

from imgrec.storage.uris import StorageError

# Local temp files and folders (``.*.tmp``, ``*.part``, ``.dl-*``) untouched for
# this long belong to a killed process; a live writer touches them far more often.
STALE_TEMP_AGE_S = 6 * 3600
# The per-node download cache ($IMGREC_CACHE: checkpoints and weights) is trimmed,
# least recently used first, to this size; override with IMGREC_CACHE_MAX_GB.
CACHE_MAX_GB_ENV = "IMGREC_CACHE_MAX_GB"
CACHE_MAX_GB_DEFAULT = 20.0


TEMP_SUFFIXES = (".tmp", ".part")  # _write_local, _download_atomic
TEMP_DIR_PREFIX = ".dl-"  # a cache download in progress (checkpoint.local_copy)


def _is_temp(name: str) -> bool:
    return name.startswith(TEMP_DIR_PREFIX) or name.endswith(TEMP_SUFFIXES)


def _last_touched(path: str) -> float:
    """Newest mtime of a file, or of a folder and everything in it."""
    newest = os.path.getmtime(path)
    if os.path.isdir(path):
        for folder, _, files in os.walk(path):
            for name in [*files, "."]:
                try:
                    newest = max(newest, os.path.getmtime(os.path.join(folder, name)))
                except OSError:
                    pass  # removed meanwhile
    return newest


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def remove_stale_temps(folder: str, *, prefix: str = "", recursive: bool = True,
                       max_age_s: float = STALE_TEMP_AGE_S) -> int:
    """Delete temp files and ``.dl-*`` folders under a local ``folder`` (names
    starting with ``prefix``) untouched for ``max_age_s``: leftovers of killed
    processes. Returns how many were removed."""
    cutoff = time.time() - max_age_s
    removed = 0
    for parent_dir, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = os.path.join(parent_dir, name)
            if name.startswith(prefix) and _is_temp(name) and _age_cutoff_passed(path, cutoff):
                _remove(path)
                removed += 1
        dirs[:] = [d for d in dirs if recursive and os.path.isdir(os.path.join(parent_dir, d))]
    return removed


def _age_cutoff_passed(path: str, cutoff: float) -> bool:
    try:
        return _last_touched(path) < cutoff
    except OSError:
        return False  # vanished meanwhile


def cache_max_bytes() -> int:
    """The download cache's size limit: ``$IMGREC_CACHE_MAX_GB`` (default 20 GB)."""
    raw = os.environ.get(CACHE_MAX_GB_ENV, "")
    try:
        gb = float(raw) if raw.strip() else CACHE_MAX_GB_DEFAULT
    except ValueError:
        gb = -1.0
    if gb < 0:
        raise StorageError(f"{CACHE_MAX_GB_ENV}={raw!r} is not a size in GB; set a number >= 0, e.g. 20")
    return int(gb * 1e9)


def touch(path: str) -> None:
    """Mark a cache entry as just used (the LRU order is by mtime)."""
    try:
        os.utime(path)
    except OSError:
        pass


def trim_cache(folders: Iterable[str], max_bytes: int, *, keep: Iterable[str] = ()) -> list[str]:
    """Delete the least recently used entries (direct children) of local cache
    ``folders`` until they hold at most ``max_bytes`` together; entries in
    ``keep`` (the one being used) are never deleted. Returns the removed paths."""
    keep = {os.path.abspath(k) for k in keep}
    entries = []
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            if not _is_temp(entry.name):
                entries.append((os.path.getmtime(entry.path), _tree_size(entry.path), entry.path))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, path in sorted(entries):
        if total <= max_bytes:
            break
        if os.path.abspath(path) in keep:
            continue
        _remove(path)
        removed.append(path)
        total -= size
    return removed


def _tree_size(path: str) -> int:
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
