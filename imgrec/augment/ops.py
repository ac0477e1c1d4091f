"""The augmentation ops, one class each, and the one ordered op list.

An op declares the ``AugmentConfig`` field(s) it reads, when it is active for a
config, how it draws its per-image parameters, its contribution to the batch's
single warp (or its per-pixel gain, or its colour map of the uint8 result), its
CLI option(s) and its part of each preset. Everything else derives from ``ops()``: ``TransformParams``, the random
draws, the inverse matrices, ``AugmentConfig.enabled`` and ``preset``, and the
options of ``imgrec augment preview``.

The list order is the order the parameters are drawn in (seeded outputs depend
on it); where an op sits in the *composition* is its kind (linear maps about the
centre, then shifts, then flips, as seen by the content, with the gains in the
warp's blend; colour maps after it) and, among the linear ones, its ``place``.
An op may be several kinds at once (``RandAugment``: linear, shift, gain and
colour); each kind's method reads the op's parameters. New ops go at the end of
the list, so existing seeded draws stay the same.

Adding an op: one class registered with ``register_op`` (here, or from outside
with ``registered(...)`` for a scoped registration) plus its config field in
``AugmentConfig`` (or a subclass of it). A config only runs the ops whose fields
it has, so a base ``AugmentConfig`` ignores an op added for a subclass.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from imgrec.augment import colour
from imgrec.config import RANDAUGMENT_MAX_MAGNITUDE, AugmentConfig, ConfigError, install_augment_ops

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
        return self.warps and self.changed(values)

    def changed(self, values: dict[str, np.ndarray], names: Iterable[str] | None = None) -> bool:
        """Whether any image's value of any of ``names`` (default: all its parameters) is not the identity."""
        return any(np.any(values[p] != self.params[p]) for p in (self.params if names is None else names))


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


class ColourOp(Op):
    """A per-image map of the uint8 pixels, applied after the warp, the flips and the gains
    (in op-list order), and skipped for a batch where ``recolours`` is False."""

    def recolours(self, values: dict[str, np.ndarray]) -> bool:
        """Whether any image's parameters ask for a change."""
        return self.changed(values)

    def apply(self, images: np.ndarray, values: dict[str, np.ndarray]) -> np.ndarray:
        """(n, H, W, 3) uint8 -> uint8 of the same shape. May write into ``images``: it is
        ``apply_transforms``' own output, never the caller's batch."""
        raise NotImplementedError


# --------------------------------------------------------------------------- the registry

_OPS: list[Op] = []


def register_op(cls: type[Op]) -> type[Op]:
    """Append an op class to the list (usable as a decorator); a name clash is refused."""
    if not issubclass(cls, LinearOp | ShiftOp | FlipOp | PixelOp | ColourOp):
        raise TypeError(f"{cls.__name__}: an op subclasses LinearOp, ShiftOp, FlipOp, PixelOp or ColourOp")
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
        return _rotation_inverse(values["rotation"])


def _rotation_inverse(degrees: np.ndarray) -> np.ndarray:
    theta = np.deg2rad(degrees)
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
    presets = {
        "flip": {"horizontal_flip": True}, "light": {"horizontal_flip": True}, "course": {"horizontal_flip": True},
        "randaugment": {"horizontal_flip": True},
    }
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


@register_op
class RandAugment(LinearOp, ShiftOp, PixelOp, ColourOp):
    """torchvision's ``RandAugment(num_ops, magnitude)``: each image gets ``randaugment_ops``
    distinct ops of the 14 below at magnitude bin M of 0..30, a random sign per image for
    the signed ones. At M: shear factor ±0.3·M/30, shift ±int(150/331·size·M/30) pixels,
    rotation ±30·M/30 degrees, brightness/colour/contrast/sharpness factor 1 ± 0.9·M/30,
    posterize to 8 - round(M/7.5) bits, solarize values >= 255·(1 - M/30); identity,
    autocontrast and equalize take no magnitude.

    One parameter per op, in torchvision's op order (``ra_identity`` marks an image that
    drew Identity). Its shears and rotation are a linear op (``place`` after ``Rotation``),
    its shifts a shift, both folded into the one warp; its brightness a gain in the
    warp's blend; the rest colour maps applied after it (``imgrec.augment.colour``)."""

    fields = ("randaugment_ops", "randaugment_magnitude")
    params = {
        "ra_identity": False,
        "ra_shear_x": 0.0, "ra_shear_y": 0.0, "ra_shift_x": 0.0, "ra_shift_y": 0.0, "ra_rotation": 0.0,
        "ra_brightness": 1.0, "ra_color": 1.0, "ra_contrast": 1.0, "ra_sharpness": 1.0,
        "ra_posterize": 8, "ra_solarize": 256.0, "ra_autocontrast": False, "ra_equalize": False,
    }  # fmt: skip
    presets = {"randaugment": {"randaugment_ops": 2, "randaugment_magnitude": 9}}
    options = (
        CliOption("randaugment_ops", "RandAugment: ops per image, 0..14 (0: off).", int),
        CliOption("randaugment_magnitude", f"RandAugment: magnitude bin 0..{RANDAUGMENT_MAX_MAGNITUDE}.", int),
    )
    place = 4.0
    GEOMETRY: ClassVar[tuple[str, ...]] = ("ra_shear_x", "ra_shear_y", "ra_shift_x", "ra_shift_y", "ra_rotation")
    # The colour maps in the order they apply (fixed, whatever order an image drew them in).
    COLOUR: ClassVar[tuple[tuple[str, Callable[[np.ndarray, np.ndarray], np.ndarray]], ...]] = (
        ("ra_color", colour.color), ("ra_contrast", colour.contrast), ("ra_sharpness", colour.sharpness),
        ("ra_posterize", colour.posterize), ("ra_solarize", colour.solarize),
        ("ra_autocontrast", colour.autocontrast), ("ra_equalize", colour.equalize),
    )

    def active(self, cfg):
        return cfg.randaugment_ops > 0

    def draw(self, cfg, rng, n, height, width):
        level = cfg.randaugment_magnitude / RANDAUGMENT_MAX_MAGNITUDE
        magnitudes = {  # param -> (its value at this magnitude, signed)
            "ra_identity": (True, False),
            "ra_shear_x": (0.3 * level, True), "ra_shear_y": (0.3 * level, True),
            "ra_shift_x": (float(int(150 / 331 * width * level)), True),
            "ra_shift_y": (float(int(150 / 331 * height * level)), True),
            "ra_rotation": (30.0 * level, True),
            **{p: (0.9 * level, True) for p in ("ra_brightness", "ra_color", "ra_contrast", "ra_sharpness")},
            "ra_posterize": (int(8 - round(cfg.randaugment_magnitude / 7.5)), False),
            "ra_solarize": (255.0 * (1 - level), False),
            "ra_autocontrast": (True, False), "ra_equalize": (True, False),
        }  # fmt: skip
        # Without replacement: the first num_ops of a random permutation per image.
        chosen = np.zeros((n, len(self.params)), dtype=bool)
        order = np.argsort(rng.random((n, len(self.params))), axis=1)
        np.put_along_axis(chosen, order[:, : cfg.randaugment_ops], True, axis=1)
        negative = rng.random((n, len(self.params))) < 0.5
        out = {}
        for column, (param, identity) in enumerate(self.params.items()):
            value, signed = magnitudes[param]
            if signed:  # identity ± magnitude: 0 ± m for the geometry, 1 ± m for the factors
                value = np.where(negative[:, column], identity - value, identity + value)
            dtype = np.asarray(identity).dtype
            out[param] = np.where(chosen[:, column], value, identity).astype(dtype)
        return out

    def needs_warp(self, values):
        return self.changed(values, self.GEOMETRY)

    def inverse(self, values, n):
        # Forward: shear x (x' = x + a·y), shear y (y' = y + b·x), then rotation, about the centre.
        shear_inv = np.zeros((n, 2, 2))
        shear_inv[:, 0, 0], shear_inv[:, 1, 1] = 1.0, 1.0
        shear_inv[:, 0, 1], shear_inv[:, 1, 0] = -values["ra_shear_x"], -values["ra_shear_y"]
        shear_inv[:, 0, 0] += values["ra_shear_x"] * values["ra_shear_y"]  # Sx⁻¹ · Sy⁻¹
        return shear_inv @ _rotation_inverse(values["ra_rotation"])

    def shift(self, values, n):
        return np.stack([values["ra_shift_x"], values["ra_shift_y"]], -1).astype(float)

    def gain(self, values, n):
        return values["ra_brightness"]

    def recolours(self, values):
        return self.changed(values, (p for p, _ in self.COLOUR))

    def apply(self, images, values):
        for param, recolour in self.COLOUR:
            which = np.flatnonzero(values[param] != self.params[param])
            if which.size:
                images[which] = recolour(images[which], values[param][which])
        return images
