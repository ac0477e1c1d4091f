"""Per-image parameters drawn by the op list, composed into one inverse map per
image and applied: one vectorised warp (flips folded into the map, gains into its
blend), or, when nothing resamples, plain flips and gains; then the colour ops'
maps of the uint8 result, for the images whose parameters ask for one."""

from __future__ import annotations

from typing import Any

import numpy as np

from imgrec.augment.ops import ColourOp, FlipOp, LinearOp, PixelOp, ShiftOp, ops
from imgrec.augment.warp import scale_pixels, warp
from imgrec.config import AugmentConfig


class TransformParams:
    """Per-image transform parameters, each an array with N rows, one attribute per
    parameter an op declares (``rotation``, ``shift_x``, ``flip_h``, ``brightness``...)."""

    def __init__(self, values: dict[str, np.ndarray]):
        object.__setattr__(self, "values", dict(values))

    @classmethod
    def identity(cls, n: int, **overrides: Any) -> TransformParams:
        """No-op parameters for n images; ``overrides`` set parameters (scalars broadcast)."""
        values = {p: np.full(n, v) for op in ops() for p, v in op.params.items()}
        for name, value in overrides.items():
            if name not in values:
                raise TypeError(f"unknown transform parameter {name!r}; known: {sorted(values)}")
            value = np.asarray(value, dtype=values[name].dtype)
            values[name] = np.broadcast_to(value, (n, *value.shape[1:])).copy()  # (n, ...): per image
        return cls(values)

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: np.ndarray) -> None:
        if name not in self.values:
            raise AttributeError(f"unknown transform parameter {name!r}; known: {sorted(self.values)}")
        self.values[name] = value

    def __len__(self) -> int:
        return len(next(iter(self.values.values())))

    @property
    def needs_warp(self) -> bool:
        """True when any image needs resampling (flips and gains do not)."""
        return any(op.needs_warp(self.values) for op in ops())

    @property
    def gains(self) -> np.ndarray:
        """(N, 3): the product of the pixel ops' per-image (or per-channel) gains."""
        n = len(self)
        gains = np.ones((n, 3))
        for op in ops():
            if isinstance(op, PixelOp):
                gain = np.asarray(op.gain(self.values, n))
                gains = gains * (gain[:, None] if gain.ndim == 1 else gain)
        return gains


def random_transforms(
    n: int, cfg: AugmentConfig, rng: np.random.Generator, height: int, width: int
) -> TransformParams:
    """Draw parameters for n images of size height × width from ``cfg``'s ranges, op by op."""
    params = TransformParams.identity(n)
    for op in ops(cfg):
        if op.active(cfg):
            params.values.update(op.draw(cfg, rng, n, height, width))
    return params


def augment_batch(
    images: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Randomly augment uint8 images (N, H, W, 3); returns uint8 of the same shape.

    Returns ``images`` itself (no copy) when ``cfg`` is the identity."""
    _check_images(images)
    if not cfg.enabled or len(images) == 0:
        return images
    rng = rng if rng is not None else np.random.default_rng()
    n, h, w = images.shape[:3]
    return apply_transforms(images, random_transforms(n, cfg, rng, h, w), cfg)


def apply_transforms(images: np.ndarray, params: TransformParams, cfg: AugmentConfig) -> np.ndarray:
    """Apply exact parameters (``cfg`` supplies ``fill_mode`` and ``cval`` only)."""
    _check_images(images)
    if len(params) != len(images):
        raise ValueError(f"{len(params)} transform parameter sets for {len(images)} images")
    gains = params.gains
    if params.needs_warp:  # flips are folded into the map, gains into the blend
        out = _warp(images, params, cfg.fill_mode, cfg.cval, gains)
    else:
        out = _flip(images, params)
        if np.any(gains != 1):
            out = scale_pixels(out, gains)
        out = out if out is not images else images.copy()
    for op in ops():  # the colour maps last, on the batch's own output
        if isinstance(op, ColourOp) and op.recolours(params.values):
            out = op.apply(out, params.values)
    return out


def _warp(
    images: np.ndarray, params: TransformParams, fill_mode: str, cval: int, gains: np.ndarray
) -> np.ndarray:
    """Resample by the parameters' inverse maps, flips folded into the map and gains into the blend."""
    h, w = images.shape[1:3]
    return warp(images, inverse_matrices(params, h, w), fill_mode, cval, gains)


def _check_images(images: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}; "
            "decode with imgrec.decode first"
        )


def _flip(images: np.ndarray, params: TransformParams) -> np.ndarray:
    # A FlipOp's axis 0 (x) is image axis 2 of (n, H, W, 3), its axis 1 (y) image axis 1.
    flips = [(2 - op.axis, params.values[op.param]) for op in ops() if isinstance(op, FlipOp)]
    if not any(flipped.any() for _, flipped in flips):
        return images
    out = images.copy()
    for axis, flipped in flips:
        out[flipped] = np.flip(out[flipped], axis)
    return out


def inverse_matrices(params: TransformParams, height: int, width: int) -> np.ndarray:
    """(N, 2, 3) maps from output pixel (x, y, 1) to the source pixel it samples.

    Forward (what happens to the content): the linear ops about the centre in
    ``place`` order (zoom by 1/zoom, shear, rotation), the shifts, then the flips.
    The inverse of that is built directly."""
    n, values = len(params), params.values
    # Inverse linear part M = Z · Shear⁻¹ · Rotation⁻¹ (each linear op's inverse, forward order).
    linear_ops = sorted((op for op in ops() if isinstance(op, LinearOp)), key=lambda op: op.place)
    linear = linear_ops[0].inverse(values, n) if linear_ops else np.tile(np.eye(2), (n, 1, 1))
    for op in linear_ops[1:]:
        linear = linear @ op.inverse(values, n)

    # Flips act last on the output, so the output pixel p first maps to the
    # pre-flip pixel q = S p + d (S = diag(±1), d = size-1 where flipped).
    flip = np.ones((n, 2))
    offset = np.zeros((n, 2))
    for op in ops():
        if isinstance(op, FlipOp):
            sign, shift = op.flip(values, n, height, width)
            flip *= sign
            offset += shift

    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    # source = c + M (q - c - t) = (M S) p + M (d - c - t) + c
    moved = offset - centre
    for op in ops():
        if isinstance(op, ShiftOp):
            moved = moved - op.shift(values, n)
    out = np.empty((n, 2, 3))
    out[:, :, :2] = linear * flip[:, None, :]
    out[:, :, 2] = np.einsum("nij,nj->ni", linear, moved) + centre
    return out
