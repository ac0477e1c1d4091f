"""The model registry: every network imgrec can build, by name, without Keras.

Each model family registers its own entries (``imgrec.models.course``,
``imgrec.models.applications``); an entry carries everything needed to build
it — its factory, preprocessing, default size and block-end rule — so a
backbone from anywhere is one ``register(ModelSpec(...))`` call. Looking names
up, listing them (``list_models("mobilenet*")``) and checking a configuration
import neither Keras nor TensorFlow; only building does.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imgrec.config import NO_WEIGHTS, PRECISIONS, ConfigError

KINDS = ("course", "scratch", "backbone")
PREPROCESSING = ("rescale_0_1", "tf", "torch", "caffe", "none")
HEADS = ("lean", "course")
BACKBONE_NAME = "backbone"
MODEL_PREFIX = "imgrec_"
DEFAULT_MODEL = "small_cnn"


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry. Published numbers come from the Keras applications
    table (keras.io/api/applications) and are documentation only.

    ``builder`` (course, scratch): ``(x, cfg) -> features``, the network's body.
    ``factory`` (backbone): ``(input_shape, alpha, weights, **kwargs) -> keras.Model``
    without its top; ``weights`` is ``None`` or ``"imagenet"``. ``blocks``: the
    block-end rule (a regular expression, see ``imgrec.models.freeze``)."""

    name: str
    kind: str  # course | scratch | backbone
    input_size: tuple[int, int]  # default (height, width)
    min_size: int  # smallest height/width the network accepts
    preprocessing: str  # one of PREPROCESSING
    description: str = ""
    factory: Callable[..., Any] | None = None  # backbone: builds the network without its top
    kwargs: tuple[tuple[str, Any], ...] = ()  # extra factory arguments
    alpha: bool = False  # accepts a width multiplier (MobileNet family)
    imagenet_sizes: tuple[int, ...] = ()  # sizes with published ImageNet weights (default: input_size)
    blocks: str | None = None  # block-end rule
    imagenet_stddev_fix: bool = False  # EfficientNet B0-B7, see layers.fix_efficientnet_normalization()
    params_m: float | None = None  # published parameters, millions (with the ImageNet top)
    depth: int | None = None
    size_mb: float | None = None  # published ImageNet weights file
    top1: float | None = None  # ImageNet validation accuracy, %
    top5: float | None = None
    builder: Callable[..., Any] | None = None  # course/scratch body: (x, cfg) -> features
    aliases: tuple[str, ...] = ()  # other accepted names (e.g. the Keras class name)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"model {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.preprocessing not in PREPROCESSING:
            raise ValueError(f"model {self.name!r}: preprocessing must be one of {PREPROCESSING}, "
                             f"got {self.preprocessing!r}")
        if (self.kind == "backbone") != (self.factory is not None):
            raise ValueError(f"model {self.name!r}: a backbone needs a factory, other kinds a builder")
        if self.kind != "backbone" and self.builder is None:
            raise ValueError(f"model {self.name!r}: a {self.kind} model needs a builder")

    @property
    def default_size(self) -> tuple[int, int]:
        """The default (height, width): the size published weights were trained at."""
        return self.input_size

    def construct(self, size: tuple[int, int], alpha: float | None = None, weights: str | None = None):
        """The backbone network without its top, from the entry's factory."""
        kwargs: dict[str, Any] = dict(self.kwargs)
        if alpha is not None:
            kwargs["alpha"] = float(alpha)
        try:
            return self.factory((size[0], size[1], 3), weights=weights, **kwargs)
        except ValueError as exc:
            # The factory's own checks (e.g. no ImageNet weights for this alpha/size): keep its words, add ours.
            label = getattr(self.factory, "label", self.name)
            raise ConfigError(f"{label} ({self.name}, alpha={alpha}): {exc}") from None


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Add an entry; a name already taken is an error unless ``replace``."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"model {spec.name!r} is already registered; pass replace=True to override it")
    _REGISTRY[spec.name] = spec
    _aliases.cache_clear()
    return spec


def unregister(name: str) -> None:
    """Remove an entry (one added from outside, e.g. by a test)."""
    del _REGISTRY[get_spec(name).name]
    _aliases.cache_clear()


def _alias_key(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", str(name).lower())


@functools.cache
def _aliases() -> dict[str, str]:
    """Accepted spellings: the registry key and each entry's aliases
    (case-insensitive, with or without separators: MobileNetV2, mobilenetv2)."""
    table: dict[str, str] = {_alias_key(spec.name): spec.name for spec in _REGISTRY.values()}
    for spec in _REGISTRY.values():
        for alias in spec.aliases:
            table.setdefault(_alias_key(alias), spec.name)
    return table


def get_spec(name: str | ModelSpec) -> ModelSpec:
    """The registry entry for ``name`` (a registry key or one of its aliases)."""
    if isinstance(name, ModelSpec):
        return name
    key = _aliases().get(_alias_key(name))
    if key is None:
        close = difflib.get_close_matches(str(name).lower(), list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint} (`imgrec models list` shows all {len(_REGISTRY)})")
    return _REGISTRY[key]


def list_models(pattern: str | None = None, *, kind: str | None = None) -> list[ModelSpec]:
    """Registry entries in registration order; ``pattern`` is a shell-style
    wildcard on the name (``"mobilenet*"``), ``kind`` one of ``KINDS``."""
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
    return [s for s in _REGISTRY.values()
            if (kind is None or s.kind == kind) and (pattern is None or fnmatch.fnmatchcase(s.name, pattern))]


# --------------------------------------------------------------------------- names of built models


def model_name(spec_name: str, alpha: float | None = None) -> str:
    """The built model's name, recording registry name and alpha so that they
    survive a save/load round trip (``model_identity`` reads them back)."""
    return f"{MODEL_PREFIX}{spec_name}" + (f"_alpha{alpha:g}" if alpha is not None else "")


def model_identity(model) -> tuple[str | None, float | None]:
    """(registry name, alpha) of a model built here, else (None, None)."""
    return parse_model_name(getattr(model, "name", "") or "")


def parse_model_name(name: str) -> tuple[str | None, float | None]:
    m = re.fullmatch(rf"{MODEL_PREFIX}(?P<spec>.+?)(?:_alpha(?P<alpha>[0-9.e+-]+))?", name)
    if not m or m["spec"] not in _REGISTRY:
        return None, None
    return m["spec"], float(m["alpha"]) if m["alpha"] else None


# --------------------------------------------------------------------------- checks before building


def check_size(spec: ModelSpec, image_size) -> tuple[int, int]:
    if image_size is None:
        return spec.input_size
    h, w = (int(v) for v in image_size)
    if min(h, w) < spec.min_size:
        dh, dw = spec.input_size
        raise ConfigError(
            f"{spec.name} needs images of at least {spec.min_size}x{spec.min_size} pixels, got {h}x{w}; "
            f"decode to a larger image size (its default is {dh}x{dw}) or pick a model that accepts "
            "small inputs (small_cnn, mobilenet_v2, resnet50 take 32x32)"
        )
    return h, w


def check_model_config(spec: ModelSpec, cfg) -> None:
    """A ``ModelConfig`` that fits ``spec``, or a ConfigError saying what to change
    (its ``field`` is the ``ModelConfig`` field at fault)."""
    if cfg.head not in HEADS:
        raise ConfigError(f"head must be one of {HEADS}, got {cfg.head!r}", "head")
    if not 0.0 <= float(cfg.dropout) < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {cfg.dropout!r}", "dropout")
    if cfg.bn_momentum is not None and not 0.0 <= float(cfg.bn_momentum) < 1.0:
        raise ConfigError(f"bn_momentum must be in [0, 1) (or unset: the model's own), got {cfg.bn_momentum!r}",
                          "bn_momentum")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}", "precision")
    check_freeze_depth(cfg.freeze_depth)
    _check_alpha(spec, cfg.alpha)
    if spec.kind != "backbone":
        _check_no_backbone(spec, cfg)


def top_blocks(depth) -> int | None:
    """K of a freeze depth ``"all-K"`` (all but the top K >= 1 blocks), else None."""
    m = re.fullmatch(r"all-([1-9]\d*)", str(depth).strip().lower())
    return int(m.group(1)) if m else None


def check_freeze_depth(depth) -> None:
    """A layer count >= 0, ``"all"`` or ``"all-K"`` with K >= 1 (``None``: 0), as
    ``set_freeze_depth`` takes it; whether the backbone has that many layers or
    blocks is known only once it is built."""
    text = str(depth).strip().lower()
    if depth is None or text == "all" or (text.isdigit() and not isinstance(depth, bool | float)):
        return
    if top_blocks(text) is not None:
        return
    raise ConfigError(f"freeze_depth must be a number of backbone layers >= 0, 'all', or 'all-K' (all but the "
                      f"top K >= 1 blocks), got {depth!r}", "freeze_depth")


def _check_alpha(spec: ModelSpec, alpha) -> None:
    if alpha is not None and not spec.alpha:
        with_alpha = ", ".join(s.name for s in _REGISTRY.values() if s.alpha)
        raise ConfigError(
            f"alpha (width multiplier) applies only to {with_alpha}; {spec.name} has no alpha, drop the setting",
            "alpha",
        )
    if alpha is not None and not float(alpha) > 0:
        raise ConfigError(f"alpha must be > 0, got {alpha!r}", "alpha")


def _check_no_backbone(spec: ModelSpec, cfg) -> None:
    if weights_kind(cfg.weights) != "none":
        raise ConfigError(
            f"{spec.name} is trained from scratch and takes no weights (got {cfg.weights!r}); "
            "pretrained weights apply to backbones (`imgrec models list`), resume a run to continue training",
            "weights",
        )
    if cfg.freeze_depth not in (0, "0", None):
        raise ConfigError(f"freeze_depth applies to backbones only; {spec.name} has none, set it to 0",
                          "freeze_depth")
    if spec.kind == "course" and cfg.head != "lean":
        raise ConfigError(f"{spec.name} is the course's exact network and has no separate head; drop head=",
                          "head")


def check_num_classes(num_classes: int) -> None:
    if int(num_classes) < 2:
        raise ConfigError(f"need at least 2 classes to train a classifier, got {num_classes}")


def weights_kind(weights: str | None) -> str:
    """``none``, ``imagenet`` or ``file`` (a local path or s3:// URI)."""
    if weights is None or str(weights).strip().lower() in NO_WEIGHTS:
        return "none"
    if str(weights).strip().lower() == "imagenet":
        return "imagenet"
    return "file"


def is_pretrained(weights: str | None) -> bool:
    """Weights from ImageNet or a file: the backbone's BatchNorm statistics are kept (``set_freeze_depth``)."""
    return weights_kind(weights) != "none"


def imagenet_size(spec: ModelSpec, size: tuple[int, int]) -> tuple[int, int]:
    """The input size the published ImageNet weights closest to ``size`` were trained at."""
    sizes = spec.imagenet_sizes or (spec.input_size[0],)
    if size[0] == size[1] and size[0] in sizes:
        return size
    best = 224 if 224 in sizes else sizes[-1]
    return (best, best)


def warn_size(spec: ModelSpec, size: tuple[int, int], trained: tuple[int, int] | None, source: str) -> None:
    if trained and tuple(trained) != tuple(size):
        warnings.warn(
            f"{source} for {spec.name} were trained on {trained[0]}x{trained[1]} images, this model takes "
            f"{size[0]}x{size[1]}: the convolution weights transfer, but expect lower accuracy until fine-tuned",
            stacklevel=3,
        )
