"""``imgrec tune``: a hyperparameter sweep over the transfer job, parsed into a
``SweepConfig`` and run by ``imgrec.tune.sweep``. The options of the base run
are the training commands' own (``imgrec.cli_train.TRAIN_OPTIONS``)."""

from __future__ import annotations

from typing import Any

import typer

from imgrec import tune
from imgrec.cli_common import clear_errors
from imgrec.cli_options import Option, build, command, parse_freeze, parse_list
from imgrec.cli_train import OPTION, TRANSFER_DEFAULTS
from imgrec.config import SWEEP_SCHEDULERS, SWEEP_SEARCHES, SweepConfig


def _base(name: str, **changes: Any) -> Option:
    """A training option, setting the sweep's base run."""
    opt = OPTION[name]
    if name in TRANSFER_DEFAULTS:
        changes.setdefault("default", TRANSFER_DEFAULTS[name])
    return opt.under("base", **changes)


TUNE_OPTIONS: tuple[Option, ...] = (
    _base("data"),
    Option("storage", ("storage",), "Where sweeps live: a local folder or s3://bucket/prefix."),
    Option("name", ("name",), "Sweep folder name (unset: generated; needed for --resume)."),
    Option("resume", ("resume",), "Continue <storage>/<name> after its driver died.", flags=("--resume",)),
    _base("model"),
    _base("weights"),
    _base("alpha"),
    _base("image_size"),
    Option("samples", ("num_samples",), "Number of trials (with --search grid: repeats of the grid)."),
    _base("epochs", help="Epochs per trial (ASHA may stop weak trials earlier).", default=5),
    Option("freeze_depths", ("freeze_depths",), "Depths to try, e.g. 0,20,all-2,all (unset: all, all-1,2,4,8 and 0).",
           kind=str, parse=parse_list(parse_freeze, "--freeze-depths")),
    Option("lr_min", ("lr_min",), "Learning rate, log-uniform from ..."),
    Option("lr_max", ("lr_max",), "... to this."),
    Option("batch_sizes", ("batch_sizes",), "Global batch sizes to try, e.g. 16,32 (unset: --batch-size).",
           kind=str, parse=parse_list(int, "--batch-sizes")),
    Option("augment_presets", ("augment_presets",), "Presets to try, e.g. none,light,course (unset: --augment).",
           kind=str, parse=parse_list(str, "--augment-presets")),
    _base("augment", help="Augmentation preset when not swept."),
    _base("batch_size", help="GLOBAL batch size when not swept."),
    _base("workers", help="Ray Train workers per trial: auto (the cores shared by the trials running at once) "
          "or a count."),
    _base("cpus_per_worker"),
    _base("gpus_per_worker"),
    Option("max_concurrent", ("max_concurrent",), "Trials at once (unset: as many as the cluster's CPUs fit)."),
    Option("scheduler", ("scheduler",), "asha stops weak trials early.", choices=SWEEP_SCHEDULERS),
    Option("search", ("search",), "auto: optuna if installed, else random.", choices=SWEEP_SEARCHES),
    _base("head"),
    _base("head_epochs"),
    _base("optimizer"),
    _base("class_weight"),
    _base("validation_split"),
    _base("cache"),
    Option("seed", ("base.seed", "seed"), "Training and search seed."),
    Option("evaluate", ("evaluate",), "Evaluate the best checkpoint on the test tree."),
    _base("tta"),
    _base("tracking"),
)


def _run(values: dict[str, Any]) -> None:
    if not values["data"] and not values["resume"]:
        raise typer.BadParameter("give --data URI (an image tree, a label manifest, or cifar10), or --resume with --name")
    with clear_errors(TUNE_OPTIONS):
        cfg = build(SweepConfig, TUNE_OPTIONS, values)
        result = tune.sweep(cfg)  # looked up at call time: the CLI test replaces it
    typer.echo(f"sweep: {result.sweep_uri}")
    typer.echo(f"best checkpoint: {result.best_checkpoint or 'none (every trial failed)'}")


tune_command = command(
    SweepConfig, TUNE_OPTIONS, _run,
    "Sweep freeze depth x learning rate (optionally batch size, augmentation) of a transfer job on Ray Tune.",
)
