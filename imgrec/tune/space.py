"""The search space of a sweep: freeze depths, learning rate, batch sizes and presets; the
search algorithm and scheduler; how many trials run at once; each trial's TrainConfig."""

from __future__ import annotations

import math
import re
from typing import Any

from imgrec import models
from imgrec.config import AugmentConfig, ConfigError, SweepConfig, TrainConfig, replace
from imgrec.layout import SweepLayout

# CPUs kept free of Train workers when sizing max_concurrent: every trial's Ray
# Data pipeline (shuffle, augmentation) runs as CPU tasks, and a cluster whose
# CPUs all sit in Train workers would leave those tasks, and so the trials, waiting.
DATA_CPUS_RESERVED = 1


def sweep_layout(cfg: SweepConfig) -> SweepLayout:
    if not cfg.name:
        raise ConfigError("the sweep has no name; give SweepConfig.name (--name)")
    return SweepLayout.of(cfg.storage, cfg.name)


def sweep_uri(cfg: SweepConfig) -> str:
    return sweep_layout(cfg).uri


# The default depths, around the transfer job's own (all-2): a frozen feature
# extractor, then the top 1, 2, 4 and 8 blocks fine-tuned (two stages with
# head_epochs "auto"), as many as the backbone has blocks, and the whole backbone
# (depth 0, its BatchNorm still frozen): the best row on a weak, same-domain
# backbone (benchmarks/README.md, quality_transfer).
DEFAULT_TOP_BLOCKS = (1, 2, 4, 8)


def freeze_depth_choices(cfg: SweepConfig) -> list[int | str]:
    """The explicit list, or ``all``, ``all-K`` for K in ``DEFAULT_TOP_BLOCKS`` the
    backbone has, and 0; a model without a backbone has only depth 0."""
    if cfg.freeze_depths is not None:
        return [int(d) if str(d).isdigit() else str(d) for d in cfg.freeze_depths]
    spec = models.get_spec(cfg.base.model.name)
    if spec.kind != "backbone":
        return [0]
    blocks = len(models.block_boundaries(spec.name, cfg.base.model.alpha))
    return ["all", *(f"all-{k}" for k in DEFAULT_TOP_BLOCKS if k < blocks), 0]


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

