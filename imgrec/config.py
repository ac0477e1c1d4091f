"""One typed configuration for the CLI, the Ray jobs and the tests.

The jobs and the CLI only parse arguments into these dataclasses; the library
only reads them. Every config round-trips through ``to_dict``/``from_dict`` so
it can travel to Ray workers as JSON and be recorded in a checkpoint manifest.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_type_hints

RESIZE_MODES = ("stretch", "crop", "pad")
CACHE_MODES = ("auto", "memory", "off")  # DataConfig.cache, or a folder URI
FILL_MODES = ("nearest", "constant", "reflect", "wrap")
RANDAUGMENT_OPS = 14  # torchvision's RandAugment ops (imgrec.augment.ops.RandAugment)
RANDAUGMENT_MAX_MAGNITUDE = 30  # its magnitude bins 0..30 (num_magnitude_bins=31)


class ConfigError(ValueError):
    """A configuration value is out of range; the message names it and the fix.

    ``field`` is the dotted config path at fault (``"learning_rate"``,
    ``"model.dropout"``), when known: the CLI turns it into the option's flag."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field

    def naming(self, flag: str) -> str:
        """The message with ``flag`` (``--lr``) in place of the field name it starts
        with, or in front of it: one line that names what to change on the command line."""
        text, parts = str(self), (self.field or "").split(".")
        for lead in (".".join(parts[i:]) for i in range(len(parts))):  # base.data.uri, data.uri, uri
            if lead and text.startswith(lead) and text[len(lead):][:1] in (" ", ":"):
                return flag + text[len(lead):]
        return f"{flag}: {text}"


# Formats the decoder parses (Pillow names); any other file is refused before a
# plugin sees it. TIFF is the one opt-in extra (see docs/architecture.md).
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "MPO")
OPTIONAL_FORMATS = ("TIFF",)


@dataclass
class DecodeConfig:
    """How raw files become uint8 H×W×3 pixels. Recorded in every checkpoint so
    prediction decodes exactly as training did."""

    image_size: tuple[int, int] | None = None  # (height, width); None: the model's input size
    resize: str = "stretch"  # stretch | crop (keep aspect, centre crop) | pad (keep aspect, pad)
    max_pixels: int = 64_000_000  # checked from the header, before decoding
    pad_value: int = 0
    formats: tuple[str, ...] = IMAGE_FORMATS  # Pillow format names parsed; add "TIFF" to opt in
    max_file_bytes: int = 64_000_000  # larger files are refused before they are read
    # Working memory of one image (pixels, conversions, rotation, resize), estimated
    # from the header before decoding: a 24 MP RGB PNG needs ~100 MB, a 7900x7900
    # 16-bit PNG bomb ~190 MB.
    max_decode_bytes: int = 160_000_000
    # File bytes plus decode memory in flight in one decode task: bounds how many
    # of its read threads hold files or decode at once (one image always proceeds).
    max_inflight_bytes: int = 1_000_000_000

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}", "resize")
        for name in ("max_pixels", "max_file_bytes", "max_decode_bytes", "max_inflight_bytes"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}", name)
        self._check_formats()
        if not 0 <= int(self.pad_value) <= 255:
            raise ConfigError(f"pad_value must be a uint8 grey level 0..255, got {self.pad_value!r}", "pad_value")
        if self.image_size is None:
            return
        self.image_size = tuple(int(v) for v in self.image_size)  # type: ignore[assignment]
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ConfigError(f"image_size must be (height, width) > 0, got {self.image_size!r}", "image_size")

    def _check_formats(self) -> None:
        known = IMAGE_FORMATS + OPTIONAL_FORMATS
        if isinstance(self.formats, str):
            self.formats = (self.formats,)
        self.formats = tuple(str(f).upper() for f in self.formats)
        unknown = [f for f in self.formats if f not in known]
        if unknown or not self.formats:
            raise ConfigError(f"formats must be a non-empty subset of {known}, got {self.formats!r}", "formats")


@dataclass
class AugmentConfig:
    """The course's ``ImageDataGenerator`` options (without ``rescale``: pixel
    scaling lives inside the model). All ranges default to the identity."""

    rotation_range: float = 0.0  # degrees, uniform in [-r, r]; positive = counter-clockwise
    width_shift_range: float = 0.0  # < 1: fraction of width; >= 1: pixels (as Keras)
    height_shift_range: float = 0.0  # < 1: fraction of height; >= 1: pixels (as Keras)
    # float z -> [1-z, 1+z], or (lo, hi). Keras semantics: factor > 1 zooms OUT.
    zoom_range: float | tuple[float, float] = 0.0
    shear_range: float = 0.0  # degrees, uniform in [-s, s]
    brightness_range: tuple[float, float] | None = None  # multiply pixels by U(lo, hi)
    horizontal_flip: bool = False  # each image with p = 0.5
    vertical_flip: bool = False  # each image with p = 0.5
    # RandAugment (torchvision's): each image gets this many of its 14 ops (0: off), distinct per image,
    # at magnitude bin 0..30 (of torchvision's 31)
    randaugment_ops: int = 0
    randaugment_magnitude: int = 9
    fill_mode: str = "nearest"  # nearest | constant (cval) | reflect | wrap
    cval: int = 0
    seed: int | None = None  # None: fresh randomness; int: reproducible (tests)

    def __post_init__(self) -> None:
        if isinstance(self.zoom_range, list):
            self.zoom_range = tuple(self.zoom_range)
        if isinstance(self.brightness_range, list):
            self.brightness_range = tuple(self.brightness_range)
        if self.fill_mode not in FILL_MODES:
            raise ConfigError(f"fill_mode must be one of {FILL_MODES}, got {self.fill_mode!r}", "fill_mode")
        for name in ("rotation_range", "width_shift_range", "height_shift_range", "shear_range"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}", name)
        lo, hi = self.zoom_bounds
        if not 0 < lo <= hi:
            raise ConfigError(
                f"zoom_range must give 0 < lo <= hi, got {self.zoom_range!r} -> ({lo}, {hi}); "
                "a float z must be < 1"
            )
        if self.brightness_range is not None:
            pair = self.brightness_range
            if not isinstance(pair, tuple) or len(pair) != 2 or not 0 <= pair[0] <= pair[1]:
                raise ConfigError(
                    f"brightness_range must be (lo, hi) with 0 <= lo <= hi, got {self.brightness_range!r}"
                )
        if not 0 <= int(self.cval) <= 255:
            raise ConfigError(f"cval must be a uint8 grey level 0..255, got {self.cval!r}", "cval")
        randaugment = (("randaugment_ops", RANDAUGMENT_OPS), ("randaugment_magnitude", RANDAUGMENT_MAX_MAGNITUDE))
        for name, top in randaugment:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= top:
                raise ConfigError(f"{name} must be an integer 0..{top}, got {value!r}", name)
            setattr(self, name, int(value))  # a numpy integer too: JSON-ready

    @property
    def zoom_bounds(self) -> tuple[float, float]:
        if isinstance(self.zoom_range, int | float):
            return (1.0 - float(self.zoom_range), 1.0 + float(self.zoom_range))
        lo, hi = self.zoom_range
        return (float(lo), float(hi))

    @property
    def enabled(self) -> bool:
        """Whether any augmentation op is active (derived from the op list)."""
        return _augment_ops("enabled")(self)

    @classmethod
    def preset(cls, name: str) -> AugmentConfig:
        """Named strengths: ``none``, ``light``, ``course`` (the chapter's generator),
        ``randaugment`` (flips + RandAugment(2, 9)); each op declares its part of each preset."""
        return _augment_ops("preset")(cls, name)


# The ops behind AugmentConfig's fields (which fields each reads, when it is active,
# its part of each preset) are classes in imgrec.augment.ops: numpy code this leaf
# module must not import. That module installs its `enabled` and `preset` here when it
# loads (imgrec/__init__ loads it), so both derive from the one op list while callers
# keep `cfg.enabled` and `AugmentConfig.preset(name)`.
_AUGMENT_OPS: dict[str, Callable[..., Any]] = {}


def install_augment_ops(**hooks: Callable[..., Any]) -> None:
    _AUGMENT_OPS.update(hooks)


def _augment_ops(name: str) -> Callable[..., Any]:
    if name not in _AUGMENT_OPS:
        raise RuntimeError(f"AugmentConfig.{name} needs the op list: import imgrec.augment first")
    return _AUGMENT_OPS[name]


@dataclass
class DataConfig:
    """Where images come from and how they are split.

    ``uri`` is an image tree root (``<root>/train/<class>/*``, optional
    ``<root>/test``), a label manifest (a ``.csv`` or ``.parquet`` of
    ``uri,label[,split]``: ``imgrec.data.manifest``; relative URIs resolve
    against its folder) or ``cifar10``; local, ``file://`` or ``s3://``."""

    uri: str = ""  # image tree root, label manifest (.csv/.parquet), or "cifar10"
    validation_split: float = 0.3  # the course's 30 % (a manifest's split column overrides it per row)
    split_seed: int = 0
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    # Decoded pixels: "auto" keeps them in memory for the run (Ray Data materialize; augmented
    # anew every epoch) and on disk under <storage>/.cache/ for every later run with the same files
    # and decode settings (imgrec.data.cache); a URI puts that cache there; "memory": this run
    # only; "off": decode again every epoch. (Older configs' true/false mean "auto"/"off".)
    cache: str = "auto"
    # Past this fraction of the cluster's object store, the decoded set is not materialized:
    # training streams the decoded cache's shards every epoch (shuffled shard order + a local buffer).
    memory_budget: float = 0.5
    limit_per_class: int | None = None  # for quick looks and tests

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_split < 1.0:
            raise ConfigError(f"validation_split must be in [0, 1), got {self.validation_split!r}", "validation_split")
        if self.limit_per_class is not None and int(self.limit_per_class) < 1:
            raise ConfigError(f"limit_per_class must be >= 1 (or unset: every image), got {self.limit_per_class!r}",
                              "limit_per_class")
        if not 0.0 <= float(self.memory_budget) <= 1.0:
            raise ConfigError(f"memory_budget is a fraction of the object store, 0..1; got {self.memory_budget!r}",
                              "memory_budget")
        if isinstance(self.cache, bool):  # configs and manifests from before the persistent cache
            self.cache = "auto" if self.cache else "off"
        if not isinstance(self.cache, str) or not self.cache.strip():
            raise ConfigError(f"cache must be auto, memory, off or a folder URI, got {self.cache!r}", "cache")


@dataclass
class ModelConfig:
    """Which network to build. ``name`` is a key of the model registry
    (``imgrec models list``): a course model, ``small_cnn``, ``resnet_small``, ``resnet_tiny`` (the
    ``train`` command's default, ``SCRATCH_RECIPE``) or a backbone."""

    name: str = "small_cnn"
    weights: str = "none"  # none | imagenet | path or s3:// URI to .h5/.weights.h5/.keras
    # backbone layers frozen: N layers, "all" (pure feature extraction) or "all-K" (all but the top K blocks)
    freeze_depth: int | str = 0
    head: str = "lean"  # lean (dropout + Dense) | course (Dense 1024-1024-512)
    dropout: float = 0.2
    alpha: float | None = None  # MobileNet width multiplier
    bn_momentum: float | None = None  # override BatchNorm momentum (0.9 suits short runs); None: the model's own
    # Keras dtype policy of the layers (PRECISIONS); variables stay float32 either way, so
    # checkpoints and exports hold the same weights. "auto": models.build.resolve_precision.
    precision: str = "float32"


@dataclass
class TrainConfig:
    """A whole training run: data, model, augmentation, schedule and cluster shape."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    storage: str = "./runs"  # run folders live under <storage>/<run_name>/
    run_name: str | None = None
    # "auto": one per GPU, else one per node with its cores (imgrec.placement); or a count
    workers: int | str = "auto"
    cpus_per_worker: float = 1.0  # with a worker count; "auto" sizes workers itself
    gpus_per_worker: float = 0.0
    batch_size: int = 32  # GLOBAL batch: each of W workers takes batch_size // W per step
    epochs: int = 10
    optimizer: str = "adam"  # adam | adamw | sgd (momentum 0.9) | rmsprop
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine | exponential
    warmup_epochs: int = 0  # cosine only (ignored otherwise): linear from 0 to learning_rate first (Keras' CosineDecay)
    # Decoupled weight decay (the optimizer's own), on kernels only: never BatchNorm or biases.
    weight_decay: float = 0.0
    label_smoothing: float = 0.0  # training loss only; validation and test losses stay plain
    # Mixing training images (imgrec.augment.mix), each a Beta(a, a) alpha; 0: off. With both,
    # each image takes one of the two at p = 0.5. Its labels become soft targets.
    mixup: float = 0.0  # blend with another image, the labels in the same proportion
    cutmix: float = 0.0  # paste a box of another image, the labels by the box's area
    early_stopping_patience: int | None = None  # epochs without val_accuracy gain
    # two-stage transfer: epochs with the backbone frozen first; "auto": a third of the
    # epochs when pretrained weights meet a freeze depth that leaves blocks to fine-tune
    head_epochs: int | str = 0
    fine_tune_lr_factor: float = 0.1  # stage-two learning rate = learning_rate * factor
    seed: int = 0
    keep_checkpoints: int = 2  # best K by val_accuracy (the latest is always kept too)
    checkpoint_every: int = 1  # epochs between checkpoints; an improving epoch and the last one always save
    resume: str | None = None  # run or checkpoint URI to continue from
    max_failures: int = 1  # Ray restarts the worker group from the last checkpoint
    evaluate: bool = True  # evaluate on <data>/test or a manifest's test rows (else the validation split) at the end
    tta: str = "none"  # the evaluation's test-time augmentation (TTA_MODES)
    report: bool = True
    # Loss weight per class: "none" | "balanced" (n / (classes * count), training split) | JSON
    # '{"cat": 1, "dog": 3}' (or that dict; unnamed classes weigh 1). See resolve_class_weights.
    class_weight: str | dict[str, float] = "none"
    # MLflow tracking (imgrec.tracking): a server http(s)://host:port, a local folder (mlruns) or
    # sqlite:///path.db; None: not tracked. Checked in imgrec.preflight.
    tracking: str | None = None

    def __post_init__(self) -> None:
        self.workers = parse_workers(self.workers)
        parse_class_weight(self.class_weight)
        check_tta(self.tta)
        if self.workers != "auto" and self.batch_size < self.workers:
            raise ConfigError(
                f"batch_size {self.batch_size} is the global batch and must be >= workers ({self.workers})",
                "batch_size",
            )
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}",
                              "optimizer")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}",
                              "lr_schedule")
        self._check_counts()
        self._check_rates()

    @property
    def mixes(self) -> bool:
        """Whether training mixes images (mixup or CutMix): its labels are soft targets."""
        return float(self.mixup) > 0 or float(self.cutmix) > 0

    def head_epoch_count(self) -> int:
        """``head_epochs`` resolved: ``"auto"`` is a third of the epochs (at least one)
        where pretrained weights meet a freeze depth that leaves part of the backbone
        to fine-tune, else none (from scratch, or everything frozen anyway)."""
        if self.head_epochs != "auto":
            return int(self.head_epochs)
        fine_tunes = str(self.model.freeze_depth).strip().lower() != "all"
        if self.epochs < 2 or not fine_tunes or str(self.model.weights).strip().lower() in NO_WEIGHTS:
            return 0
        return max(1, self.epochs // 3)

    def _check_counts(self) -> None:
        self.head_epochs = parse_head_epochs(self.head_epochs)
        for name, low, hint in _TRAIN_COUNTS:
            value = getattr(self, name)
            if value is not None and value != "auto" and int(value) < low:
                raise ConfigError(f"{name} must be >= {low}{hint}, got {value!r}", name)
        if self.head_epochs != "auto" and self.head_epochs and self.head_epochs >= self.epochs:
            raise ConfigError(
                f"head_epochs ({self.head_epochs}) must be < epochs ({self.epochs}), or the fine-tuning stage "
                "never runs; for head-only training set freeze_depth to all and head_epochs to 0",
                "head_epochs",
            )

    def _check_rates(self) -> None:
        for name, hint in (("learning_rate", ", e.g. 1e-3"), ("fine_tune_lr_factor", ", e.g. 0.1"),
                           ("cpus_per_worker", "")):
            if not 0 < float(getattr(self, name)) < math.inf:
                raise ConfigError(f"{name} must be > 0{hint}, got {getattr(self, name)!r}", name)
        if not 0 <= float(self.weight_decay) < 1:
            raise ConfigError(f"weight_decay must be in [0, 1), e.g. 0.05, got {self.weight_decay!r}", "weight_decay")
        if not 0 <= float(self.label_smoothing) < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), e.g. 0.1, got {self.label_smoothing!r}",
                              "label_smoothing")
        for name in ("mixup", "cutmix"):
            if not 0 <= float(getattr(self, name)) < math.inf:
                raise ConfigError(f"{name} is a Beta(a, a) alpha and must be >= 0 (0: off; e.g. 1.0), got "
                                  f"{getattr(self, name)!r}", name)
        if not 0 <= float(self.gpus_per_worker) < math.inf:
            raise ConfigError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker!r}", "gpus_per_worker")
        if not str(self.storage).strip():
            raise ConfigError("storage is empty: give a folder or s3://bucket/prefix for the run folders", "storage")


# TrainConfig's counts: (field, lowest value, what the bound means); None is always allowed.
_TRAIN_COUNTS = (
    ("batch_size", 1, " (the global batch)"),
    ("epochs", 1, ""),
    ("checkpoint_every", 1, " (epochs)"),
    ("keep_checkpoints", 1, " (the best K are kept, and the latest)"),
    ("head_epochs", 0, ""),
    ("warmup_epochs", 0, ""),
    ("early_stopping_patience", 0, " (0 or unset: no early stopping)"),
    ("max_failures", -1, " (-1: restart without limit)"),
)


def parse_head_epochs(value: int | str) -> int | str:
    """``"auto"`` or an epoch count (also given as text, as the CLI does)."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"head_epochs must be 'auto' or a number of epochs >= 0, got {value!r}",
                          "head_epochs") from None


CLASS_WEIGHT_MODES = ("none", "balanced")


def parse_class_weight(value: str | dict[str, float] | None) -> str | dict[str, float]:
    """``class_weight`` as ``"none"``, ``"balanced"`` or a dict class name -> weight (finite,
    >= 0); refused with one line naming the field. Class names are checked
    against the data by ``resolve_class_weights`` (and ``imgrec.preflight`` for a tree)."""
    hint = 'give none, balanced or JSON like {"cat": 1, "dog": 3}'
    if value is None or (isinstance(value, str) and value.strip() in CLASS_WEIGHT_MODES + ("",)):
        return (value or "none").strip() or "none"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"class_weight {value!r} is neither none, balanced nor JSON ({exc.msg}); {hint}",
                              "class_weight") from None
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"class_weight must map class names to weights, got {value!r}; {hint}", "class_weight")
    weights = {}
    for name, weight in value.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < math.inf:
            raise ConfigError(f"class_weight of {name!r} must be a number >= 0, got {weight!r}", "class_weight")
        weights[str(name)] = float(weight)
    return weights


def resolve_class_weights(value: str | dict[str, float], class_names: list[str],
                          train_counts: list[int] | None) -> list[float] | None:
    """The loss weight of each class (in ``class_names`` order), or None for ``none``.
    ``balanced``: n_samples / (n_classes * count_c) from the training split's counts,
    as scikit-learn and Keras' docs define it (a class with no training image: 0).
    A mapping: its weights, 1 for a class it does not name; an unknown name is refused."""
    spec = parse_class_weight(value)
    if spec == "none":
        return None
    if spec == "balanced":
        if train_counts is None or len(train_counts) != len(class_names):
            raise ValueError(f"balanced class weights need the training count of each of {len(class_names)} "
                             f"classes, got {train_counts!r}")
        total = sum(train_counts)
        return [total / (len(class_names) * c) if c else 0.0 for c in train_counts]
    unknown = sorted(set(spec) - set(class_names))
    if unknown:
        raise ConfigError(f"class_weight names unknown class(es) {unknown}; the classes are {list(class_names)}",
                          "class_weight")
    weights = [spec.get(name, 1.0) for name in class_names]
    if not any(weights):
        raise ConfigError(f"class_weight gives every class weight 0 ({spec}); nothing would be learned",
                          "class_weight")
    return weights


OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
# ModelConfig.precision: "mixed_bfloat16" computes in bfloat16 with float32 variables (no loss
# scaling needed: bfloat16 has float32's exponent range); "auto" picks it on CPUs with bfloat16
# instructions when no GPU is used (1.4x resnet_small's training rate here), float32 elsewhere.
PRECISIONS = ("float32", "mixed_bfloat16", "auto")
# ModelConfig.weights spellings meaning "no pretrained weights" (models.registry.weights_kind)
NO_WEIGHTS = ("", "none", "null", "random")

# What `imgrec train` (from scratch) starts from: a small residual CNN and a recipe to match
# (AdamW, 1 warmup epoch then cosine decay, decoupled weight decay on kernels, label
# smoothing, bfloat16 compute where the CPU has it), chosen on cifar10-dev (benchmarks/quality.py,
# benchmarks/README.md). The library's own defaults (TrainConfig(), ModelConfig()) stay small_cnn with Adam: this
# is the command's default only. Keys are TrainConfig fields (dotted for nested ones).
SCRATCH_RECIPE: dict[str, Any] = {
    "model.name": "resnet_tiny", "model.precision": "auto", "optimizer": "adamw", "learning_rate": 2e-3,
    "lr_schedule": "cosine", "warmup_epochs": 1, "weight_decay": 0.05, "label_smoothing": 0.1, "batch_size": 64,
}
# The train command's --augment. On cifar10-dev at 10 epochs resnet_tiny scores best with flips only
# (val 0.581, 6 seeds; one seed each: none 0.568, light 0.555, randaugment 0.554), resnet_small with
# none (benchmarks/README.md, "quality"). Longer runs are where more augmentation should pay.
SCRATCH_AUGMENT = "flip"
LR_SCHEDULES = ("constant", "cosine", "exponential")
# Test-time augmentation of evaluation and prediction: "flip" scores each image as the mean of
# its own and its mirror image's class probabilities (for photos; not for text or digits).
TTA_MODES = ("none", "flip")


def check_tta(value: str, name: str = "tta") -> str:
    if value not in TTA_MODES:
        raise ConfigError(f"{name} must be one of {', '.join(TTA_MODES)}, got {value!r}", name)
    return value



def parse_workers(value: int | str) -> int | str:
    """``"auto"`` or a worker count >= 1 (also given as text, as the CLI does)."""
    if value == "auto":
        return value
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"workers must be 'auto' or a count >= 1, got {value!r}", "workers") from None
    if count < 1 or str(count) != str(value).strip():
        raise ConfigError(f"workers must be 'auto' or a count >= 1, got {value!r}", "workers")
    return count


SWEEP_SCHEDULERS = ("asha", "fifo")
SWEEP_SEARCHES = ("auto", "optuna", "hyperopt", "random", "grid")


@dataclass
class SweepConfig:
    """A hyperparameter sweep (``imgrec.tune.sweep``): Ray Tune trials, each one
    Ray Train run of ``base`` with its own freeze depth, learning rate and,
    optionally, batch size and augmentation preset."""

    base: TrainConfig = field(default_factory=TrainConfig)
    num_samples: int = 8  # trials; with search="grid": repeats of the grid
    freeze_depths: list[int | str] | None = None  # None: all, and all-K for the top 1, 2, 4, 8 blocks
    lr_min: float = 1e-4  # learning rate, log-uniform in [lr_min, lr_max]
    lr_max: float = 1e-2
    batch_sizes: list[int] | None = None  # None: base.batch_size
    augment_presets: list[str] | None = None  # AugmentConfig.preset names; None: base.augment
    max_concurrent: int | None = None  # None: as many trials as the cluster's CPUs fit
    scheduler: str = "asha"  # asha (stops weak trials early, on val_accuracy) | fifo
    search: str = "auto"  # auto (optuna if installed, else random) | optuna | hyperopt | random | grid
    storage: str = "./sweeps"  # the sweep lives in <storage>/<name>/
    name: str | None = None  # None: generated; required to resume
    resume: bool = False  # continue <storage>/<name> after its driver died
    evaluate: bool = True  # evaluate the best trial's checkpoint once, at the end
    seed: int = 0  # search algorithm seed

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}", "num_samples")
        if not 0 < self.lr_min <= self.lr_max:
            raise ConfigError(f"need 0 < lr_min <= lr_max, got lr_min={self.lr_min}, lr_max={self.lr_max}",
                              "lr_min" if not 0 < self.lr_min else "lr_max")
        if self.scheduler not in SWEEP_SCHEDULERS:
            raise ConfigError(f"scheduler must be one of {SWEEP_SCHEDULERS}, got {self.scheduler!r}", "scheduler")
        if self.search not in SWEEP_SEARCHES:
            raise ConfigError(f"search must be one of {SWEEP_SEARCHES}, got {self.search!r}", "search")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be >= 1 (or None: fit the cluster), got {self.max_concurrent}",
                              "max_concurrent")
        for name in ("freeze_depths", "batch_sizes", "augment_presets"):
            if getattr(self, name) is not None and not getattr(self, name):
                raise ConfigError(f"{name} must be None (the default) or a non-empty list", name)
        for size in self.batch_sizes or []:
            if int(size) < 1:
                raise ConfigError(f"batch_sizes must be global batch sizes >= 1, got {size}", "batch_sizes")
            if self.base.workers != "auto" and int(size) < self.base.workers:
                raise ConfigError(f"batch size {size} is a global batch and must be >= workers ({self.base.workers})",
                                  "batch_sizes")
        for preset in self.augment_presets or []:
            AugmentConfig.preset(preset)  # raises on an unknown name, listing the known ones


# --------------------------------------------------------------------------- serialisation


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of any config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


# Fields older versions wrote into manifests and sweep.json and that no longer
# exist: dropped on read, so old checkpoints and sweeps keep loading and resuming.
# (Fault injection is now a test hook switched on by an environment variable.)
RETIRED_FIELDS: dict[str, frozenset[str]] = {
    "TrainConfig": frozenset({"fail_at_epoch", "fail_mode"}),
    "SweepConfig": frozenset({"fail_trials"}),
}


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from ``to_dict`` output; unknown keys are an error
    naming the key, so a typo in a JSON config never passes silently. Retired
    fields (``RETIRED_FIELDS``) of older versions are dropped."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    retired = RETIRED_FIELDS.get(cls.__name__, frozenset())
    data = {k: v for k, v in data.items() if k not in retired}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _nested(key, hint, value)
        kwargs[key] = value
    return cls(**kwargs)


def _nested(key: str, cls: type, data: dict[str, Any]) -> Any:
    """``from_dict`` of a nested config; an error's field gets its full path (``data.validation_split``)."""
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        if exc.field:
            exc.field = f"{key}.{exc.field}"
        raise


def replace(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that also accepts dotted keys: ``replace(c, **{"model.name": "x"})``."""
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[key] = value
    for head, sub in nested.items():
        flat[head] = replace(getattr(cfg, head), **sub)
    return dataclasses.replace(cfg, **flat)


@dataclass
class PredictConfig:
    """Batch offline prediction over a bucket (``imgrec predict``, ``jobs/predict.py``).

    ``input`` is a prefix walked recursively (class folders optional) or a
    manifest file: ``.txt`` (one URI per line) or ``.csv``/``.parquet`` with a
    ``path`` column. See ``imgrec.predict.predict_bucket`` for the output layout."""

    model: str = ""  # run URI (its best checkpoint) or checkpoint URI
    input: str = ""  # storage prefix, or a .txt/.csv/.parquet manifest
    output: str = ""  # prefix: predictions/part-*.parquet, summary.json, _job.json
    batch_size: int = 64
    actors: int = 1  # model actors (each loads the model once)
    num_cpus: float = 1.0  # per model actor
    num_gpus: float = 0.0  # per model actor; > 0 runs the model on GPUs
    top_k: int = 5
    files_per_output: int = 10_000  # about this many rows per part file (N/2 .. 2N)
    resume: bool = True  # keep finished parts of an earlier run into the same output
    all_files: bool = False  # walk every file, not only image endings (non-images become error rows)
    tta: str = "none"  # test-time augmentation (TTA_MODES)

    def __post_init__(self) -> None:
        check_tta(self.tta)
        for name in ("batch_size", "actors", "top_k", "files_per_output"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}", name)
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError(f"num_cpus and num_gpus must be >= 0, got {self.num_cpus!r}, {self.num_gpus!r}",
                              "num_cpus" if self.num_cpus < 0 else "num_gpus")


EXPORT_FORMATS = ("saved_model", "onnx", "litert")


@dataclass
class ExportConfig:
    """A serving export of a checkpoint (``imgrec export``, ``imgrec.serving.export_model``):
    the model in one format plus its sidecar under ``out``, verified against the
    ``.keras`` model on ``sample`` images of ``images`` (default: the checkpoint's data tree)."""

    model: str = ""  # run URI (its best checkpoint) or checkpoint URI
    format: str = "saved_model"  # saved_model | onnx | litert
    out: str = ""  # folder or s3:// prefix
    images: str | None = None  # images to verify on; None: the checkpoint's data URI
    sample: int = 16  # images the verification runs
    tolerance: float = 1e-4  # max |probability difference| a float export may have
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.format not in EXPORT_FORMATS:
            raise ConfigError(f"format must be one of {EXPORT_FORMATS}, got {self.format!r}", "format")
        if int(self.sample) < 1:
            raise ConfigError(f"sample must be >= 1, got {self.sample!r}", "sample")
        if not self.tolerance > 0:
            raise ConfigError(f"tolerance must be > 0, got {self.tolerance!r}", "tolerance")
