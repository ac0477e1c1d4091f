"""Running one small storage call per item on a thread pool, with a progress bar."""

from __future__ import annotations

import concurrent.futures as futures
from collections.abc import Callable, Iterable
from typing import Any


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", disable=not enabled, leave=False)


def _run_parallel(
    fn: Callable[[Any], None],
    items: Iterable[Any],
    *,
    workers: int,
    desc: str,
    progress: bool,
    total: int | None = None,
) -> int:
    """Apply ``fn`` to every item on ``workers`` threads (0: inline), with progress.

    At most ``2 * workers`` items are in flight, so a generator of large
    payloads is never materialised. The first error cancels what has not
    started and is raised once the running calls finish."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    done = 0
    with _progress(total, desc, progress) as bar:
        if workers <= 0:
            for item in items:
                fn(item)
                done += 1
                bar.update(1)
            return done
        pool = futures.ThreadPoolExecutor(workers)
        pending: set[futures.Future] = set()
        try:
            for item in items:
                if len(pending) >= 2 * workers:
                    finished, pending = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
                    for fut in finished:
                        fut.result()
                        done += 1
                        bar.update(1)
                pending.add(pool.submit(fn, item))
            for fut in futures.as_completed(pending):
                fut.result()
                done += 1
                bar.update(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return done
