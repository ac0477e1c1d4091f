"""``imgrec train`` and ``imgrec transfer``: one option list (``TRAIN_OPTIONS``),
parsed into a ``TrainConfig``. The two commands differ only in their defaults
(a small CNN from scratch vs MobileNet fine-tuning at 128x128); ``imgrec tune``
takes its training options from the same list."""

from __future__ import annotations

from typing import Any

import typer

from imgrec.augment import preset_names
from imgrec.cli_common import clear_errors
from imgrec.cli_options import Option, build, command, parse_freeze, parse_size
from imgrec.config import (
    LR_SCHEDULES,
    OPTIMIZERS,
    PRECISIONS,
    RESIZE_MODES,
    SCRATCH_AUGMENT,
    SCRATCH_RECIPE,
    AugmentConfig,
    TrainConfig,
    parse_head_epochs,
)
from imgrec.models import HEADS
from imgrec.train import train

TRAIN_OPTIONS: tuple[Option, ...] = (
    Option("data", ("data.uri",), "Image tree URI (<root>/train/<class>/*, optional <root>/test), a label manifest "
           "(.csv/.parquet of uri,label[,split]) or cifar10."),
    Option("storage", ("storage",), "Where runs live: a local folder or s3://bucket/prefix."),
    Option("run_name", ("run_name",), "Run folder name (unset: generated)."),
    Option("model", ("model.name",), "Registry name (imgrec models list)."),
    Option("weights", ("model.weights",), "none | imagenet | path or s3:// URI of a weights file."),
    Option("freeze_depth", ("model.freeze_depth",), "Backbone layers frozen: N layers, 'all', or 'all-K' (all "
           "but the top K blocks).", kind=str, parse=parse_freeze),
    Option("head", ("model.head",), "Transfer head.", choices=HEADS),
    Option("dropout", ("model.dropout",), "Dropout before the output layer."),
    Option("alpha", ("model.alpha",), "MobileNet width multiplier."),
    Option("precision", ("model.precision",), "Compute dtype: float32, mixed_bfloat16 (float32 weights), or auto "
           "(mixed_bfloat16 on a CPU with bfloat16 instructions and no GPU, else float32).", choices=PRECISIONS),
    Option("image_size", ("data.decode.image_size",), "N or HxW (height x width); unset: the model's input size.",
           kind=str, parse=parse_size),
    Option("resize", ("data.decode.resize",), "How images reach the model size.", choices=RESIZE_MODES),
    Option("validation_split", ("data.validation_split",), "Fraction held out for validation."),
    Option("cache", ("data.cache",), "Decoded pixels: auto (kept in memory for the run, and on disk under "
           "<storage>/.cache/ for every later run with the same files and decode settings), a folder URI for "
           "that cache, memory (this run only) or off (decode every epoch).", kind=str),
    Option("memory_budget", ("data.memory_budget",), "Fraction of the object store the decoded set may take; "
           "past it, the shards are streamed from the decoded cache every epoch (0: always stream)."),
    Option("split_seed", ("data.split_seed",), "Seed of the deterministic split."),
    Option("augment", ("augment",), "Augmentation preset (each op declares its part of each).", default="light",
           choices=tuple(preset_names()), parse=AugmentConfig.preset),
    Option("workers", ("workers",), "Ray Train workers: auto (one per GPU, else one per node, sized to its "
           "cores) or a count.", kind=str),
    Option("cpus_per_worker", ("cpus_per_worker",), "CPUs per worker, with a worker count."),
    Option("gpus_per_worker", ("gpus_per_worker",), "GPUs per worker."),
    Option("batch_size", ("batch_size",), "GLOBAL batch size (split across workers)."),
    Option("epochs", ("epochs",), "Total epochs (a resumed run continues up to this)."),
    Option("optimizer", ("optimizer",), "Optimizer.", choices=OPTIMIZERS),
    Option("lr", ("learning_rate",), "Learning rate."),
    Option("lr_schedule", ("lr_schedule",), "Learning-rate schedule.", choices=LR_SCHEDULES),
    Option("warmup_epochs", ("warmup_epochs",), "Cosine schedule: epochs of linear warmup from 0 first."),
    Option("weight_decay", ("weight_decay",), "Decoupled weight decay on kernels (not BatchNorm or biases)."),
    Option("label_smoothing", ("label_smoothing",), "Label smoothing of the training loss."),
    Option("mixup", ("mixup",), "Mixup alpha: each training image blended with another, the labels in the same "
           "proportion ~ Beta(a, a) (0: off; e.g. 0.2-1.0)."),
    Option("cutmix", ("cutmix",), "CutMix alpha: a box of another training image pasted in, the labels by its "
           "area (0: off; e.g. 1.0). With --mixup too, each image takes one of the two."),
    Option("early_stopping", ("early_stopping_patience",), "Stop after N epochs without val_accuracy gain."),
    Option("head_epochs", ("head_epochs",), "Two-stage: epochs training the head only first; auto: a third of "
           "the epochs with pretrained weights and a freeze depth that fine-tunes blocks.", kind=str,
           parse=parse_head_epochs),
    Option("fine_tune_lr_factor", ("fine_tune_lr_factor",), "Two-stage: stage-two lr = lr x factor."),
    Option("class_weight", ("class_weight",), "Loss weight per class: none, balanced (n / (classes x count), "
           "from the training split) or JSON such as '{\"cat\": 1, \"dog\": 3}' (unnamed classes: 1).", kind=str),
    Option("seed", ("seed",), "Random seed."),
    Option("keep", ("keep_checkpoints",), "Best checkpoints kept (the latest is kept too)."),
    Option("checkpoint_every", ("checkpoint_every",), "Epochs between checkpoints (an improving epoch and the "
           "last one are always saved)."),
    Option("resume", ("resume",), "Continue a run (run or checkpoint URI)."),
    Option("max_failures", ("max_failures",), "Worker-group restarts from the last checkpoint."),
    Option("evaluate", ("evaluate",), "Evaluate on the test tree at the end."),
    Option("tta", ("tta",), "Test-time augmentation of the evaluation: none, or flip (each image scored as the "
           "mean of its own and its mirror image's probabilities; for photos, not text)."),
    Option("report", ("report",), "Write plots and report.html."),
    Option("tracking", ("tracking",), "Log to MLflow (a sweep: a parent run, a child per trial): a server "
           "(http://host:5000), a local folder (./mlruns) or sqlite:///mlflow.db; needs mlflow-skinny (the tracking extra)."),
)
OPTION = {opt.name: opt for opt in TRAIN_OPTIONS}

# transfer (and tune, which sweeps a transfer job) start from MobileNet at 128x128 with ImageNet weights
TRANSFER_DEFAULTS = {"model": "mobilenet", "weights": "imagenet", "freeze_depth": "all-2", "head_epochs": "auto",
                     "image_size": "128"}


# train (from scratch) starts from config.SCRATCH_RECIPE: resnet_tiny with its recipe, and
# config.SCRATCH_AUGMENT (horizontal flips only at its 10 epochs)
SCRATCH_DEFAULTS = {**{next(o.name for o in TRAIN_OPTIONS if o.paths == (path,)): value
                       for path, value in SCRATCH_RECIPE.items()}, "augment": SCRATCH_AUGMENT}


def train_options(**defaults: Any) -> tuple[Option, ...]:
    """``TRAIN_OPTIONS`` with some defaults changed."""
    unknown = set(defaults) - set(OPTION)
    if unknown:
        raise KeyError(f"no such training option(s): {sorted(unknown)}")
    return tuple(opt.with_(default=defaults[opt.name]) if opt.name in defaults else opt for opt in TRAIN_OPTIONS)


def _train_command(options: tuple[Option, ...], doc: str):
    def run(values: dict[str, Any]) -> None:
        if not values["data"] and not values["resume"]:
            raise typer.BadParameter("give --data URI (an image tree, a label manifest, or cifar10), or --resume "
                                     "RUN_URI")
        with clear_errors(options):
            result = train(build(TrainConfig, options, values))
        typer.echo(f"run: {result.run_uri}")
        typer.echo(f"best checkpoint: {result.best_checkpoint}")

    return command(TrainConfig, options, run, doc)


train_command = _train_command(
    train_options(**SCRATCH_DEFAULTS),
    "Train a model from scratch on Ray Train (default resnet_tiny with AdamW, warmup + cosine, label smoothing, "
    "bfloat16 compute where the CPU has it; resnet_small for longer budgets; "
    "course models: seed_cifar, seed_catsdogs; small_cnn).",
)
transfer_command = _train_command(
    train_options(**TRANSFER_DEFAULTS),
    "Fine-tune a keras.applications backbone (MobileNet at 128x128 by default) on Ray Train.",
)
