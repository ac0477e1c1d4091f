"""The sweep driver: ``sweep(cfg)`` runs (or resumes) Ray Tune over per-trial drivers,
each one Ray Train run, and writes the results."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from imgrec import checkpoint as ckpt
from imgrec import models, preflight, storage, tracking
from imgrec.config import ConfigError, SweepConfig, from_dict, replace, to_dict
from imgrec.data import load_dataset
from imgrec.layout import SweepLayout
from imgrec.placement import cluster_view, data_tasks
from imgrec.runtime import ensure_ray, forwarded_env
from imgrec.train import default_run_name, run_uri, train
from imgrec.tune.results import METRIC, MODE, _best, format_table, results_table, write_results
from imgrec.tune.space import (
    _scheduler,
    _search_alg,
    _TrialNamer,
    concurrent_trials,
    search_method,
    search_space,
    sweep_layout,
    sweep_uri,
    trial_config,
)

TRIALS_DIR = SweepLayout.trials.name
SWEEP_FILE = SweepLayout.config.name
# Trial drivers only wait on their Train run, so they take no CPU. Tune refuses
# an empty resource request ({"CPU": 0} alone raises), so they ask for a nominal
# 1 MiB of memory instead: a non-empty request that leaves every CPU to Train.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 2**20}


@dataclass
class SweepResult:
    sweep_uri: str
    rows: list[dict[str, Any]]  # the results table, best first, errored trials last
    best: dict[str, Any] | None  # best.json's content; None when no trial produced a checkpoint
    files: dict[str, str] = field(default_factory=dict)  # table_csv, table_parquet, plot, best
    elapsed_s: float = 0.0

    @property
    def best_checkpoint(self) -> str | None:
        return self.best["checkpoint"] if self.best else None



def _run_trial(config: dict[str, Any], dataset=None, sweep: dict[str, Any] | None = None,
               env: dict[str, str] | None = None, concurrent: int = 1) -> None:
    """Tune's per-trial driver: one Ray Train run of this trial's TrainConfig.
    ``env``: the sweep driver's forwarded variables (``runtime.forwarded_env``),
    which a trial driver on a running cluster would not otherwise see."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback


    os.environ.update(env or {})
    cfg = from_dict(SweepConfig, sweep)
    trial = trial_config(cfg, config, tune.get_context().get_trial_name())
    if _replay_epochs(run_uri(trial)) >= trial.epochs:
        return  # finished before the sweep driver died; nothing to retrain
    # Train V2 restores a run with the same name and storage from its latest
    # checkpoint by itself, so a resumed trial continues where it stopped
    # (allow_existing: a resumed trial's run folder already exists on purpose).
    # (tracking=None: the sweep driver tracks every trial, imgrec.tracking.)
    train(replace(trial, tracking=None), dataset=dataset, run_config_overrides={"callbacks": [TuneReportCallback()]},
          allow_existing=True, concurrent_trials=concurrent)


def _replay_epochs(run: str) -> int:
    """Report the epochs a run already has (from its latest checkpoint) to Tune
    again, so a resumed trial's Tune history is whole; returns that epoch."""
    from ray import tune

    try:
        latest = ckpt.resolve(run, "latest")
    except ckpt.CheckpointError:
        return 0
    for metrics in latest.manifest.get("history", []):
        tune.report({**metrics, "replayed": True})
    return latest.epoch


# =========================================================================== the sweep


def sweep(cfg: SweepConfig, *, dataset=None) -> SweepResult:
    """Run (or, with ``cfg.resume``, continue) a sweep and write its results.

    ``dataset`` takes an already loaded ``ImageDataset`` of ``cfg.base.data``;
    by default the driver loads and decodes it once for all trials."""
    t0 = time.time()
    cfg = _prepare(cfg, check_data=dataset is None)
    uri = sweep_uri(cfg)
    ensure_ray()
    from ray import tune
    # The decoded cache of a sweep lives under the sweep storage (its trials write there, not to base.storage).
    data = dataset or load_dataset(cfg.base.data, tasks=data_tasks(cluster_view()), storage_uri=cfg.storage)
    print(f"[imgrec] sweep {uri}: {cfg.num_samples} trial(s), search {search_method(cfg)}, "
          f"scheduler {cfg.scheduler}; data {data.summary()}", flush=True)

    trainable = tune.with_resources(
        tune.with_parameters(_run_trial, dataset=data, sweep=to_dict(cfg), env=forwarded_env(),
                             concurrent=concurrent_trials(cfg)),
        TRIAL_DRIVER_RESOURCES,
    )
    with tracking.track_sweep(cfg, uri) as tracked:  # a parent run, a child per trial (imgrec.tracking)
        grid = _tuner(cfg, trainable).fit()  # a trial error is recorded in the grid, not raised
        rows = results_table(grid, cfg)
        print(format_table(rows), flush=True)
        best = _best(rows, cfg, data)
        files = write_results(uri, rows, best)
        tracked.results(rows, best)
    if best:
        print(f"[imgrec] best trial {best['trial']}: val_accuracy {best['val_accuracy']:.4f}, "
              f"checkpoint {best['checkpoint']}", flush=True)
        print(f"[imgrec] predict with: imgrec predict --model {best['checkpoint']}", flush=True)
    else:
        print("[imgrec] no trial produced a checkpoint; see the error column above", flush=True)
    return SweepResult(uri, rows, best, files, time.time() - t0)


def _prepare(cfg: SweepConfig, check_data: bool = False) -> SweepConfig:
    """Absolute URIs (Tune runs trials in their own working folders), a name,
    the model's input size, and on resume the sweep's own saved config; checked
    (``imgrec.preflight``; ``check_data``: the data tree too) before the config is saved."""

    if cfg.resume and not cfg.name:
        raise ConfigError("resume needs the sweep's name (--name) and storage (--storage)", "name")
    cfg = replace(cfg, storage=storage.normalize(cfg.storage), name=cfg.name or default_run_name("sweep"))
    with preflight.blame("storage"):  # a missing bucket fails here, with what to do
        preflight.check_storage(cfg.storage)
    saved = sweep_layout(cfg).config
    if storage.exists(saved):
        if not cfg.resume:
            raise ConfigError(f"{sweep_uri(cfg)} already holds a sweep; resume it (--resume) or pick another --name",
                              "name")
        stored = from_dict(SweepConfig, json.loads(storage.read_text(saved)))
        # The saved config wins (same search space, same trials); only the location may have moved.
        # Tracking is not part of the experiment: the resuming call's own --tracking applies.
        stored = replace(stored, storage=cfg.storage, name=cfg.name, resume=True,
                         **{"base.tracking": cfg.base.tracking})
        preflight.check_sweep(stored, data=check_data)
        return stored
    if cfg.resume:
        raise ConfigError(f"nothing to resume: no {SWEEP_FILE} under {sweep_uri(cfg)}")
    base = cfg.base
    if base.data.uri and base.data.uri != "cifar10":
        base = replace(base, **{"data.uri": storage.normalize(base.data.uri)})
    preflight.check_sweep(replace(cfg, base=base), data=check_data)
    if base.data.decode.image_size is None:  # decode once, at the size every trial trains at
        base = replace(base, **{"data.decode.image_size": tuple(models.get_spec(base.model.name).default_size)})
    cfg = replace(cfg, base=base)
    storage.atomic_write(saved, json.dumps(to_dict(cfg), indent=1))
    return cfg


def _tuner(cfg: SweepConfig, trainable):
    from ray import tune

    fs, path = storage.resolve(sweep_uri(cfg))
    if cfg.resume and tune.Tuner.can_restore(path, storage_filesystem=fs):
        print(f"[imgrec] resuming sweep {sweep_uri(cfg)}: finished and failed trials are kept", flush=True)
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=False, restart_errored=False,
                                  storage_filesystem=fs)
    searcher = search_method(cfg) not in ("random", "grid")
    root_fs, root = storage.resolve(cfg.storage)
    return tune.Tuner(
        trainable,
        param_space=search_space(cfg),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            search_alg=_search_alg(cfg, concurrent_trials(cfg)),
            scheduler=_scheduler(cfg),
            num_samples=cfg.num_samples,
            trial_name_creator=_TrialNamer(first_tag=1 if searcher else 0),
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=root,
            storage_filesystem=root_fs,
            # A failed trial stays failed: a diverged run would diverge again.
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


