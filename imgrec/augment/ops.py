"""The augmentation ops, one class each, and the one ordered op list.

An op declares the ``AugmentConfig`` field(s) it reads, when it is active for a
config, how it draws its per-image parameters, its contribution to the batch's
single warp (or its per-pixel gain), its CLI option(s) and its part of each
preset. Everything else derives from ``ops()``: ``TransformParams``, the random
draws, the inverse matrices, ``AugmentConfig.enabled`` and ``preset``, and the
options of ``imgrec augment preview``.

The list order is the order the parameters are drawn in (seeded outputs depend
on it); where an op sits in the *composition* is its kind (linear maps about the
centre, then shifts, then flips, as seen by the content) and, among the linear
ones, its ``place``.

Adding an op: one class registered with ``register_op`` (here, or from outside
with ``registered(...)`` for a scoped registration) plus its config field in
``AugmentConfig`` (or a subclass of it). A config only runs the ops whose fields
it has, so a base ``AugmentConfig`` ignores an op added for a subclass.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from imgrec.config import AugmentConfig, ConfigError, install_augment_ops

FLIP_PROBABILITY = 0.5


# --------------------------------------------------------------------------- CLI metadata


def float_or_pair(text: str | None, option: str):
    """'0.2' -> 0.2, '0.8,1.2' -> (0.8, 1.2), 'none' -> None, None -> None."""
    if text is None or text.lower() == "none":
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"{option} must be a number or LO,HI, got {text!r}") from None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return tuple(values)
    raise ConfigError(f"{option} must be a number or LO,HI, got {text!r}")


@dataclass(frozen=True)
class CliOption:
    """One ``imgrec augment preview`` option: ``--<field>`` (a ``--x/--no-x`` flag for bool)."""

    field: str
    help: str = ""
    type: type = float  # what typer parses: float, int, bool, or str handed to ``parse``
    parse: Callable[[str, str], Any] | None = None  # (text, "--flag") -> field value; None: not given
    none_clears: bool = False  # a parsed None sets the field to None (else: keep the preset's value)

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    def changes(self, raw: Any) -> dict[str, Any]:
        """The config change the option's raw value asks for (nothing when not given)."""
        if raw is None:
            return {}
        value = self.parse(raw, self.flag) if self.parse else raw
        return {self.field: value} if value is not None or self.none_clears else {}


# --------------------------------------------------------------------------- the op kinds


class Op:
    """One augmentation. Subclass one of the kinds below and ``register_op`` it."""

    fields: ClassVar[tuple[str, ...]] = ()  # the AugmentConfig fields it reads
    params: ClassVar[dict[str, Any]] = {}  # per-image parameter -> its identity value (and dtype)
    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # preset name -> field values it sets
    options: ClassVar[tuple[CliOption, ...]] = ()
    warps: ClassVar[bool] = False  # a non-identity parameter needs resampling

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def param(self) -> str:
        """The op's parameter, when it has exactly one."""
        (name,) = self.params
        return name

    def active(self, cfg: AugmentConfig) -> bool:
        return any(bool(getattr(cfg, f)) for f in self.fields)

    def draw(self, cfg: AugmentConfig, rng: np.random.Generator, n: int, height: int, width: int) -> dict:
        """Per-image parameters for n images (only called when ``active``)."""
        raise NotImplementedError

    def needs_warp(self, values: dict[str, np.ndarray]) -> bool:
        return self.warps and any(np.any(values[p] != v) for p, v in self.params.items())


class LinearOp(Op):
    """A linear map about the image centre; ``place`` orders these in the composition."""

    place: ClassVar[float] = 0.0
    warps = True

    def inverse(self, values: dict[str, np.ndarray], n: int) -> np.ndarray:
        """(n, 2, 2): the inverse of the map each image undergoes."""
        raise NotImplementedError


class ShiftOp(Op):
    """A translation, after the linear maps."""

    warps = True

    def shift(self, values: dict[str, np.ndarray], n: int) -> np.ndarray:
        """(n, 2): pixels (x, y) the content moves."""
        raise NotImplementedError


class FlipOp(Op):
    """An axis flip, acting last; folded into the warp's map, or a plain flip without one."""

    axis: ClassVar[int] = 0  # 0: x (horizontal), 1: y (vertical)

    def draw(self, cfg, rng, n, height, width):
        return {self.param: rng.random(n) < FLIP_PROBABILITY}

    def flip(self, values: dict[str, np.ndarray], n: int, height: int, width: int):
        """(sign, offset), each (n, 2): the output pixel p samples the pre-flip pixel sign·p + offset."""
        flipped = values[self.param]
        sign, offset = np.ones((n, 2)), np.zeros((n, 2))
        sign[flipped, self.axis], offset[flipped, self.axis] = -1.0, (width, height)[self.axis] - 1
        return sign, offset


class PixelOp(Op):
    """A per-image (or per-image-and-channel) gain, folded into the warp's blend."""

    def gain(self, values: dict[str, np.ndarray], n: int) -> np.ndarray:
        """(n,) or (n, 3) multipliers of the pixel values."""
        raise NotImplementedError


# --------------------------------------------------------------------------- the registry

_OPS: list[Op] = []


def register_op(cls: type[Op]) -> type[Op]:
    """Append an op class to the list (usable as a decorator); a name clash is refused."""
    if not issubclass(cls, LinearOp | ShiftOp | FlipOp | PixelOp):
        raise TypeError(f"{cls.__name__}: an op subclasses LinearOp, ShiftOp, FlipOp or PixelOp")
    if any(op.name == cls.__name__ for op in _OPS):
        raise ValueError(f"augmentation op {cls.__name__!r} is already registered")
    op = cls()
    taken = {p for other in _OPS for p in other.params} & set(op.params)
    if taken:
        raise ValueError(f"{cls.__name__}: parameter(s) {sorted(taken)} already drawn by another op")
    _OPS.append(op)
    return cls


def unregister_op(cls: type[Op] | str) -> None:
    """Remove an op (by class or name). Registering it again appends it: the draw order changes."""
    name = cls if isinstance(cls, str) else cls.__name__
    _OPS[:] = [op for op in _OPS if op.name != name]


@contextlib.contextmanager
def registered(*classes: type[Op]) -> Iterator[None]:
    """Register op classes for the duration of a ``with`` block (tests leave no global state)."""
    done = []
    try:
        for cls in classes:
            done.append(register_op(cls))
        yield
    finally:
        for cls in done:
            unregister_op(cls)


def ops(cfg: AugmentConfig | type[AugmentConfig] | None = None) -> tuple[Op, ...]:
    """The op list in draw order; with a config (or its class), only the ops whose fields it has."""
    if cfg is None:
        return tuple(_OPS)
    names = {f.name for f in dataclasses.fields(cfg)}
    return tuple(op for op in _OPS if set(op.fields) <= names)


def enabled(cfg: AugmentConfig) -> bool:
    """Whether any op changes anything (``AugmentConfig.enabled``)."""
    return any(op.active(cfg) for op in ops(cfg))


def preset_names() -> list[str]:
    return sorted({"none"} | {name for op in _OPS for name in op.presets})


def preset(cls: type[AugmentConfig], name: str) -> AugmentConfig:
    """``cls`` with every op's contribution to preset ``name`` (``AugmentConfig.preset``)."""
    if name not in preset_names():
        raise ConfigError(f"unknown augmentation preset {name!r}; choose one of {preset_names()}")
    values: dict[str, Any] = {}
    for op in ops(cls):
        values.update(op.presets.get(name, {}))
    return cls(**values)


# A leaf, imgrec.config cannot import this module: it asks it for `enabled` and `preset`.
install_augment_ops(enabled=enabled, preset=preset)


# --------------------------------------------------------------------------- the ops, in draw order


def _shift_pixels(shift_range: float, size: int) -> float:
    # Keras: a value < 1 is a fraction of the size, >= 1 a number of pixels.
    return shift_range * size if shift_range < 1 else float(shift_range)


@register_op
class Rotation(LinearOp):
    """angle ~ U(-r, r) degrees; positive turns the content counter-clockwise on screen."""

    fields = ("rotation_range",)
    params = {"rotation": 0.0}
    presets = {"course": {"rotation_range": 40}}
    options = (CliOption("rotation_range", "Degrees, U(-r, r)."),)
    place = 3.0

    def draw(self, cfg, rng, n, height, width):
        return {"rotation": rng.uniform(-cfg.rotation_range, cfg.rotation_range, n)}

    def inverse(self, values, n):
        theta = np.deg2rad(values["rotation"])
        cos, sin = np.cos(theta), np.sin(theta)
        # y points down, so a counter-clockwise on-screen rotation R = [[c, s], [-s, c]] has R⁻¹ = Rᵀ.
        return np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)


class _Shift(ShiftOp):
    axis: ClassVar[int] = 0  # 0: x (width), 1: y (height)

    def draw(self, cfg, rng, n, height, width):
        limit = _shift_pixels(getattr(cfg, self.fields[0]), (width, height)[self.axis])
        return {self.param: rng.uniform(-limit, limit, n)}

    def shift(self, values, n):
        out = np.zeros((n, 2))
        out[:, self.axis] = values[self.param]
        return out


@register_op
class WidthShift(_Shift):
    """shift ~ U(-s, s) × width (s < 1) or pixels (s >= 1); positive moves content right."""

    fields = ("width_shift_range",)
    params = {"shift_x": 0.0}
    presets = {"light": {"width_shift_range": 0.1}, "course": {"width_shift_range": 0.2}}
    options = (CliOption("width_shift_range", "Fraction of width (< 1) or pixels."),)
    axis = 0


@register_op
class HeightShift(_Shift):
    """As ``WidthShift``, vertically; positive moves content down."""

    fields = ("height_shift_range",)
    params = {"shift_y": 0.0}
    presets = {"light": {"height_shift_range": 0.1}, "course": {"height_shift_range": 0.2}}
    options = (CliOption("height_shift_range", "Fraction of height (< 1) or pixels."),)
    axis = 1


@register_op
class Zoom(LinearOp):
    """x and y factors drawn independently from the zoom bounds; > 1 zooms OUT (Keras)."""

    fields = ("zoom_range",)
    params = {"zoom_x": 1.0, "zoom_y": 1.0}
    presets = {"course": {"zoom_range": 0.2}}
    options = (CliOption("zoom_range", "z (-> [1-z, 1+z]) or LO,HI; > 1 zooms out.", str, float_or_pair),)
    place = 1.0

    def active(self, cfg):
        return cfg.zoom_bounds != (1.0, 1.0)

    def draw(self, cfg, rng, n, height, width):
        lo, hi = cfg.zoom_bounds
        zoom_x, zoom_y = rng.uniform(lo, hi, (2, n))
        return {"zoom_x": zoom_x, "zoom_y": zoom_y}

    def inverse(self, values, n):
        zoom = np.zeros((n, 2, 2))  # the factor scales the sampling grid
        zoom[:, 0, 0], zoom[:, 1, 1] = values["zoom_x"], values["zoom_y"]
        return zoom


@register_op
class Shear(LinearOp):
    """angle ~ U(-s, s) degrees: x' = x + tan(angle)·y about the centre."""

    fields = ("shear_range",)
    params = {"shear": 0.0}
    presets = {"course": {"shear_range": 0.2}}  # degrees, as ImageDataGenerator reads it
    options = (CliOption("shear_range", "Shear angle in degrees, U(-s, s)."),)
    place = 2.0

    def draw(self, cfg, rng, n, height, width):
        return {"shear": rng.uniform(-cfg.shear_range, cfg.shear_range, n)}

    def inverse(self, values, n):
        shear_inv = np.zeros((n, 2, 2))
        shear_inv[:, 0, 0] = shear_inv[:, 1, 1] = 1.0
        shear_inv[:, 0, 1] = -np.tan(np.deg2rad(values["shear"]))
        return shear_inv


@register_op
class HorizontalFlip(FlipOp):
    """each image mirrored left-right with p = 0.5."""

    fields = ("horizontal_flip",)
    params = {"flip_h": False}
    presets = {"light": {"horizontal_flip": True}, "course": {"horizontal_flip": True}}
    options = (CliOption("horizontal_flip", type=bool),)
    axis = 0


@register_op
class VerticalFlip(FlipOp):
    """each image mirrored top-bottom with p = 0.5."""

    fields = ("vertical_flip",)
    params = {"flip_v": False}
    options = (CliOption("vertical_flip", type=bool),)
    axis = 1


@register_op
class Brightness(PixelOp):
    """pixels × U(lo, hi), rounded and clipped to 0..255."""

    fields = ("brightness_range",)
    params = {"brightness": 1.0}
    presets = {"course": {"brightness_range": (0.8, 1.2)}}
    options = (CliOption("brightness_range", "LO,HI pixel multiplier, or 'none'.", str, float_or_pair, True),)

    def draw(self, cfg, rng, n, height, width):
        lo, hi = cfg.brightness_range
        return {"brightness": rng.uniform(lo, hi, n)}

    def gain(self, values, n):
        return values["brightness"]
