"""RandAugment's colour ops on uint8 pixels, vectorised over the images that chose
them: ``(k, H, W, 3)`` uint8 in, uint8 of the same shape out, one per-image value
(a ``(k,)`` array) where the op has a magnitude. PIL's semantics
(``ImageEnhance``, ``ImageOps``), with each op's result rounded and clipped to
0..255 before the next op; PIL truncates its blends and its autocontrast table
instead, so these agree with PIL within one grey level (posterize, solarize,
equalize and PIL's greyscale exactly)."""

from __future__ import annotations

import numpy as np


def color(images: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Saturation: blend with the image's greyscale (``ImageEnhance.Color``); 0 is grey, 1 the image."""
    return _blend(grey(images)[..., None], images, factors)


def contrast(images: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Blend with the mean grey level of each image, rounded as PIL does (``ImageEnhance.Contrast``)."""
    mean = np.floor(grey(images).mean(axis=(1, 2)) + 0.5)
    return _blend(mean.astype(np.float32)[:, None, None, None], images, factors)


def sharpness(images: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Blend with the image smoothed by [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, its border pixels
    unchanged (``ImageEnhance.Sharpness``); a factor > 1 sharpens."""
    k, h, w = images.shape[:3]
    smooth = images.copy()
    if h >= 3 and w >= 3:
        x = images.astype(np.int16)  # 13 x 255 fits
        rows = x[:, :-2] + x[:, 1:-1] + x[:, 2:]
        window = rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]  # the 3x3 sum, interior pixels
        window += 4 * x[:, 1:-1, 1:-1]
        window += 6  # round half up: (s + 6) // 13
        smooth[:, 1:-1, 1:-1] = window // 13
    return _blend(smooth, images, factors)


def posterize(images: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Keep the top ``bits`` (0..8) bits of every channel (``ImageOps.posterize``)."""
    masks = (0xFF << (8 - np.asarray(bits, dtype=np.int64))) & 0xFF
    return images & masks.astype(np.uint8)[:, None, None, None]


def solarize(images: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Invert every channel value >= the image's threshold (``ImageOps.solarize``)."""
    at = images >= np.asarray(thresholds, dtype=np.float32)[:, None, None, None]
    return np.where(at, 255 - images, images)


def autocontrast(images: np.ndarray, _values: np.ndarray | None = None) -> np.ndarray:
    """Stretch each channel of each image from its min..max to 0..255 (``ImageOps.autocontrast``);
    a channel with max == min is left alone."""
    index, hist = _histograms(images)
    levels = np.arange(256)
    present = hist > 0
    lo = np.argmax(present, axis=1)[:, None]  # min/max from the histograms: reductions over
    hi = 255 - np.argmax(present[:, ::-1], axis=1)[:, None]  # (H, W) of uint8 are far slower
    scale = 255.0 / np.maximum(hi - lo, 1)
    lut = np.where(hi > lo, np.clip(np.floor((levels - lo) * scale + 0.5), 0, 255), levels)
    return _lookup(lut, index)


def equalize(images: np.ndarray, _values: np.ndarray | None = None) -> np.ndarray:
    """Histogram equalisation of each channel of each image, PIL's algorithm
    (``ImageOps.equalize``), every (image, channel) histogram from one bincount."""
    index, hist = _histograms(images)
    h, w = images.shape[1:3]
    top = 255 - np.argmax(hist[:, ::-1] > 0, axis=1)  # each plane's highest value
    step = (h * w - hist[np.arange(len(hist)), top]) // 256  # PIL: (total - the last nonzero bin) // 256
    below = np.cumsum(hist, axis=1) - hist  # pixels below each value
    lut = (step[:, None] // 2 + below) // np.maximum(step, 1)[:, None]
    lut = np.where(step[:, None] > 0, np.minimum(lut, 255), np.arange(256))  # step 0: unchanged
    return _lookup(lut, index)


def _histograms(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's bin among all (image, channel) planes' 256, and the (k·3, 256) histograms."""
    k = len(images)
    planes = (np.arange(k * 3, dtype=np.int32) * 256).reshape(k, 1, 1, 3)
    index = images + planes
    return index, np.bincount(index.reshape(-1), minlength=k * 3 * 256).reshape(k * 3, 256)


def _lookup(lut: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Per-plane lookup tables (k·3, 256) applied to ``_histograms``' bins: uint8 images."""
    return lut.astype(np.uint8).reshape(-1).take(index)


def grey(images: np.ndarray) -> np.ndarray:
    """(k, H, W) uint8 luminance, as PIL's ``convert("L")``: L = 0.299 R + 0.587 G + 0.114 B, rounded."""
    rgb = images.astype(np.int32)
    luma = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000
    return (luma >> 16).astype(np.uint8)


def _blend(degenerate: np.ndarray, images: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """degenerate + factor x (images - degenerate), per image, rounded and clipped (``Image.blend``)."""
    base = np.asarray(degenerate, dtype=np.float32)
    out = images.astype(np.float32)
    out -= base
    out *= np.asarray(factors, dtype=np.float32)[:, None, None, None]
    out += base
    return _round_clip(out)


def _round_clip(values: np.ndarray) -> np.ndarray:
    np.clip(values, 0.0, 255.0, out=values)
    values += 0.5  # round half up: values are >= 0, so the cast's truncation is floor
    return values.astype(np.uint8)
