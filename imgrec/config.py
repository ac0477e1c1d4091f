"""One typed configuration for the CLI, the Ray jobs and the tests.

The jobs and the CLI only parse arguments into these dataclasses; the library
only reads them. Every config round-trips through ``to_dict``/``from_dict`` so
it can travel to Ray workers as JSON and be recorded in a checkpoint manifest.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, get_type_hints

RESIZE_MODES = ("stretch", "crop", "pad")
FILL_MODES = ("nearest", "constant", "reflect", "wrap")


class ConfigError(ValueError):
    """A configuration value is out of range; the message names it and the fix."""


@dataclass
class DecodeConfig:
    """How raw files become uint8 H×W×3 pixels. Recorded in every checkpoint so
    prediction decodes exactly as training did."""

    image_size: tuple[int, int] | None = None  # (height, width); None: the model's input size
    resize: str = "stretch"  # stretch | crop (keep aspect, centre crop) | pad (keep aspect, pad)
    max_pixels: int = 64_000_000  # checked from the header, before decoding
    pad_value: int = 0

    def __post_init__(self) -> None:
        if self.image_size is None:
            return
        self.image_size = tuple(int(v) for v in self.image_size)  # type: ignore[assignment]
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ConfigError(f"image_size must be (height, width) > 0, got {self.image_size!r}")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")


@dataclass
class AugmentConfig:
    """The course's ``ImageDataGenerator`` options (without ``rescale``: pixel
    scaling lives inside the model). All ranges default to the identity."""

    rotation_range: float = 0.0  # degrees, uniform in [-r, r]
    width_shift_range: float = 0.0  # fraction of width
    height_shift_range: float = 0.0  # fraction of height
    zoom_range: float | tuple[float, float] = 0.0  # float z -> [1-z, 1+z]
    shear_range: float = 0.0  # degrees, uniform in [-s, s]
    brightness_range: tuple[float, float] | None = None  # multiply pixels by U(lo, hi)
    horizontal_flip: bool = False
    vertical_flip: bool = False
    fill_mode: str = "nearest"
    cval: int = 0
    seed: int | None = None  # None: fresh randomness; int: reproducible (tests)

    def __post_init__(self) -> None:
        if isinstance(self.zoom_range, list):
            self.zoom_range = tuple(self.zoom_range)
        if isinstance(self.brightness_range, list):
            self.brightness_range = tuple(self.brightness_range)
        if self.fill_mode not in FILL_MODES:
            raise ConfigError(f"fill_mode must be one of {FILL_MODES}, got {self.fill_mode!r}")
        for name in ("rotation_range", "width_shift_range", "height_shift_range", "shear_range"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    @property
    def zoom_bounds(self) -> tuple[float, float]:
        if isinstance(self.zoom_range, int | float):
            return (1.0 - float(self.zoom_range), 1.0 + float(self.zoom_range))
        lo, hi = self.zoom_range
        return (float(lo), float(hi))

    @property
    def enabled(self) -> bool:
        return bool(
            self.rotation_range
            or self.width_shift_range
            or self.height_shift_range
            or self.zoom_bounds != (1.0, 1.0)
            or self.shear_range
            or self.brightness_range
            or self.horizontal_flip
            or self.vertical_flip
        )

    @classmethod
    def preset(cls, name: str) -> AugmentConfig:
        """Named strengths: ``none``, ``light``, ``course`` (the chapter's generator)."""
        presets = {
            "none": cls(),
            "light": cls(width_shift_range=0.1, height_shift_range=0.1, horizontal_flip=True),
            "course": cls(
                rotation_range=40,
                width_shift_range=0.2,
                height_shift_range=0.2,
                zoom_range=0.2,
                shear_range=0.2,  # degrees, as ImageDataGenerator reads it
                brightness_range=(0.8, 1.2),
                horizontal_flip=True,
            ),
        }
        if name not in presets:
            raise ConfigError(f"unknown augmentation preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]


@dataclass
class DataConfig:
    """Where images come from and how they are split."""

    uri: str = ""  # image tree root (local, file://, s3://), or "cifar10"
    validation_split: float = 0.3  # the course's 30 %
    split_seed: int = 0
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    cache: bool = True  # decode once (Ray Data materialize), augment every epoch
    limit_per_class: int | None = None  # for quick looks and tests

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_split < 1.0:
            raise ConfigError(f"validation_split must be in [0, 1), got {self.validation_split!r}")


@dataclass
class ModelConfig:
    """Which network to build. ``name`` is a key of the model registry
    (``imgrec models list``): a course model, ``small_cnn``, or a backbone."""

    name: str = "small_cnn"
    weights: str = "none"  # none | imagenet | path or s3:// URI to .h5/.weights.h5/.keras
    freeze_depth: int | str = 0  # backbone layers frozen; "all" = pure feature extraction
    head: str = "lean"  # lean (dropout + Dense) | course (Dense 1024-1024-512)
    dropout: float = 0.2
    alpha: float | None = None  # MobileNet width multiplier


@dataclass
class TrainConfig:
    """A whole training run: data, model, augmentation, schedule and cluster shape."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    storage: str = "./runs"  # run folders live under <storage>/<run_name>/
    run_name: str | None = None
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batch_size: int = 32  # GLOBAL batch: each of W workers takes batch_size // W per step
    epochs: int = 10
    optimizer: str = "adam"  # adam | sgd | rmsprop
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine | exponential
    early_stopping_patience: int | None = None  # epochs without val_accuracy gain
    head_epochs: int = 0  # two-stage transfer: epochs with the backbone frozen first
    fine_tune_lr_factor: float = 0.1  # stage-two learning rate = learning_rate * factor
    seed: int = 0
    keep_checkpoints: int = 2  # best K by val_accuracy (the latest is always kept too)
    resume: str | None = None  # run or checkpoint URI to continue from
    max_failures: int = 1  # Ray restarts the worker group from the last checkpoint
    evaluate: bool = True  # evaluate on <data>/test (or the validation split) at the end
    report: bool = True
    fail_at_epoch: int | None = None  # fault injection for tests: raise in this epoch
    fail_mode: str = "crash"  # crash (worker process dies) | nan (non-finite loss)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.batch_size < self.workers:
            raise ConfigError(
                f"batch_size {self.batch_size} is the global batch and must be >= workers ({self.workers})"
            )
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")

    @property
    def per_worker_batch_size(self) -> int:
        return self.batch_size // self.workers


# --------------------------------------------------------------------------- serialisation


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of any config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from ``to_dict`` output; unknown keys are an error
    naming the key, so a typo in a JSON config never passes silently."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        kwargs[key] = value
    return cls(**kwargs)


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
