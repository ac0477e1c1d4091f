"""``imgrec train`` and ``imgrec transfer``: one set of options, parsed into a
``TrainConfig``. The two commands differ only in their defaults (a small CNN
from scratch vs MobileNet fine-tuning at 128x128)."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from imgrec.cli_common import clear_errors
from imgrec.config import (
    LR_SCHEDULES,
    OPTIMIZERS,
    RESIZE_MODES,
    AugmentConfig,
    DataConfig,
    DecodeConfig,
    ModelConfig,
    TrainConfig,
)
from imgrec.train import train

Opt = typer.Option


def choices(name: str, values: tuple[str, ...]) -> type[enum.Enum]:
    """A typer choice type from one of the config's value tuples: anything else is refused while parsing."""
    return enum.Enum(name, {v: v for v in values}, type=str)


Resize, Optimizer, Schedule = choices("Resize", RESIZE_MODES), choices("Optimizer", OPTIMIZERS), \
    choices("Schedule", LR_SCHEDULES)


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``128`` or ``128x96`` (height x width) -> (h, w)."""
    if text is None or text == "":
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise typer.BadParameter(f"image size {text!r}: use N or HxW, e.g. 128 or 128x96") from None
    return (sizes[0], sizes[0]) if len(sizes) == 1 else (sizes[0], sizes[1])


def parse_freeze(text: str) -> int | str:
    return text if text == "all" else int(text)


def build_config(
    *, data: str | None, storage: str, run_name: str | None, model: str, weights: str, freeze_depth: str,
    head: str, dropout: float, alpha: float | None, image_size: str | None, resize: str, validation_split: float,
    split_seed: int, augment: str, workers: int | str, cpus_per_worker: float, gpus_per_worker: float, batch_size: int,
    epochs: int, optimizer: str, lr: float, lr_schedule: str, early_stopping: int | None, head_epochs: int,
    fine_tune_lr_factor: float, seed: int, keep: int, checkpoint_every: int, resume: str | None, max_failures: int, evaluate: bool,
    report: bool,
) -> TrainConfig:
    if not data and not resume:
        raise typer.BadParameter("give --data URI (an image tree, or cifar10), or --resume RUN_URI")
    return TrainConfig(
        data=DataConfig(
            uri=data or "",
            validation_split=validation_split,
            split_seed=split_seed,
            decode=DecodeConfig(image_size=parse_size(image_size), resize=resize),
        ),
        model=ModelConfig(name=model, weights=weights, freeze_depth=parse_freeze(freeze_depth), head=head,
                          dropout=dropout, alpha=alpha),
        augment=AugmentConfig.preset(augment),
        storage=storage,
        run_name=run_name,
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
        batch_size=batch_size,
        epochs=epochs,
        optimizer=optimizer,
        learning_rate=lr,
        lr_schedule=lr_schedule,
        early_stopping_patience=early_stopping,
        head_epochs=head_epochs,
        fine_tune_lr_factor=fine_tune_lr_factor,
        seed=seed,
        keep_checkpoints=keep,
        checkpoint_every=checkpoint_every,
        resume=resume,
        max_failures=max_failures,
        evaluate=evaluate,
        report=report,
    )


def make_command(*, default_model: str, default_size: str | None, default_weights: str, default_freeze: str,
                 default_lr: float, default_augment: str, doc: str):
    """A typer command function with the shared options and these defaults."""

    def command(
        data: Annotated[str, Opt(help="Image tree URI (<root>/train/<class>/*, optional <root>/test) or cifar10.")] = None,
        storage: Annotated[str, Opt(help="Where runs live: a local folder or s3://bucket/prefix.")] = "./runs",
        run_name: Annotated[str, Opt(help="Run folder name (default: generated).")] = None,
        model: Annotated[str, Opt(help="Registry name (imgrec models list).")] = default_model,
        weights: Annotated[str, Opt(help="none | imagenet | path or s3:// URI of a weights file.")] = default_weights,
        freeze_depth: Annotated[str, Opt(help="Backbone layers frozen: N, or 'all'.")] = default_freeze,
        head: Annotated[str, Opt(help="Transfer head: lean | course.")] = "lean",
        dropout: Annotated[float, Opt(help="Dropout before the output layer.")] = 0.2,
        alpha: Annotated[float, Opt(help="MobileNet width multiplier.")] = None,
        image_size: Annotated[str, Opt(help="N or HxW (default: the model's input size).")] = default_size,
        resize: Annotated[Resize, Opt(help="How images reach the model size.")] = Resize("stretch"),
        validation_split: Annotated[float, Opt(help="Fraction held out for validation.")] = 0.3,
        split_seed: Annotated[int, Opt(help="Seed of the deterministic split.")] = 0,
        augment: Annotated[str, Opt(help="Augmentation preset: none | light | course.")] = default_augment,
        workers: Annotated[str, Opt(help="Ray Train workers: auto (one per GPU, else one per node, "
                                         "sized to its cores) or a count.")] = "auto",
        cpus_per_worker: Annotated[float, Opt(help="CPUs per worker, with a worker count.")] = 1.0,
        gpus_per_worker: Annotated[float, Opt(help="GPUs per worker.")] = 0.0,
        batch_size: Annotated[int, Opt(help="GLOBAL batch size (split across workers).")] = 32,
        epochs: Annotated[int, Opt(help="Total epochs (a resumed run continues up to this).")] = 10,
        optimizer: Annotated[Optimizer, Opt(help="Optimizer.")] = Optimizer("adam"),
        lr: Annotated[float, Opt(help="Learning rate.")] = default_lr,
        lr_schedule: Annotated[Schedule, Opt(help="Learning-rate schedule.")] = Schedule("constant"),
        early_stopping: Annotated[int, Opt(help="Stop after N epochs without val_accuracy gain.")] = None,
        head_epochs: Annotated[int, Opt(help="Two-stage: epochs training the head only first.")] = 0,
        fine_tune_lr_factor: Annotated[float, Opt(help="Two-stage: stage-two lr = lr x factor.")] = 0.1,
        seed: Annotated[int, Opt(help="Random seed.")] = 0,
        keep: Annotated[int, Opt(help="Best checkpoints kept (the latest is kept too).")] = 2,
        checkpoint_every: Annotated[int, Opt(help="Epochs between checkpoints (an improving epoch and the "
                                                  "last one are always saved).")] = 1,
        resume: Annotated[str, Opt(help="Continue a run (run or checkpoint URI).")] = None,
        max_failures: Annotated[int, Opt(help="Worker-group restarts from the last checkpoint.")] = 1,
        evaluate: Annotated[bool, Opt(help="Evaluate on the test tree at the end.")] = True,
        report: Annotated[bool, Opt(help="Write plots and report.html.")] = True,
    ) -> None:
        # exactly the command's parameters, choices as their text
        options = {k: v.value if isinstance(v, enum.Enum) else v for k, v in locals().items()}

        with clear_errors():
            result = train(build_config(**options))
        typer.echo(f"run: {result.run_uri}")
        typer.echo(f"best checkpoint: {result.best_checkpoint}")

    command.__doc__ = doc
    return command


train_command = make_command(
    default_model="small_cnn", default_size=None, default_weights="none", default_freeze="0", default_lr=1e-3,
    default_augment="light",
    doc="Train a model from scratch on Ray Train (course models: seed_cifar, seed_catsdogs; default small_cnn).",
)
transfer_command = make_command(
    default_model="mobilenet", default_size="128", default_weights="imagenet", default_freeze="all",
    default_lr=1e-3, default_augment="light",
    doc="Fine-tune a keras.applications backbone (MobileNet at 128x128 by default) on Ray Train.",
)
