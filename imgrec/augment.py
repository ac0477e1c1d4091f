"""The course's ``ImageDataGenerator`` augmentations, vectorised over a batch in numpy.

This runs inside Ray Data CPU workers, so it imports neither TensorFlow nor
scipy (TF alone costs ~0.5 GB per process). One batch is augmented at once:

1. ``random_transforms`` draws per-image parameters (``TransformParams``).
2. ``apply_transforms`` composes each image's affine map (zoom, shear, rotation
   about the centre, shift, then flips) into a 2×3 *inverse* matrix, maps the
   output pixel grid of all N images into source coordinates in one go, and
   samples bilinearly with fancy indexing (RGB packed into uint32 so each
   corner is a single gather). Out-of-image samples follow ``fill_mode``.
3. Brightness multiplies the result, rounded and clipped to 0..255.

Semantics (Keras ``ImageDataGenerator`` unless noted):

* ``rotation_range`` r: angle ~ U(-r, r) degrees; positive turns the content
  counter-clockwise as seen on screen.
* ``width_shift_range`` / ``height_shift_range`` s: shift ~ U(-s, s) × width
  (height) when s < 1, or U(-s, s) pixels when s >= 1 (as Keras). Here a
  positive shift moves content right/down (Keras' sign is the opposite; the
  distribution is symmetric, so training is unaffected).
* ``zoom_range``: z -> [1-z, 1+z] or [lo, hi]; x and y factors are drawn
  independently, as Keras does. Keras semantics: the factor scales the
  *sampling* grid, so a factor > 1 zooms OUT (content shrinks) and < 1 zooms in.
* ``shear_range`` s: shear angle ~ U(-s, s) in **degrees** (as Keras reads it);
  a horizontal shear x' = x + tan(angle)·y about the centre.
* ``brightness_range`` (lo, hi): pixels × U(lo, hi), clipped to 0..255.
* ``horizontal_flip`` / ``vertical_flip``: each image flipped with p = 0.5.
* ``fill_mode``: ``nearest`` (repeat the edge), ``constant`` (``cval``),
  ``reflect`` (mirror including the edge pixel: d c b a | a b c d | d c b a),
  ``wrap`` (periodic tiling: a b c d | a b c d | a b c d).
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from imgrec import storage
from imgrec.config import AugmentConfig, DecodeConfig, from_dict
from imgrec.decode import decode_image, image_info

FLIP_PROBABILITY = 0.5


# --------------------------------------------------------------------------- parameters


@dataclass
class TransformParams:
    """Per-image transform parameters, each an array of length N."""

    rotation: np.ndarray  # degrees, counter-clockwise on screen
    shear: np.ndarray  # degrees
    zoom_x: np.ndarray  # sampling-grid factor: > 1 zooms out
    zoom_y: np.ndarray
    shift_x: np.ndarray  # pixels, positive moves content right
    shift_y: np.ndarray  # pixels, positive moves content down
    flip_h: np.ndarray  # bool
    flip_v: np.ndarray  # bool
    brightness: np.ndarray  # multiplicative factor

    @classmethod
    def identity(cls, n: int, **overrides: Any) -> TransformParams:
        """No-op parameters for n images; ``overrides`` set fields (scalars broadcast)."""
        values: dict[str, np.ndarray] = {
            "rotation": np.zeros(n),
            "shear": np.zeros(n),
            "zoom_x": np.ones(n),
            "zoom_y": np.ones(n),
            "shift_x": np.zeros(n),
            "shift_y": np.zeros(n),
            "flip_h": np.zeros(n, dtype=bool),
            "flip_v": np.zeros(n, dtype=bool),
            "brightness": np.ones(n),
        }
        for name, value in overrides.items():
            if name not in values:
                raise TypeError(f"unknown transform parameter {name!r}; known: {sorted(values)}")
            values[name] = np.broadcast_to(np.asarray(value, dtype=values[name].dtype), (n,)).copy()
        return cls(**values)

    def __len__(self) -> int:
        return len(self.rotation)

    @property
    def needs_warp(self) -> bool:
        """True when any image needs resampling (flips and brightness do not)."""
        return bool(
            np.any(self.rotation)
            or np.any(self.shear)
            or np.any(self.zoom_x != 1)
            or np.any(self.zoom_y != 1)
            or np.any(self.shift_x)
            or np.any(self.shift_y)
        )


def random_transforms(
    n: int, cfg: AugmentConfig, rng: np.random.Generator, height: int, width: int
) -> TransformParams:
    """Draw parameters for n images of size height × width from ``cfg``'s ranges."""
    params = TransformParams.identity(n)
    if cfg.rotation_range:
        params.rotation = rng.uniform(-cfg.rotation_range, cfg.rotation_range, n)
    if cfg.width_shift_range:
        limit = _shift_pixels(cfg.width_shift_range, width)
        params.shift_x = rng.uniform(-limit, limit, n)
    if cfg.height_shift_range:
        limit = _shift_pixels(cfg.height_shift_range, height)
        params.shift_y = rng.uniform(-limit, limit, n)
    lo, hi = cfg.zoom_bounds
    if (lo, hi) != (1.0, 1.0):
        params.zoom_x, params.zoom_y = rng.uniform(lo, hi, (2, n))
    if cfg.shear_range:
        params.shear = rng.uniform(-cfg.shear_range, cfg.shear_range, n)
    if cfg.horizontal_flip:
        params.flip_h = rng.random(n) < FLIP_PROBABILITY
    if cfg.vertical_flip:
        params.flip_v = rng.random(n) < FLIP_PROBABILITY
    if cfg.brightness_range:
        params.brightness = rng.uniform(cfg.brightness_range[0], cfg.brightness_range[1], n)
    return params


def _shift_pixels(shift_range: float, size: int) -> float:
    # Keras: a value < 1 is a fraction of the size, >= 1 a number of pixels.
    return shift_range * size if shift_range < 1 else float(shift_range)


# --------------------------------------------------------------------------- applying


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
    if params.needs_warp:  # flips are folded into the map, brightness into the blend
        return _warp(images, params, cfg.fill_mode, cfg.cval, params.brightness)
    out = _flip(images, params.flip_h, params.flip_v)
    if np.any(params.brightness != 1):
        out = _scale_brightness(out, params.brightness)
    return out if out is not images else images.copy()


def _check_images(images: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}; "
            "decode with imgrec.decode first"
        )


def _flip(images: np.ndarray, flip_h: np.ndarray, flip_v: np.ndarray) -> np.ndarray:
    if not (flip_h.any() or flip_v.any()):
        return images
    out = images.copy()
    out[flip_h] = out[flip_h][:, :, ::-1]
    out[flip_v] = out[flip_v][:, ::-1]
    return out


def _scale_brightness(images: np.ndarray, factors: np.ndarray) -> np.ndarray:
    out = images.astype(np.float32)
    out *= factors.astype(np.float32)[:, None, None, None]
    return _to_uint8(out)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    _clamp(values, 0.0, 255.0)
    values += 0.5  # round half up; values are >= 0, so truncation == floor
    return values.astype(np.uint8)


def inverse_matrices(params: TransformParams, height: int, width: int) -> np.ndarray:
    """(N, 2, 3) maps from output pixel (x, y, 1) to the source pixel it samples.

    Forward (what happens to the content): zoom (by 1/zoom), shear, rotate about
    the centre, shift, then flip. The inverse of that is built directly."""
    n = len(params)
    theta = np.deg2rad(params.rotation)
    cos, sin = np.cos(theta), np.sin(theta)
    tan_shear = np.tan(np.deg2rad(params.shear))
    # Inverse linear part M = Z · Shear⁻¹ · Rotation⁻¹ (y axis points down, so a
    # counter-clockwise on-screen rotation R = [[c, s], [-s, c]] has R⁻¹ = Rᵀ).
    r_inv = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shear_inv = np.zeros((n, 2, 2))
    shear_inv[:, 0, 0] = shear_inv[:, 1, 1] = 1.0
    shear_inv[:, 0, 1] = -tan_shear
    zoom = np.zeros((n, 2, 2))
    zoom[:, 0, 0], zoom[:, 1, 1] = params.zoom_x, params.zoom_y
    linear = zoom @ shear_inv @ r_inv

    # Flips act last on the output, so the output pixel p first maps to the
    # pre-flip pixel q = S p + d (S = diag(±1), d = size-1 where flipped).
    flip = np.ones((n, 2))
    offset = np.zeros((n, 2))
    flip[params.flip_h, 0], offset[params.flip_h, 0] = -1.0, width - 1
    flip[params.flip_v, 1], offset[params.flip_v, 1] = -1.0, height - 1

    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    shift = np.stack([params.shift_x, params.shift_y], -1)
    # source = c + M (q - c - t) = (M S) p + M (d - c - t) + c
    out = np.empty((n, 2, 3))
    out[:, :, :2] = linear * flip[:, None, :]
    out[:, :, 2] = np.einsum("nij,nj->ni", linear, offset - centre - shift) + centre
    return out


# Output pixels resampled per step (two 128x128 images): the scratch arrays stay
# a few MB, mostly cache-resident, and are reused across chunks and batches.
# Fresh large temporaries cost a page fault per 4 KB, which used to dominate.
_CHUNK_PIXELS = 1 << 15


def _warp(
    images: np.ndarray, params: TransformParams, fill_mode: str, cval: int, brightness: np.ndarray
) -> np.ndarray:
    """Bilinear resampling of the batch, a few images per step, brightness folded in."""
    n, h, w = images.shape[:3]
    mats = inverse_matrices(params, h, w).astype(np.float32)
    gains = brightness.astype(np.float32)
    if fill_mode == "constant":
        # A 1-pixel cval border: out-of-range samples clip onto it, and samples
        # straddling the edge blend with cval (an antialiased edge).
        images = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=cval)
    packed = _pack_rgb(images)
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    step = max(1, _CHUNK_PIXELS // (h * w))
    for i in range(0, n, step):
        j = min(n, i + step)
        ws = _scratch_for((j - i, h, w, fill_mode == "constant"))
        _warp_chunk(packed, i, mats[i:j], gains[i:j], fill_mode, out[i:j], ws)
    return out


_local = threading.local()


def _scratch_for(key: tuple) -> _Scratch:
    """This thread's scratch arrays for one chunk shape, kept across batches (a
    worker sees the same shape batch after batch; a few shapes at most)."""
    cache: dict[tuple, _Scratch] = _local.__dict__.setdefault("scratch", {})
    if key not in cache:
        if len(cache) >= 4:
            cache.clear()
        cache[key] = _Scratch()
    return cache[key]


class _Scratch:
    """Named scratch arrays, allocated on first use and reused for every chunk."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def __call__(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = np.empty(shape, dtype=dtype)
        return self._arrays[name]


def _pack_rgb(images: np.ndarray) -> np.ndarray:
    """(N*H*W,) uint32 holding each pixel's R, G, B in its low three bytes, so one
    gather fetches a whole pixel.

    Read as a uint32 view with a 3-byte stride over the raw bytes (the fourth
    byte is the next pixel's red, ignored later): one strided copy, no per-channel
    shuffling. One spare byte at the end keeps the last read in bounds."""
    raw = np.empty(images.size + 1, dtype=np.uint8)
    raw[:-1] = images.reshape(-1)
    count = images.size // 3
    view = np.ndarray((count,), dtype=np.uint32, buffer=raw, strides=(3,))
    return np.ascontiguousarray(view)


def _warp_chunk(
    packed: np.ndarray,
    first: int,
    mats: np.ndarray,
    gains: np.ndarray,
    fill_mode: str,
    out: np.ndarray,
    ws: _Scratch,
) -> None:
    """Resample images first .. first+n-1 into ``out`` (n, H, W, 3)."""
    n, h, w = out.shape[:3]
    shape = (n, h, w)
    hs, ws_ = (h + 2, w + 2) if fill_mode == "constant" else (h, w)  # source size
    fx, fy = _source_coords(mats, h, w, ws("fx", shape, np.float32), ws("fy", shape, np.float32))
    # Per axis: integer index of the lower neighbour (fill mode applied) and
    # the fractional weight, computed in place (fx/fy become the fractions).
    col0, col1 = _neighbours(fx, w, fill_mode, ws("col0", shape, np.intp), ws("col1", shape, np.intp))
    row0, row1 = _neighbours(fy, h, fill_mode, ws("row0", shape, np.intp), ws("row1", shape, np.intp))
    # Flat pixel index: (first + k) * hs * ws + row * ws + col.
    base = ((first + np.arange(n)) * (hs * ws_))[:, None, None]
    for row in (row0, row1):
        row *= ws_
        row += base

    # Gather the 4 neighbours of every output pixel in one take, then spread
    # the packed bytes into channel-planar float32: corners[k] is (3, n, H, W).
    idx = ws("idx", (4, *shape), np.intp)
    for k, (row, col) in enumerate([(row0, col0), (row0, col1), (row1, col0), (row1, col1)]):
        np.add(row, col, out=idx[k])
    pixels = packed.take(idx, out=ws("pixels", (4, *shape), np.uint32), mode="clip")  # indices in range
    # De-interleave as bytes first, then cast contiguously: casting straight
    # from the strided byte view is ~3x slower.
    pixel_bytes = pixels.view(np.uint8).reshape(4, *shape, 4)
    planar = ws("planar", (4, 3, *shape), np.uint8)
    for c in range(3):
        np.copyto(planar[:, c], pixel_bytes[..., c])
    corners = ws("corners", (4, 3, *shape), np.float32)
    np.copyto(corners, planar)
    top, top_right, bottom, bottom_right = corners
    _lerp(top, top_right, fx)
    _lerp(bottom, bottom_right, fx)
    _lerp(top, bottom, fy)
    top *= gains[None, :, None, None]
    _clamp(top, 0.0, 255.0)
    top += 0.5  # round half up: the uint8 cast below truncates
    for c in range(3):  # per-channel strided writes beat one generic transpose copy
        out[..., c] = top[c]


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> None:
    """a += t * (b - a), in place (b is clobbered)."""
    b -= a
    b *= t
    a += b


def _neighbours(
    coord: np.ndarray, size: int, fill_mode: str, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Turn float coordinates into (lower, upper) neighbour indices with the fill
    mode applied; ``coord`` is overwritten with the fractional part."""
    floor = np.floor(coord)
    coord -= floor
    lo[...] = floor
    if fill_mode == "constant":  # shift into the bordered source and clamp onto the border
        np.add(lo, 2, out=hi)
        lo += 1
        _clamp(lo, 0, size + 1)
        _clamp(hi, 0, size + 1)
    else:
        np.add(lo, 1, out=hi)
        _fill_index(lo, size, fill_mode)
        _fill_index(hi, size, fill_mode)
    return lo, hi


def _source_coords(
    mats: np.ndarray, h: int, w: int, src_x: np.ndarray, src_y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Source (x, y) of every output pixel of every image, into (n, H, W) float32 arrays."""
    xs = np.arange(w, dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)
    for r, dst in enumerate((src_x, src_y)):
        per_row = mats[:, r, 1, None] * ys + mats[:, r, 2, None]  # (n, H)
        np.multiply(mats[:, r, 0, None, None], xs, out=dst)
        dst += per_row[:, :, None]
    return src_x, src_y


def _clamp(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """In-place clip via the raw ufuncs (np.clip's Python wrapper costs ~10 us a call)."""
    np.maximum(a, lo, out=a)
    return np.minimum(a, hi, out=a)


def _fill_index(idx: np.ndarray, size: int, fill_mode: str) -> np.ndarray:
    """Map integer pixel indices outside [0, size) back inside, in place."""
    if fill_mode == "nearest":
        _clamp(idx, 0, size - 1)
    elif fill_mode == "wrap":
        np.mod(idx, size, out=idx)
    elif fill_mode == "reflect":  # period 2*size, mirrored half: i -> 2*size-1-i
        np.mod(idx, 2 * size, out=idx)
        np.copyto(idx, 2 * size - 1 - idx, where=idx >= size)
    else:
        raise ValueError(f"fill_mode must be nearest, constant, reflect or wrap, got {fill_mode!r}")
    return idx


# --------------------------------------------------------------------------- Ray Data


class Augmenter:
    """``ds.map_batches(Augmenter(cfg))``: augments ``batch["image"]``.

    Without ``cfg.seed`` every call draws fresh OS entropy: use this for training.
    With a seed, the result is reproducible (same config, same call order, same
    paths -> same pixels) yet differs per call: the stream is seeded from (seed,
    ``salt``, this instance's call counter, a stable hash of ``batch["path"]``).

    Caveat: Ray Data pickles a fresh copy of the instance into every task, and
    re-runs the tasks each epoch, so with a seed the same batch gets the same
    augmentation every epoch unless ``salt`` changes (e.g. the epoch number)."""

    def __init__(self, cfg: AugmentConfig | dict[str, Any], salt: int = 0):
        self.cfg = from_dict(AugmentConfig, cfg) if isinstance(cfg, dict) else cfg
        self.salt = int(salt)
        self.calls = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = batch["image"]
        if images.dtype == object:  # Ray may hand over an object array of H×W×3 arrays
            images = np.stack(list(images))
        rng = self._rng(batch)
        self.calls += 1
        return {**batch, "image": augment_batch(images, self.cfg, rng)}

    def _rng(self, batch: dict[str, np.ndarray]) -> np.random.Generator:
        if self.cfg.seed is None:
            return np.random.default_rng()
        entropy = [int(self.cfg.seed) & 0xFFFFFFFF, self.salt & 0xFFFFFFFF, self.calls]
        if "path" in batch:
            # zlib.crc32, not hash(): str hashes are salted per process.
            joined = "\0".join(str(p) for p in batch["path"]).encode("utf-8", "surrogatepass")
            entropy.append(zlib.crc32(joined))
        return np.random.default_rng(np.random.SeedSequence(entropy))


# --------------------------------------------------------------------------- preview


def preview_grid(image: np.ndarray, cfg: AugmentConfig, n: int = 8, seed: int | None = None):
    """A 1×n matplotlib Figure of augmented copies of one uint8 H×W×3 image."""
    # A bare Figure renders with Agg and never touches pyplot's global backend.
    from matplotlib.figure import Figure

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed if seed is not None else cfg.seed)
    samples = augment_batch(np.repeat(image[None], n, axis=0), cfg, rng)
    h, w = image.shape[:2]
    tile = 2.0  # inches per sample: 8 samples -> a 16-inch strip
    fig = Figure(figsize=(tile * n, tile * h / w))
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1, wspace=0.04)
    for i, ax in enumerate(fig.subplots(1, n, squeeze=False)[0]):
        ax.imshow(samples[i], interpolation="nearest")
        ax.set_axis_off()
    return fig


def save_preview(
    image_uri_or_path: str,
    out_png: str,
    cfg: AugmentConfig,
    n: int = 8,
    image_size: tuple[int, int] | None = None,
    seed: int | None = None,
) -> str:
    """Write the course's 1×n grid of augmented samples of one image as a PNG.

    The image may be a local path or an ``s3://`` URI, and so may ``out_png``.
    ``image_size`` (height, width) defaults to the image's own aspect ratio with
    the longer side 256. Returns the normalised output location."""

    data = storage.read_bytes(image_uri_or_path)
    if image_size is None:
        width, height = image_info(data)[:2]
        scale = 256 / max(width, height)
        image_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    image = decode_image(data, DecodeConfig(image_size=image_size))
    fig = preview_grid(image, cfg, n=n, seed=seed)
    buf = _png_bytes(fig)
    storage.atomic_write(out_png, buf)
    return storage.normalize(out_png)


def _png_bytes(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def describe(cfg: AugmentConfig) -> str:
    """The non-default options, e.g. ``rotation_range=40, horizontal_flip=True``."""
    default = AugmentConfig()
    changed = [
        f"{f.name}={getattr(cfg, f.name)!r}"
        for f in fields(cfg)
        if getattr(cfg, f.name) != getattr(default, f.name)
    ]
    return ", ".join(changed) or "none"
