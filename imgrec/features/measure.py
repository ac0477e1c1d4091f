"""The hand-made features of one image, or a batch: brightness, colour, the main
object's extent, edges, gradient orientation; every one a number with a meaning."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HIST_BINS = 8  # per colour channel
ORIENTATION_BINS = 8  # gradient directions over 0-180 degrees
# A pixel is on an edge when the (lightly smoothed) grey level changes faster
# than this many levels per pixel: well above sensor noise, well below any
# object outline worth the name.
EDGE_THRESHOLD = 12.0
# The object must differ from the background by at least this much (Euclidean
# RGB distance) however the Otsu threshold falls: on a plain image Otsu would
# otherwise split the noise in two and "find" an object everywhere.
MIN_OBJECT_CONTRAST = 24.0
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as the eye weighs colours

FEATURE_GROUPS: dict[str, list[str]] = {
    "brightness": ["brightness"],
    "color": [f"hist_{c}{i}" for c in "rgb" for i in range(HIST_BINS)],
    "extent": ["object_height", "object_width", "object_fraction"],
    "edges": ["edge_density"],
    "orientation": [f"orientation_{round(180 * i / ORIENTATION_BINS):03d}" for i in range(ORIENTATION_BINS)],
}
FEATURE_NAMES: list[str] = [name for group in FEATURE_GROUPS.values() for name in group]
# The course's two: how bright the picture is, how tall the animal stands.
COURSE_FEATURES = ("brightness", "object_height")
FEATURE_HELP = {
    "brightness": "mean grey level of the image, 0-255",
    "color": f"{HIST_BINS}-bin histogram of each of R, G, B (fraction of pixels per bin)",
    "extent": "main object's bounding box height and width (fractions of the image's) and area fraction",
    "edges": f"fraction of pixels where the grey level changes by more than {EDGE_THRESHOLD:g} per pixel",
    "orientation": f"{ORIENTATION_BINS}-bin histogram of gradient directions (0-180 deg), weighted by strength",
}


class FeatureError(ValueError):
    """A feature request or input that cannot work; the message says what to give instead."""


@dataclass(frozen=True)
class ObjectBox:
    """The main object's bounding box in pixels, and its share of the image's pixels."""

    top: int
    left: int
    height: int
    width: int
    fraction: float


def extract_features(image: np.ndarray) -> np.ndarray:
    """The ``FEATURE_NAMES`` vector (float32) of one uint8 H×W×3 image."""
    return extract_features_batch(_as_batch(image))[0]


def extract_features_batch(images: np.ndarray) -> np.ndarray:
    """``(N, len(FEATURE_NAMES))`` float32 features of uint8 N×H×W×3 images, vectorised
    over the batch (the shape Ray Data's ``map_batches`` hands over)."""
    images = _check_images(images)
    if len(images) == 0:
        return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)
    grey = images.astype(np.float32) @ _LUMA
    boxes = _object_boxes(images)
    h, w = images.shape[1:3]
    density, orientation = _edges(grey)
    columns = [
        grey.mean(axis=(1, 2))[:, None],
        _colour_histograms(images),
        np.stack([boxes[:, 2] / h, boxes[:, 3] / w, boxes[:, 4]], axis=1),
        density[:, None],
        orientation,
    ]
    return np.concatenate(columns, axis=1).astype(np.float32)


def object_box(image: np.ndarray) -> ObjectBox:
    """Where the main object is: foreground pixels differ from the background colour
    (estimated from the image border) by more than an Otsu threshold."""
    top, left, height, width, fraction = _object_boxes(_as_batch(image))[0]
    return ObjectBox(int(top), int(left), int(height), int(width), float(fraction))


def _as_batch(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3:
        raise FeatureError(f"expected one uint8 image of shape (H, W, 3), got shape {image.shape}")
    return image[None]


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise FeatureError(f"expected uint8 images of shape (N, H, W, 3), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise FeatureError(f"expected uint8 pixels 0-255, got {images.dtype}; features are defined on raw pixels")
    if min(images.shape[1:3]) < 3:
        raise FeatureError(f"images must be at least 3x3 pixels, got {images.shape[1:3]}")
    return images


def _per_image_bincount(bins: np.ndarray, n_bins: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Histogram of each image's ``bins`` (N×...) with one bincount: image i uses
    slots i*n_bins .. (i+1)*n_bins-1."""
    n = len(bins)
    offsets = (np.arange(n, dtype=np.int64) * n_bins).reshape((n,) + (1,) * (bins.ndim - 1))
    flat = (bins.astype(np.int64) + offsets).ravel()
    counts = np.bincount(flat, weights=None if weights is None else weights.ravel(), minlength=n * n_bins)
    return counts.reshape(n, n_bins).astype(np.float64)


def _colour_histograms(images: np.ndarray) -> np.ndarray:
    n = len(images)
    bins = images >> (8 - int(math.log2(HIST_BINS)))  # 0..255 -> 0..HIST_BINS-1
    # Channel c of image i becomes "image" 3*i + c of the bincount.
    per_channel = np.moveaxis(bins, -1, 1).reshape(n * 3, -1)
    counts = _per_image_bincount(per_channel, HIST_BINS)
    counts /= per_channel.shape[1]
    return counts.reshape(n, 3 * HIST_BINS)  # r0..r7, g0..g7, b0..b7


def _foreground(images: np.ndarray) -> np.ndarray:
    """Boolean N×H×W masks of what is not background."""
    pixels = images.astype(np.float32)
    border = np.concatenate(
        [pixels[:, 0], pixels[:, -1], pixels[:, 1:-1, 0], pixels[:, 1:-1, -1]], axis=1
    )  # N×B×3
    # The median border colour: a subject touching one edge barely moves it.
    background = np.median(border, axis=1)
    distance = np.sqrt(((pixels - background[:, None, None, :]) ** 2).sum(axis=-1))
    border_distance = np.sqrt(((border - background[:, None, :]) ** 2).sum(axis=-1))
    # Not below what the border itself varies by (noise, a gradient sky), nor below a fixed minimum.
    floor = np.maximum(3.0 * np.median(border_distance, axis=1), MIN_OBJECT_CONTRAST)
    threshold = np.maximum(_otsu(distance), floor)
    return _majority_3x3(distance > threshold[:, None, None])


def _otsu(values: np.ndarray, levels: int = 256) -> np.ndarray:
    """Per image, the threshold that best splits ``values`` (N×H×W) into two
    groups (Otsu: maximal between-group variance), vectorised over N."""
    n = len(values)
    top = values.reshape(n, -1).max(axis=1)
    scale = np.where(top > 0, (levels - 1e-3) / np.maximum(top, 1e-6), 0.0)
    q = (values * scale[:, None, None]).astype(np.int64)
    p = _per_image_bincount(q, levels)
    p /= p.sum(axis=1, keepdims=True)
    omega = np.cumsum(p, axis=1)  # share of pixels at or below each level
    mu = np.cumsum(p * np.arange(levels), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[:, -1:] * omega - mu) ** 2 / (omega * (1.0 - omega))
    between = np.nan_to_num(between, nan=-1.0, posinf=-1.0)
    t = between.argmax(axis=1)
    # Back to the distance scale: everything above the upper edge of level t is foreground.
    return np.where(top > 0, (t + 1) / np.maximum(scale, 1e-12), np.inf)


def _majority_3x3(mask: np.ndarray) -> np.ndarray:
    """Keep a pixel when most of its 3×3 neighbourhood agrees: drops isolated
    noise pixels, keeps every edge row and column of a solid object (only its
    four corner pixels go), so bounding boxes stay exact."""
    h, w = mask.shape[1:]
    padded = np.pad(mask.astype(np.uint8), ((0, 0), (1, 1), (1, 1)))
    votes = sum(padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    return votes >= 5


def _object_boxes(images: np.ndarray) -> np.ndarray:
    """``(N, 5)``: top, left, height, width (pixels) and area fraction of each image's
    foreground; all zero when nothing stands out from the background."""
    mask = _foreground(images)
    out = np.zeros((len(images), 5), dtype=np.float64)
    for axis, (start_col, size_col) in ((2, (0, 2)), (1, (1, 3))):
        present = mask.any(axis=axis)  # rows (axis=2) or columns (axis=1) the object touches
        found = present.any(axis=1)
        first = present.argmax(axis=1)
        last = present.shape[1] - 1 - present[:, ::-1].argmax(axis=1)
        out[:, start_col] = np.where(found, first, 0)
        out[:, size_col] = np.where(found, last - first + 1, 0)
    out[:, 4] = mask.mean(axis=(1, 2))
    return out


def _edges(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge density and the strength-weighted histogram of gradient directions."""
    # A [1 2 1] smoothing first: pixel noise should not count as texture.
    g = grey.copy()
    g[:, 1:-1] = (grey[:, :-2] + 2 * grey[:, 1:-1] + grey[:, 2:]) / 4
    s = g.copy()
    s[:, :, 1:-1] = (g[:, :, :-2] + 2 * g[:, :, 1:-1] + g[:, :, 2:]) / 4
    gx = (s[:, 1:-1, 2:] - s[:, 1:-1, :-2]) / 2  # grey levels per pixel
    gy = (s[:, 2:, 1:-1] - s[:, :-2, 1:-1]) / 2
    magnitude = np.hypot(gx, gy)
    strong = magnitude > EDGE_THRESHOLD
    density = strong.mean(axis=(1, 2))
    # Direction modulo 180 degrees: a dark-to-light edge and a light-to-dark one
    # along the same line count alike. Bins are centred on 0, 22.5, 45, ... so an
    # exactly horizontal or vertical edge falls in the middle of one bin.
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    bins = np.floor(angle / np.pi * ORIENTATION_BINS + 0.5).astype(np.int64) % ORIENTATION_BINS
    hist = _per_image_bincount(bins, ORIENTATION_BINS, weights=magnitude * strong)
    total = hist.sum(axis=1, keepdims=True)
    # No edges at all: no preferred direction, a flat histogram.
    hist = np.where(total > 0, hist / np.maximum(total, 1e-12), 1.0 / ORIENTATION_BINS)
    return density, hist


def resolve_features(features: str | Sequence[str] | None) -> list[str]:
    """Feature names from names and/or group names (``None``: all), in ``FEATURE_NAMES`` order.

    ``"brightness,extent"``, ``["brightness", "object_height"]`` and ``"course"``
    (the course's brightness × object height) all work."""
    if features is None:
        return list(FEATURE_NAMES)
    if isinstance(features, str):
        features = [f.strip() for f in features.split(",") if f.strip()]
    wanted: set[str] = set()
    for name in features:
        if name == "all":
            wanted.update(FEATURE_NAMES)
        elif name == "course":
            wanted.update(COURSE_FEATURES)
        elif name in FEATURE_GROUPS:
            wanted.update(FEATURE_GROUPS[name])
        elif name in FEATURE_NAMES:
            wanted.add(name)
        else:
            raise FeatureError(
                f"unknown feature {name!r}; give names from {FEATURE_NAMES} or groups "
                f"{sorted(FEATURE_GROUPS)} (or 'course', 'all')"
            )
    if not wanted:
        raise FeatureError("no features selected; give at least one name or group, or None for all")
    return [name for name in FEATURE_NAMES if name in wanted]
