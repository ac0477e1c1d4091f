"""Experiment tracking with MLflow (``--tracking URI``, the ``imgrec[tracking]`` extra).

MLflow is driven from the driver only, never from a Train worker or a Tune trial
driver: a background thread (``session``) reads the run's ``history.json``
through ``imgrec.storage`` and logs each epoch's metrics as it appears, and
logs the rest when the run ends (``runs``). ``uris`` is the preflight check.

    with track_run(cfg, run_uri):          # imgrec.train, around Ray Train's fit
        ...
    with track_sweep(cfg, uri) as sweep:   # imgrec.tune.driver, around Tune's fit
        ...
        sweep.results(rows, best)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from imgrec.config import SweepConfig, TrainConfig, to_dict
from imgrec.tracking.runs import TAG_BEST, TAG_PARENT, TAG_RUN, TAG_SWEEP, TrackedRun, TrackedSweep, flatten
from imgrec.tracking.session import Session
from imgrec.tracking.uris import check_tracking

__all__ = ["TAG_BEST", "TAG_PARENT", "TAG_RUN", "TAG_SWEEP", "check_tracking", "flatten", "track_run",
           "track_sweep"]

FAILED_WAIT_S = 15.0  # a failed run marks itself failed, but its error is not held up for long


@contextmanager
def track_run(cfg: TrainConfig, run_uri: str) -> Iterator[None]:
    """Track the run at ``run_uri`` to ``cfg.tracking`` (nothing when unset) while the block runs."""
    if not cfg.tracking:
        yield
        return
    session = Session(cfg.tracking)
    run = TrackedRun(run_uri, cfg.run_name, flatten(to_dict(cfg)))
    session.submit(run.start)
    print(f"[imgrec] tracking: MLflow at {cfg.tracking}", flush=True)
    try:
        yield
    except BaseException:
        session.submit(lambda s: run.finish(s, "FAILED"))
        session.close(FAILED_WAIT_S)
        raise
    session.submit(lambda s: run.finish(s, "FINISHED"))
    session.close()


class _SweepResults:
    rows: list[dict[str, Any]] | None = None
    best: dict[str, Any] | None = None

    def results(self, rows: list[dict[str, Any]], best: dict[str, Any] | None) -> None:
        self.rows, self.best = rows, best


@contextmanager
def track_sweep(cfg: SweepConfig, uri: str) -> Iterator[_SweepResults]:
    """Track the sweep at ``uri`` to ``cfg.base.tracking``: a parent run, a child per
    trial; ``results(rows, best)`` hands the results table in before the block ends."""
    out = _SweepResults()
    if not cfg.base.tracking:
        yield out
        return
    session = Session(cfg.base.tracking)
    sweep = TrackedSweep(uri, cfg.name, flatten(to_dict(cfg)))
    session.submit(sweep.start)
    print(f"[imgrec] tracking: MLflow at {cfg.base.tracking}, a run per trial under the sweep's", flush=True)
    try:
        yield out
    except BaseException:
        session.submit(lambda s: sweep.finish(s, "FAILED"))
        session.close(FAILED_WAIT_S)
        raise
    session.submit(lambda s: sweep.finish(s, "FINISHED", out.rows, out.best))
    session.close()
