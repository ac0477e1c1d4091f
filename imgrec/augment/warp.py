"""The vectorised bilinear warp: each output pixel of all N images is mapped into
source coordinates by its image's 2×3 inverse matrix in one go and sampled
bilinearly with fancy indexing (RGB packed into uint32 so each corner is a single
gather), per-image gains folded into the blend. Out-of-image samples follow
``fill_mode``:

``nearest`` (repeat the edge), ``constant`` (``cval``), ``reflect`` (mirror
including the edge pixel: d c b a | a b c d | d c b a), ``wrap`` (periodic
tiling: a b c d | a b c d | a b c d)."""

from __future__ import annotations

import threading

import numpy as np


def scale_pixels(images: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """uint8 images × per-image (N,) or per-channel (N, 3) gains, rounded and clipped."""
    out = images.astype(np.float32)
    out *= _per_channel(gains, len(images))[:, None, None, :]
    return _to_uint8(out)


def _per_channel(gains: np.ndarray, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(gains, dtype=np.float32).reshape(n, -1), (n, 3))


def _to_uint8(values: np.ndarray) -> np.ndarray:
    _clamp(values, 0.0, 255.0)
    values += 0.5  # round half up; values are >= 0, so truncation == floor
    return values.astype(np.uint8)


# Output pixels resampled per step (two 128x128 images): the scratch arrays stay
# a few MB, mostly cache-resident, and are reused across chunks and batches.
# Fresh large temporaries cost a page fault per 4 KB, which used to dominate.
_CHUNK_PIXELS = 1 << 15


def warp(images: np.ndarray, mats: np.ndarray, fill_mode: str, cval: int, gains: np.ndarray) -> np.ndarray:
    """Bilinear resampling of the batch by (N, 2, 3) inverse maps, a few images per
    step, the (N,) or (N, 3) gains folded in."""
    n, h, w = images.shape[:3]
    mats = mats.astype(np.float32)
    gains = _per_channel(gains, n)
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
    top *= gains.T[:, :, None, None]  # top is (3, n, H, W)
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
