"""Hyperparameter sweeps over the transfer job: Ray Tune on top of Ray Train V2.

One call for the common case::

    from imgrec.config import DataConfig, ModelConfig, SweepConfig, TrainConfig
    from imgrec.tune import sweep

    result = sweep(SweepConfig(
        base=TrainConfig(data=DataConfig(uri="s3://bucket/pets"),
                         model=ModelConfig(name="mobilenet", weights="imagenet"), epochs=5),
        storage="s3://bucket/sweeps",
    ))
    result.best_checkpoint   # ready for `imgrec predict --model <it>`

The package: ``space`` (search space, searcher, scheduler, trials at once, each trial's
config), ``driver`` (``sweep``: Tune over per-trial drivers, resume), ``results`` (the
table, best trial, files).

How it runs (the Train V2 way: Tune launches each trainer from a per-trial driver):

* the sweep driver (this process) lists, decodes and materializes the images
  ONCE and hands that ``ImageDataset`` to every trial through
  ``tune.with_parameters`` (the object store: no trial decodes again);
* each Tune trial is a small driver function (``_run_trial``, 0 CPUs, so the
  CPUs stay with the Train workers) that builds its ``TrainConfig`` and calls
  ``imgrec.train.train()``; ``TuneReportCallback`` forwards every epoch's
  metrics to Tune, so ASHA can stop weak trials after an epoch;
* a trial whose loss becomes non-finite (``NonFiniteLossError``) errors, is
  recorded with its reason, and the sweep goes on (no Tune retries).

The sweep folder ``<storage>/<name>/``::

    sweep.json                  the SweepConfig (a resumed sweep uses this one)
    trials/<trial>/             each trial's Ray Train run (checkpoints, history.json)
    results.csv, results.parquet, sweep.png, best.json, evaluation.json
    ...                         Tune's experiment state and per-trial logs

Resume: if the driver dies, ``sweep(replace(cfg, resume=True))`` (``imgrec tune
--resume``) restores Tune's experiment state: finished and errored trials stay
as they are, unfinished ones run again and continue their Train run from its
latest checkpoint (the epochs it already has are replayed to Tune, not retrained).
"""

# The package's names, one import away (``from imgrec import tune; tune.sweep(cfg)``).
# ruff: noqa: F401
from __future__ import annotations

from imgrec.tune.driver import (
    SWEEP_FILE,
    TRIAL_DRIVER_RESOURCES,
    TRIALS_DIR,
    SweepResult,
    _prepare,
    _run_trial,
    sweep,
)
from imgrec.tune.results import (
    BEST_FILE,
    METRIC,
    MODE,
    TABLE_COLUMNS,
    format_table,
    results_table,
    sweep_png,
    table_csv,
    table_parquet,
    write_results,
)
from imgrec.tune.space import (
    DATA_CPUS_RESERVED,
    concurrent_trials,
    default_max_concurrent,
    freeze_depth_choices,
    search_method,
    search_space,
    sweep_layout,
    sweep_uri,
    trial_config,
    trial_index,
)
