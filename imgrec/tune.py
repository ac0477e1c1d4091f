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

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from imgrec import checkpoint as ckpt
from imgrec import models, storage
from imgrec.config import AugmentConfig, ConfigError, SweepConfig, TrainConfig, from_dict, replace, to_dict
from imgrec.data import load_dataset
from imgrec.evaluate import evaluate_dataset
from imgrec.layout import SweepLayout
from imgrec.report import _figure_bytes
from imgrec.runtime import ensure_ray, forwarded_env
from imgrec.train import default_run_name, read_history, run_uri, train

METRIC, MODE = "val_accuracy", "max"
TRIALS_DIR = SweepLayout.TRIALS
SWEEP_FILE = SweepLayout.CONFIG
BEST_FILE = SweepLayout.BEST
TABLE_COLUMNS = [
    "rank", "trial", "freeze_depth", "learning_rate", "batch_size", "augment", "best_val_accuracy",
    "epochs", "wall_time_s", "status", "error", "checkpoint", "run",
]
# CPUs kept free of Train workers when sizing max_concurrent: every trial's Ray
# Data pipeline (shuffle, augmentation) runs as CPU tasks, and a cluster whose
# CPUs all sit in Train workers would leave those tasks, and so the trials, waiting.
DATA_CPUS_RESERVED = 1
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


# =========================================================================== the search space


def sweep_layout(cfg: SweepConfig) -> SweepLayout:
    if not cfg.name:
        raise ConfigError("the sweep has no name; give SweepConfig.name (--name)")
    return SweepLayout.of(cfg.storage, cfg.name)


def sweep_uri(cfg: SweepConfig) -> str:
    return sweep_layout(cfg).uri


def freeze_depth_choices(cfg: SweepConfig) -> list[int | str]:
    """The explicit list, or 0 (fine-tune everything) plus every block boundary
    of the backbone; a model without a backbone has only depth 0."""
    if cfg.freeze_depths is not None:
        return [d if d == "all" else int(d) for d in cfg.freeze_depths]
    spec = models.get_spec(cfg.base.model.name)
    if spec.kind != "backbone":
        return [0]
    return [0, *models.block_boundaries(spec.name, cfg.base.model.alpha)]


def search_method(cfg: SweepConfig) -> str:
    """``auto`` resolved: Optuna when installed (the ``tune`` extra), else random."""
    if cfg.search != "auto":
        return cfg.search
    try:
        import optuna  # noqa: F401
    except ImportError:
        return "random"
    return "optuna"


def search_space(cfg: SweepConfig) -> dict[str, Any]:
    """Tune's param_space. Categorical axes are ``grid_search`` for ``search="grid"``
    and ``choice`` otherwise; the learning rate is always log-uniform."""
    from ray import tune

    pick = tune.grid_search if search_method(cfg) == "grid" else tune.choice
    space: dict[str, Any] = {"freeze_depth": pick(freeze_depth_choices(cfg))}
    if cfg.lr_min == cfg.lr_max:
        space["learning_rate"] = cfg.lr_min
    else:
        space["learning_rate"] = tune.loguniform(cfg.lr_min, cfg.lr_max)
    if cfg.batch_sizes:
        space["batch_size"] = pick([int(b) for b in cfg.batch_sizes])
    if cfg.augment_presets:
        space["augment"] = pick(list(cfg.augment_presets))
    return space


def _search_alg(cfg: SweepConfig, max_concurrent: int):
    """The search algorithm, limited to ``max_concurrent`` trials at a time
    (Tune ignores TuneConfig.max_concurrent_trials for its own generator)."""
    method = search_method(cfg)
    if method in ("random", "grid"):
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(max_concurrent=max_concurrent, random_state=cfg.seed)
    from ray.tune.search import ConcurrencyLimiter

    if method == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(seed=cfg.seed)
    else:
        try:
            from ray.tune.search.hyperopt import HyperOptSearch
        except ImportError:
            raise ConfigError("search='hyperopt' needs `pip install hyperopt`; or use optuna or random") from None
        searcher = HyperOptSearch(random_state_seed=cfg.seed)
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def _scheduler(cfg: SweepConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.scheduler == "fifo":
        return FIFOScheduler()
    # time_attr "epoch" (not training_iteration): a resumed trial replays its
    # epochs, so the epoch number is the one clock every report agrees on.
    return ASHAScheduler(time_attr="epoch", max_t=cfg.base.epochs, grace_period=1)


def concurrent_trials(cfg: SweepConfig) -> int:
    return cfg.max_concurrent or default_max_concurrent(cfg)


def default_max_concurrent(cfg: SweepConfig) -> int:
    """As many trials as the cluster's CPUs hold Train workers, minus the CPUs
    kept for Ray Data; at least 1."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1))
    # "auto" workers size themselves to the trials at once: count one 1-CPU worker per trial.
    workers, cpus_per_worker = (1, 1.0) if cfg.base.workers == "auto" else (cfg.base.workers, cfg.base.cpus_per_worker)
    per_trial = max(workers * cpus_per_worker, 1e-9)
    return max(1, math.floor((cpus - DATA_CPUS_RESERVED) / per_trial))


# =========================================================================== one trial


class _TrialNamer:
    """Names trials ``trial_000``, ``trial_001``, ... in the order the search creates
    them (also their Train run folders). Tune's tag counter starts at 1 for
    searchers (Optuna, HyperOpt) and at 0 for its own random/grid generator."""

    def __init__(self, first_tag: int):
        self.first_tag = first_tag

    def __call__(self, trial) -> str:
        return f"trial_{int(str(trial.experiment_tag).split('_', 1)[0]) - self.first_tag:03d}"


def trial_index(trial_name: str) -> int:
    match = re.fullmatch(r"trial_(\d+)", trial_name)
    if not match:
        raise ValueError(f"not an imgrec sweep trial name: {trial_name!r}")
    return int(match[1])


def trial_config(cfg: SweepConfig, params: dict[str, Any], trial_name: str) -> TrainConfig:
    """The TrainConfig of one trial: the base with the trial's hyperparameters,
    its run in ``<sweep>/trials/<trial>``, and no per-trial evaluation or report
    (the sweep evaluates only its best checkpoint)."""
    changes: dict[str, Any] = {
        "model.freeze_depth": params["freeze_depth"],
        "learning_rate": float(params["learning_rate"]),
        "storage": sweep_layout(cfg).trials,
        "run_name": trial_name,
        "resume": None,
        "evaluate": False,
        "report": False,
    }
    if "batch_size" in params:
        changes["batch_size"] = int(params["batch_size"])
    if "augment" in params:
        changes["augment"] = AugmentConfig.preset(params["augment"])
    return replace(cfg.base, **changes)


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
    train(trial, dataset=dataset, run_config_overrides={"callbacks": [TuneReportCallback()]},
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
    from ray import tune

    t0 = time.time()
    cfg = _prepare(cfg)
    uri = sweep_uri(cfg)
    ensure_ray()
    data = dataset or load_dataset(cfg.base.data)
    print(f"[imgrec] sweep {uri}: {cfg.num_samples} trial(s), search {search_method(cfg)}, "
          f"scheduler {cfg.scheduler}; data {data.summary()}", flush=True)

    trainable = tune.with_resources(
        tune.with_parameters(_run_trial, dataset=data, sweep=to_dict(cfg), env=forwarded_env(),
                             concurrent=concurrent_trials(cfg)),
        TRIAL_DRIVER_RESOURCES,
    )
    grid = _tuner(cfg, trainable).fit()  # a trial error is recorded in the grid, not raised

    rows = results_table(grid, cfg)
    print(format_table(rows), flush=True)
    best = _best(rows, cfg, data)
    files = write_results(uri, rows, best)
    if best:
        print(f"[imgrec] best trial {best['trial']}: val_accuracy {best['val_accuracy']:.4f}, "
              f"checkpoint {best['checkpoint']}", flush=True)
        print(f"[imgrec] predict with: imgrec predict --model {best['checkpoint']}", flush=True)
    else:
        print("[imgrec] no trial produced a checkpoint; see the error column above", flush=True)
    return SweepResult(uri, rows, best, files, time.time() - t0)


def _prepare(cfg: SweepConfig) -> SweepConfig:
    """Absolute URIs (Tune runs trials in their own working folders), a name,
    the model's input size, and on resume the sweep's own saved config."""

    if cfg.resume and not cfg.name:
        raise ConfigError("resume needs the sweep's name (--name) and storage (--storage)")
    cfg = replace(cfg, storage=storage.normalize(cfg.storage), name=cfg.name or default_run_name("sweep"))
    storage.check_bucket(cfg.storage)  # a missing bucket fails here, with what to do
    saved = sweep_layout(cfg).config
    if storage.exists(saved):
        if not cfg.resume:
            raise ConfigError(f"{sweep_uri(cfg)} already holds a sweep; resume it (--resume) or pick another --name")
        stored = from_dict(SweepConfig, json.loads(storage.read_text(saved)))
        # The saved config wins (same search space, same trials); only the location may have moved.
        return replace(stored, storage=cfg.storage, name=cfg.name, resume=True)
    if cfg.resume:
        raise ConfigError(f"nothing to resume: no {SWEEP_FILE} under {sweep_uri(cfg)}")
    base = cfg.base
    if base.data.uri and base.data.uri != "cifar10":
        base = replace(base, **{"data.uri": storage.normalize(base.data.uri)})
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


# =========================================================================== results


def results_table(grid, cfg: SweepConfig) -> list[dict[str, Any]]:
    """One row per trial (see TABLE_COLUMNS), ranked by best val accuracy;
    errored trials last, without a rank."""
    rows = [_row(result, cfg) for result in grid]
    ok = sorted((r for r in rows if r["status"] != "error" and r["best_val_accuracy"] is not None),
                key=lambda r: (-r["best_val_accuracy"], r["trial"]))
    rest = sorted((r for r in rows if r not in ok), key=lambda r: r["trial"])
    for rank, row in enumerate(ok, start=1):
        row["rank"] = rank
    return ok + rest


def _row(result, cfg: SweepConfig) -> dict[str, Any]:

    name = _trial_name(result)
    trial = trial_config(cfg, result.config, name)
    run = run_uri(trial)
    history = read_history(run)["epochs"]
    finite = [h for h in history if _finite(h.get("loss")) and _finite(h.get(METRIC))]
    n_epochs = len(history)
    status = "error" if result.error else ("finished" if n_epochs >= trial.epochs else "stopped")
    checkpoint = None
    if status != "error":
        try:
            checkpoint = ckpt.resolve(run, "best").uri
        except ckpt.CheckpointError:
            pass
    wall = (result.metrics or {}).get("time_total_s")
    return {
        "rank": None,
        "trial": name,
        "freeze_depth": trial.model.freeze_depth,
        "learning_rate": trial.learning_rate,
        "batch_size": trial.batch_size,
        "augment": result.config.get("augment", "base"),
        "best_val_accuracy": max((float(h[METRIC]) for h in finite), default=None),
        "epochs": n_epochs,
        "wall_time_s": round(float(wall), 1) if wall is not None else None,
        "status": status,
        "error": _error_reason(result.error) if result.error else None,
        "checkpoint": checkpoint,
        "run": run,
    }


def _trial_name(result) -> str:
    """The trial's name, from its Tune trial folder (``trial_007_...``)."""
    match = re.match(r"trial_\d+", storage.basename(result.path))
    if not match:
        raise RuntimeError(f"unexpected Tune trial folder {result.path!r}: not created by imgrec.tune")
    return match[0]


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _error_reason(error: BaseException) -> str:
    """``NonFiniteLossError: run ...: loss became non-finite ...``: the original
    exception's type and first line, not Ray's wrapping traceback."""
    cause = getattr(error, "cause", None) or error
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}".strip()


def _best(rows: list[dict[str, Any]], cfg: SweepConfig, data) -> dict[str, Any] | None:
    """best.json: the top trial's checkpoint and config, evaluated once."""
    top = next((r for r in rows if r["rank"] == 1 and r["checkpoint"]), None)
    if top is None:
        return None
    ref = ckpt.resolve(top["checkpoint"])
    best = {
        "sweep": sweep_uri(cfg),
        "trial": top["trial"],
        "checkpoint": ref.uri,
        "run": top["run"],
        "val_accuracy": top["best_val_accuracy"],
        "epoch": ref.epoch,
        "params": {k: top[k] for k in ("freeze_depth", "learning_rate", "batch_size", "augment")},
        "config": ref.manifest.get("train_config"),
        "test_metrics": {},
    }
    previous = sweep_layout(cfg).best
    previous = json.loads(storage.read_text(previous)) if storage.exists(previous) else {}
    if previous.get("checkpoint") == ref.uri and previous.get("test_metrics"):
        best["test_metrics"] = previous["test_metrics"]  # a resumed sweep: evaluated already
    elif cfg.evaluate:
        best["test_metrics"] = _evaluate_best(ref.uri, data)
    return best


def _evaluate_best(checkpoint: str, data) -> dict[str, Any]:

    split, ds = ("test", data.test) if data.test is not None else ("val", data.val)
    if ds is None:
        return {}
    metrics = evaluate_dataset(ds, checkpoint, data.class_names)
    metrics.update(split=split, checkpoint=checkpoint)
    print(f"[imgrec] best checkpoint: {split} accuracy {metrics['accuracy']:.4f} on {metrics['count']} images",
          flush=True)
    return metrics


def write_results(uri: str, rows: list[dict[str, Any]], best: dict[str, Any] | None) -> dict[str, str]:
    """results.csv, results.parquet, sweep.png and best.json into the sweep folder."""
    files = {
        "table_csv": SweepLayout(uri).results_csv,
        "table_parquet": SweepLayout(uri).results_parquet,
        "plot": SweepLayout(uri).plot,
    }
    storage.atomic_write(files["table_csv"], table_csv(rows))
    storage.atomic_write(files["table_parquet"], table_parquet(rows))
    storage.atomic_write(files["plot"], sweep_png(rows))
    if best:
        files["best"] = SweepLayout(uri).best
        storage.atomic_write(files["best"], json.dumps(best, indent=1, default=str))
        if best.get("test_metrics"):
            storage.atomic_write(SweepLayout(uri).evaluation, json.dumps(best["test_metrics"], indent=1))
    for name, file in files.items():
        print(f"[imgrec] {name}: {file}", flush=True)
    return files


def table_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def table_parquet(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {c: [r[c] for r in rows] for c in TABLE_COLUMNS}
    # Depths are ints unless some trial froze "all": then one string column.
    if any(isinstance(d, str) for d in columns["freeze_depth"]):
        columns["freeze_depth"] = [str(d) for d in columns["freeze_depth"]]
    types = {"rank": pa.int64(), "epochs": pa.int64(), "batch_size": pa.int64(), "learning_rate": pa.float64(),
             "best_val_accuracy": pa.float64(), "wall_time_s": pa.float64()}
    table = pa.table({c: pa.array(v, type=types.get(c)) for c, v in columns.items()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def sweep_png(rows: list[dict[str, Any]]) -> bytes:
    """Best val accuracy over learning rate (log x) × freeze depth; failed trials as red crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    depths = sorted({r["freeze_depth"] for r in rows}, key=lambda d: (isinstance(d, str), d if isinstance(d, int) else 0))
    numeric = all(isinstance(d, int) for d in depths)
    y_of = (lambda d: d) if numeric else (lambda d: depths.index(d))  # "all" as its own row
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ok = [r for r in rows if r["best_val_accuracy"] is not None and r["status"] != "error"]
    if ok:
        points = ax.scatter([r["learning_rate"] for r in ok], [y_of(r["freeze_depth"]) for r in ok],
                            c=[r["best_val_accuracy"] for r in ok], cmap="viridis", s=90, edgecolors="k")
        fig.colorbar(points, ax=ax, label="best val accuracy")
        for r in ok:
            ax.annotate(f"{r['best_val_accuracy']:.2f}", (r["learning_rate"], y_of(r["freeze_depth"])),
                        textcoords="offset points", xytext=(6, 6), fontsize=8)
    failed = [r for r in rows if r not in ok]
    if failed:
        ax.scatter([r["learning_rate"] for r in failed], [y_of(r["freeze_depth"]) for r in failed],
                   marker="x", c="red", s=70, label="failed / no result")
        ax.legend(loc="best")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("freeze depth (backbone layers frozen)")
    if not numeric:
        ax.set_yticks(range(len(depths)), [str(d) for d in depths])
    ax.set_title("Sweep: best val accuracy per trial")
    ax.grid(alpha=0.3)
    return _figure_bytes(fig)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The results as a fixed-width text table, best first."""
    cols = ["rank", "trial", "freeze_depth", "learning_rate", "batch_size", "augment", "best_val_accuracy",
            "epochs", "wall_time_s", "status", "error"]
    heads = ["rank", "trial", "freeze", "lr", "batch", "augment", "best val acc", "epochs", "wall s", "status",
             "error"]

    def cell(col: str, value) -> str:
        if value is None:
            return "-"
        if col == "learning_rate":
            return f"{value:.2e}"
        if col == "best_val_accuracy":
            return f"{value:.4f}"
        if col == "error":
            return str(value)[:80]
        return str(value)

    table = [[cell(c, r[c]) for c in cols] for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)) for t in table]
    return "\n".join(lines)
