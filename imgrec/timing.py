"""Where a run's time went: the per-epoch breakdown and the start-up phases.

Every figure is wall clock on the rank that writes ``history.json`` (rank 0).
An epoch is split into the phases the loop and its hooks time, plus what no
phase covers (``unaccounted_s``), so a stall nobody measured still shows up:

* ``data_wait_s``: the loop waiting for its next batch (tf.data <- Ray Data);
* ``compute_s``: the train steps themselves (forward, backward and the optimizer
  update: one ``strategy.run`` call each), less the all-reduce's share;
* ``allreduce_s``: the gradient all-reduce inside those steps (several workers:
  one timed all-reduce of the same tensors after the steps × steps per epoch);
* ``allreduce_probe_s``: that timed all-reduce itself;
* ``data_teardown_s``: ending the epoch's input iterators (tf.data's and Ray Data's);
* ``stage_s``: entering a new freeze stage (the step functions retraced);
* ``bn_sync_s``: BatchNorm statistics averaged across workers;
* ``val_time_s``: validation;
* ``time_<hook>_s``: each hook's end-of-epoch work (the checkpoint hook's
  includes saving and any wait for the previous upload).

Nothing here imports TensorFlow or Ray.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any

LOOP_PHASES = ("data_wait_s", "compute_s", "allreduce_s", "allreduce_probe_s", "data_teardown_s", "stage_s",
               "bn_sync_s", "val_time_s")
UNACCOUNTED = "unaccounted_s"


def epoch_breakdown(record: dict[str, Any]) -> dict[str, float]:
    """An epoch record's phases in seconds, ``unaccounted_s`` last (missing phases are 0)."""
    phases = {k: float(record.get(k, 0.0)) for k in LOOP_PHASES}
    phases.update({k: float(v) for k, v in record.items() if k.startswith("time_") and k.endswith("_s")})
    phases[UNACCOUNTED] = float(record.get(UNACCOUNTED, 0.0))
    return phases


def unaccounted(record: dict[str, Any]) -> float:
    """``epoch_time_s`` less every timed phase (never below zero)."""
    timed = sum(v for k, v in epoch_breakdown(record).items() if k != UNACCOUNTED)
    return max(0.0, float(record["epoch_time_s"]) - timed)


@contextmanager
def timed(into: dict[str, float], key: str):
    """Add the block's wall-clock seconds to ``into[key]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + time.perf_counter() - t0
