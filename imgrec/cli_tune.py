"""``imgrec tune``: a hyperparameter sweep over the transfer job, parsed into a
``SweepConfig`` and run by ``imgrec.tune.sweep``."""

from __future__ import annotations

from typing import Annotated

import typer

from imgrec import tune
from imgrec.cli_common import clear_errors
from imgrec.cli_train import Optimizer, choices, parse_size
from imgrec.config import (
    SWEEP_SCHEDULERS,
    SWEEP_SEARCHES,
    AugmentConfig,
    DataConfig,
    DecodeConfig,
    ModelConfig,
    SweepConfig,
    TrainConfig,
)

Opt = typer.Option
Scheduler, Search = choices("Scheduler", SWEEP_SCHEDULERS), choices("Search", SWEEP_SEARCHES)


def parse_list(text: str | None, kind=str, option: str = "") -> list | None:
    """``"0,20,all"`` -> ``[0, 20, "all"]`` (kind=int keeps "all"); empty -> None."""
    if not text:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [t if (kind is int and t == "all") else kind(t) for t in items]
    except ValueError:
        raise typer.BadParameter(f"{option} {text!r}: expected a comma-separated list, e.g. 0,20,40") from None


def tune_command(
    data: Annotated[str, Opt(help="Image tree URI (<root>/train/<class>/*, optional <root>/test) or cifar10.")] = None,
    storage: Annotated[str, Opt(help="Where sweeps live: a local folder or s3://bucket/prefix.")] = "./sweeps",
    name: Annotated[str, Opt(help="Sweep folder name (default: generated; needed for --resume).")] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue <storage>/<name> after its driver died.")] = False,
    model: Annotated[str, Opt(help="Registry name (imgrec models list).")] = "mobilenet",
    weights: Annotated[str, Opt(help="none | imagenet | path or s3:// URI of a weights file.")] = "imagenet",
    alpha: Annotated[float, Opt(help="MobileNet width multiplier.")] = None,
    image_size: Annotated[str, Opt(help="N or HxW (default: the model's input size).")] = "128",
    samples: Annotated[int, Opt(help="Number of trials (with --search grid: repeats of the grid).")] = 8,
    epochs: Annotated[int, Opt(help="Epochs per trial (ASHA may stop weak trials earlier).")] = 5,
    freeze_depths: Annotated[str, Opt(help="Depths to try, e.g. 0,20,40,all (default: 0 + block boundaries).")] = None,
    lr_min: Annotated[float, Opt(help="Learning rate, log-uniform from ...")] = 1e-4,
    lr_max: Annotated[float, Opt(help="... to this.")] = 1e-2,
    batch_sizes: Annotated[str, Opt(help="Global batch sizes to try, e.g. 16,32 (default: --batch-size).")] = None,
    augment_presets: Annotated[str, Opt(help="Presets to try, e.g. none,light,course (default: --augment).")] = None,
    augment: Annotated[str, Opt(help="Augmentation preset when not swept: none | light | course.")] = "light",
    batch_size: Annotated[int, Opt(help="GLOBAL batch size when not swept.")] = 32,
    workers: Annotated[str, Opt(help="Ray Train workers per trial: auto (the cores shared by the trials "
                                     "running at once) or a count.")] = "auto",
    cpus_per_worker: Annotated[float, Opt(help="CPUs per worker, with a worker count.")] = 1.0,
    gpus_per_worker: Annotated[float, Opt(help="GPUs per worker.")] = 0.0,
    max_concurrent: Annotated[int, Opt(help="Trials at once (default: as many as the cluster's CPUs fit).")] = None,
    scheduler: Annotated[Scheduler, Opt(help="asha stops weak trials early.")] = Scheduler("asha"),
    search: Annotated[Search, Opt(help="auto: optuna if installed, else random.")] = Search("auto"),
    head: Annotated[str, Opt(help="Transfer head: lean | course.")] = "lean",
    optimizer: Annotated[Optimizer, Opt(help="Optimizer.")] = Optimizer("adam"),
    validation_split: Annotated[float, Opt(help="Fraction held out for validation.")] = 0.3,
    seed: Annotated[int, Opt(help="Training and search seed.")] = 0,
    evaluate: Annotated[bool, Opt(help="Evaluate the best checkpoint on the test tree.")] = True,
) -> None:
    """Sweep freeze depth x learning rate (optionally batch size, augmentation) of a transfer job on Ray Tune."""

    if not data and not resume:
        raise typer.BadParameter("give --data URI (an image tree, or cifar10), or --resume with --name")
    with clear_errors():
        base = TrainConfig(
            data=DataConfig(uri=data or "", validation_split=validation_split,
                            decode=DecodeConfig(image_size=parse_size(image_size))),
            model=ModelConfig(name=model, weights=weights, alpha=alpha, head=head),
            augment=AugmentConfig.preset(augment),
            workers=workers,
            cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker,
            batch_size=batch_size,
            epochs=epochs,
            optimizer=optimizer.value,
            seed=seed,
        )
        cfg = SweepConfig(
            base=base,
            num_samples=samples,
            freeze_depths=parse_list(freeze_depths, int, "--freeze-depths"),
            lr_min=lr_min,
            lr_max=lr_max,
            batch_sizes=parse_list(batch_sizes, int, "--batch-sizes"),
            augment_presets=parse_list(augment_presets, str, "--augment-presets"),
            max_concurrent=max_concurrent,
            scheduler=scheduler.value,
            search=search.value,
            storage=storage,
            name=name,
            resume=resume,
            evaluate=evaluate,
            seed=seed,
        )
        result = tune.sweep(cfg)  # looked up at call time: the CLI test replaces it
    typer.echo(f"sweep: {result.sweep_uri}")
    typer.echo(f"best checkpoint: {result.best_checkpoint or 'none (every trial failed)'}")
