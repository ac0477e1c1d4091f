"""The classic recognition before CNNs: measure hand-made features of each image,
then learn a linear decision boundary between the classes.

The course's example tells cats from dogs by how bright the picture is and how
tall the animal stands. That works when the classes really differ in such
measurable ways, and fails when they do not; this module makes both visible::

    from imgrec import features

    result = features.train_baseline("s3://bucket/animals", out="s3://bucket/baseline")
    print(result.summary())        # test accuracy, per class, and an honest verdict

Smaller pieces, for a closer look::

    features.extract_features(image)               # one uint8 HxWx3 image -> (F,) vector
    features.object_box(image)                     # where the main object is
    table = features.extract_tree_features(uri)    # every image of a tree, with Ray Data
    features.train_baseline(table, features=["brightness", "extent"])   # no re-decoding

Every feature is a number with a meaning (``FEATURE_NAMES``); sizes are
fractions of the image, so they do not depend on the decode size.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgrec import checkpoint, storage
from imgrec.config import DecodeConfig
from imgrec.data import DataError, DecodeImages, list_image_tree, split_records
from imgrec.layout import BaselineLayout, RunLayout
from imgrec.report import render_html
from imgrec.runtime import ensure_ray

# --------------------------------------------------------------------------- the features

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


# --------------------------------------------------------------------------- a whole tree, with Ray Data


@dataclass
class FeatureTable:
    """Every image's features, in memory (a few dozen floats per image), with labels
    and where each image came from. Extract once, try many feature sets."""

    source: str
    class_names: list[str]
    features: np.ndarray  # (N, len(FEATURE_NAMES)) float32
    labels: np.ndarray  # (N,) int64
    paths: list[str]
    rels: list[str]  # "cat/001.jpg": what the validation split hashes
    splits: np.ndarray  # (N,) "train" | "test"
    image_size: tuple[int, int]
    bad_files: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}

    def columns(self, names: Sequence[str]) -> np.ndarray:
        return self.features[:, [FEATURE_NAMES.index(n) for n in names]]

    def __len__(self) -> int:
        return len(self.labels)


def _features_udf(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data UDF after ``DecodeImages``: pixels in, a few floats out, so only the
    features (never the pixels) travel back to the driver. Bad rows get NaNs."""
    images, errors = batch["image"], batch["error"]
    ok = np.array([not e for e in errors], dtype=bool)
    feats = np.full((len(images), len(FEATURE_NAMES)), np.nan, dtype=np.float32)
    if ok.any():
        feats[ok] = extract_features_batch(images[ok])
    return {"index": batch["index"], "error": errors, "features": feats}


def extract_tree_features(
    data_uri: str,
    *,
    image_size: tuple[int, int] = (64, 64),
    decode: DecodeConfig | None = None,
    limit_per_class: int | None = None,
    rows_per_block: int = 256,
) -> FeatureTable:
    """Decode every image of a class-per-folder tree (``<root>/train/<class>/*``,
    ``<root>/test/<class>/*``; local or S3) and measure its features with Ray Data.

    Files that cannot be read or decoded, like those outside class folders, are
    skipped and listed in ``bad_files`` — one bad file never stops the run."""
    import ray


    decode = decode or DecodeConfig(image_size=image_size)
    tree = list_image_tree(data_uri)
    train = _limit(tree.train, limit_per_class)
    records = [
        {"path": r["path"], "label": r["label"], "index": i}
        for i, r in enumerate(train + tree.test)
    ]
    meta = [(r["rel"], "train") for r in train] + [(r["rel"], "test") for r in tree.test]

    ensure_ray()
    n_blocks = max(1, min(200, len(records) // rows_per_block + 1))
    ds = ray.data.from_items(records, override_num_blocks=n_blocks)
    ds = ds.map_batches(DecodeImages(decode), batch_size=64, batch_format="numpy")
    ds = ds.map_batches(_features_udf, batch_size=64, batch_format="numpy")

    n = len(records)
    feats = np.full((n, len(FEATURE_NAMES)), np.nan, dtype=np.float32)
    errors = [""] * n
    for batch in ds.iter_batches(batch_size=1024, batch_format="numpy"):
        idx = batch["index"].astype(np.int64)
        feats[idx] = batch["features"]
        for i, err in zip(idx, batch["error"], strict=True):
            errors[i] = str(err or "")

    bad = list(tree.skipped) + [{"path": records[i]["path"], "reason": errors[i]} for i in range(n) if errors[i]]
    good = np.array([not e for e in errors], dtype=bool)
    if not good[: len(train)].any():
        raise DataError(f"{tree.root}: no training image could be decoded; first problems: {bad[:3]}")
    keep = np.flatnonzero(good)
    return FeatureTable(
        source=tree.root,
        class_names=list(tree.class_names),
        features=feats[keep],
        labels=np.array([records[i]["label"] for i in keep], dtype=np.int64),
        paths=[records[i]["path"] for i in keep],
        rels=[meta[i][0] for i in keep],
        splits=np.array([meta[i][1] for i in keep]),
        image_size=tuple(decode.image_size),
        bad_files=bad,
    )


def _limit(records: list[dict], per_class: int | None) -> list[dict]:
    if not per_class:
        return list(records)
    seen: dict[int, int] = {}
    out = []
    for r in records:
        seen[r["label"]] = seen.get(r["label"], 0) + 1
        if seen[r["label"]] <= per_class:
            out.append(r)
    return out


# --------------------------------------------------------------------------- the linear classifier


@dataclass
class LinearClassifier:
    """Multinomial logistic (softmax) regression on standardised features, with an
    L2 penalty on the weights: one straight-line boundary between each pair of classes."""

    feature_names: list[str]
    class_names: list[str]
    mean: np.ndarray  # (F,) the standardiser: z = (x - mean) / scale
    scale: np.ndarray  # (F,)
    weights: np.ndarray  # (F, K), on standardised features
    bias: np.ndarray  # (K,)
    l2: float = 1e-3
    iterations: int = 0

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        *,
        feature_names: Sequence[str],
        class_names: Sequence[str],
        l2: float = 1e-3,
        max_iter: int = 3000,
        tol: float = 1e-6,
    ) -> LinearClassifier:
        """Full-batch accelerated gradient descent on the mean cross-entropy + l2/2·|W|².

        The problem is convex and the features fit in memory, so this converges
        to the one optimum: deterministic, no learning rate to tune."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        k = len(class_names)
        if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
            raise FeatureError(f"need features (N, F) and N labels with N > 0, got {x.shape} and {y.shape}")
        if l2 < 0:
            raise FeatureError(f"l2 must be >= 0, got {l2}")
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < 1e-12] = 1.0  # a constant feature: leave it at zero, never divide by zero
        z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])  # last column: the bias
        onehot = np.eye(k)[y]
        # Softmax cross-entropy has curvature <= 1/2 * largest eigenvalue of zᵀz/n:
        # its inverse is a step size that never overshoots.
        lipschitz = 0.5 * np.linalg.norm(z, 2) ** 2 / len(z) + l2
        step = 1.0 / lipschitz
        penalty = np.ones((z.shape[1], 1))
        penalty[-1] = 0.0  # the bias is not shrunk

        def gradient(theta: np.ndarray) -> np.ndarray:
            return z.T @ (_softmax(z @ theta) - onehot) / len(z) + l2 * penalty * theta

        theta = np.zeros((z.shape[1], k))
        lookahead, momentum, it = theta, 1.0, 0
        for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
            g = gradient(lookahead)
            if np.abs(g).max() < tol:
                theta = lookahead  # converged here: this is the optimum
                break
            new = lookahead - step * g
            next_momentum = (1 + math.sqrt(1 + 4 * momentum**2)) / 2
            lookahead = new + (momentum - 1) / next_momentum * (new - theta)
            theta, momentum = new, next_momentum
        return cls(
            feature_names=list(feature_names),
            class_names=list(class_names),
            mean=mean,
            scale=scale,
            weights=theta[:-1],
            bias=theta[-1],
            l2=float(l2),
            iterations=it,
        )

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return z @ self.weights + self.bias

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return _softmax(self.decision_function(x))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.decision_function(x).argmax(axis=1)

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Class indices of uint8 N×H×W×3 images."""
        feats = extract_features_batch(images)[:, [FEATURE_NAMES.index(n) for n in self.feature_names]]
        return self.predict(feats)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_names": self.feature_names,
            "class_names": self.class_names,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
            "bias": self.bias.tolist(),
            "l2": self.l2,
            "iterations": self.iterations,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearClassifier:
        arrays = {k: np.asarray(data[k], dtype=np.float64) for k in ("mean", "scale", "weights", "bias")}
        return cls(
            feature_names=list(data["feature_names"]),
            class_names=list(data["class_names"]),
            l2=float(data.get("l2", 0.0)),
            iterations=int(data.get("iterations", 0)),
            **arrays,
        )


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- verdicts


# "Clearly above chance": at least this much better than always guessing the
# most common class, and unlikely to be luck (one-sided binomial test).
MARGIN = 0.15
P_VALUE = 0.01
GOOD_ACCURACY = 0.95


def binomial_p_value(correct: int, n: int, chance: float) -> float:
    """P(at least ``correct`` of ``n`` right by guessing with success rate ``chance``)."""
    if n <= 0 or correct <= 0:
        return 1.0
    if chance <= 0:
        return 0.0
    if chance >= 1:
        return 1.0
    log_p, log_q = math.log(chance), math.log1p(-chance)
    terms = [
        math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q
        for k in range(correct, n + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def judge(accuracy: float, chance: float, n: int) -> tuple[bool, str, float]:
    """``(separated, verdict, p_value)`` for an accuracy measured on ``n`` held-out images."""
    p = binomial_p_value(round(accuracy * n), n, chance)
    numbers = f"accuracy {accuracy:.2f} vs chance {chance:.2f} on {n} images"
    if accuracy < chance + MARGIN or p >= P_VALUE:
        return False, f"hand-made features do not separate these classes: {numbers} — try a CNN", p
    if accuracy >= GOOD_ACCURACY:
        return True, f"hand-made features separate these classes: {numbers}", p
    return True, f"hand-made features partly separate these classes: {numbers} — a CNN should do better", p


# --------------------------------------------------------------------------- the baseline


@dataclass
class BaselineResult:
    """What ``train_baseline`` measured and learned."""

    source: str
    class_names: list[str]
    features: list[str]
    split: str  # what accuracy was measured on: "test" (the test tree) or "val" (held out of train)
    accuracy: float
    chance: float  # accuracy of always guessing the most common class
    p_value: float
    separated: bool
    verdict: str
    per_class_accuracy: dict[str, float]
    confusion: list[list[int]]
    counts: dict[str, int]
    model: LinearClassifier
    train_accuracy: float
    plot: dict[str, Any]  # {"features": [x, y], "accuracy": 2-feature accuracy, "model": ...}
    bad_files: list[dict[str, str]] = field(default_factory=list)
    cnn: dict[str, Any] | None = None  # {"accuracy", "count", "split", "source"}
    outputs: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"baseline on {self.source}: {len(self.class_names)} classes, "
            f"{len(self.features)} feature(s), train {self.counts['train']}, {self.split} {self.counts[self.split]}",
            f"  {self.split} accuracy {self.accuracy:.4f} (chance {self.chance:.4f}, train {self.train_accuracy:.4f})",
            "  per class: " + ", ".join(f"{c} {a:.2f}" for c, a in self.per_class_accuracy.items()),
        ]
        if self.cnn:
            lines.append(
                f"  side by side: baseline {self.accuracy:.4f} ({self.split}, {self.counts[self.split]} images) | "
                f"CNN {self.cnn['accuracy']:.4f} ({self.cnn.get('split', '?')}, {self.cnn.get('count', '?')} images)"
                f"  [{self.cnn['source']}]"
            )
            if self.cnn.get("warning"):
                lines.append(f"  note: {self.cnn['warning']}")
        if self.bad_files:
            lines.append(f"  skipped {len(self.bad_files)} bad file(s), e.g. {self.bad_files[0]['path']}: "
                         f"{self.bad_files[0]['reason']}")
        lines.append(f"  verdict: {self.verdict}")
        for name, uri in self.outputs.items():
            lines.append(f"  {name}: {uri}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "class_names": self.class_names,
            "features": self.features,
            "split": self.split,
            "accuracy": self.accuracy,
            "chance": self.chance,
            "p_value": self.p_value,
            "separated": self.separated,
            "verdict": self.verdict,
            "train_accuracy": self.train_accuracy,
            "per_class_accuracy": self.per_class_accuracy,
            "confusion": self.confusion,
            "counts": self.counts,
            "plot": {"features": self.plot["features"], "accuracy": self.plot["accuracy"]},
            "cnn": self.cnn,
            "bad_files": self.bad_files,
            "model": self.model.to_dict(),
        }


def train_baseline(
    data: str | FeatureTable,
    *,
    features: str | Sequence[str] | None = None,
    image_size: tuple[int, int] = (64, 64),
    validation_split: float = 0.3,
    split_seed: int = 0,
    l2: float = 1e-3,
    plot_features: Sequence[str] = COURSE_FEATURES,
    out: str | None = None,
    cnn_run: str | None = None,
) -> BaselineResult:
    """Hand-made features + logistic regression on an image tree (URI) or an
    already extracted ``FeatureTable``.

    Accuracy is measured on the tree's ``test/`` images, or, without them, on a
    ``validation_split`` held out of ``train/`` (the same hash split as CNN
    training). With ``out``, writes ``baseline.json``, ``decision_boundary.png``
    and ``baseline.html`` there; with ``cnn_run``, reads that CNN run's result
    for a side-by-side comparison."""
    names = resolve_features(features)
    plot_names = list(plot_features)
    if len(plot_names) != 2 or any(n not in FEATURE_NAMES for n in plot_names):
        raise FeatureError(f"plot_features must be two names from {FEATURE_NAMES}, got {plot_features!r}")
    # The CNN side first: a wrong --cnn-run should fail before minutes of decoding.
    source = data.source if isinstance(data, FeatureTable) else storage.normalize(data)
    cnn = read_cnn_result(cnn_run, data_uri=source) if cnn_run else None
    table = data if isinstance(data, FeatureTable) else extract_tree_features(data, image_size=image_size)
    fit_rows, eval_rows, split = _split_rows(table, validation_split, split_seed)

    k = len(table.class_names)
    x = table.columns(names)
    y = table.labels
    model = LinearClassifier.fit(x[fit_rows], y[fit_rows], feature_names=names,
                                 class_names=table.class_names, l2=l2)
    pred = model.predict(x[eval_rows])
    truth = y[eval_rows]
    accuracy = float((pred == truth).mean())
    chance = float(np.bincount(truth, minlength=k).max() / len(truth))
    separated, verdict, p = judge(accuracy, chance, len(truth))
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (truth, pred), 1)
    per_class = {
        name: float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else float("nan")
        for i, name in enumerate(table.class_names)
    }

    # The picture gets its own 2-feature model: a boundary drawn in 2-D must be one fitted in 2-D.
    xy = table.columns(plot_names)
    plot_model = LinearClassifier.fit(xy[fit_rows], y[fit_rows], feature_names=plot_names,
                                      class_names=table.class_names, l2=l2)
    plot_acc = float((plot_model.predict(xy[eval_rows]) == truth).mean())

    result = BaselineResult(
        source=table.source,
        class_names=list(table.class_names),
        features=names,
        split=split,
        accuracy=accuracy,
        chance=chance,
        p_value=p,
        separated=separated,
        verdict=verdict,
        per_class_accuracy=per_class,
        confusion=confusion.tolist(),
        counts={"train": int(len(fit_rows)), split: int(len(eval_rows))},
        model=model,
        train_accuracy=float((model.predict(x[fit_rows]) == y[fit_rows]).mean()),
        plot={"features": plot_names, "accuracy": plot_acc, "model": plot_model, "x": xy, "y": y, "fit_rows": fit_rows, "eval_rows": eval_rows},
        bad_files=list(table.bad_files),
        cnn=cnn,
    )
    if out:
        result.outputs = write_report(result, out)
    return result


def _split_rows(table: FeatureTable, validation_split: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Row indices to fit on and to measure on: the test tree, else a held-out part of train."""

    is_test = table.splits == "test"
    train_idx = np.flatnonzero(~is_test)
    if is_test.any():
        return train_idx, np.flatnonzero(is_test), "test"
    if validation_split <= 0:
        raise FeatureError(
            f"{table.source}: no test/ images and validation_split=0: nothing to measure accuracy on; "
            "add <root>/test/<class>/ images or give validation_split > 0"
        )
    records = [{"rel": table.rels[i], "label": int(table.labels[i]), "row": i} for i in train_idx]
    fit, held = split_records(records, validation_split, seed)
    if not held:
        raise FeatureError(f"{table.source}: too few images to hold out a validation split; add images")
    return np.array([r["row"] for r in fit]), np.array([r["row"] for r in held]), "val"


# --------------------------------------------------------------------------- CNN comparison


def read_cnn_result(run_uri: str, *, data_uri: str | None = None) -> dict[str, Any]:
    """A CNN run's held-out accuracy: its ``evaluation.json`` (written by
    ``imgrec.evaluate.evaluate_run``), else its best checkpoint's ``val_accuracy``."""

    run_uri = storage.normalize(run_uri)
    evaluation = RunLayout(run_uri).evaluation
    if storage.exists(evaluation):
        metrics = json.loads(storage.read_text(evaluation))
        if "accuracy" not in metrics:
            raise FeatureError(f"{evaluation}: has no 'accuracy'; is it an imgrec evaluation?")
        result = {"accuracy": float(metrics["accuracy"]), "count": metrics.get("count"),
                  "split": metrics.get("split", "test"), "source": evaluation}
        trained_on = _cnn_data_uri(metrics["checkpoint"]) if metrics.get("checkpoint") else None
    else:
        try:
            ref = checkpoint.resolve(run_uri, "best")
        except checkpoint.CheckpointError as exc:
            raise FeatureError(f"--cnn-run {run_uri}: no evaluation.json and no usable checkpoint ({exc})") from None
        score = ref.manifest.get("metrics", {}).get("val_accuracy")
        if score is None:
            raise FeatureError(f"{ref.uri}: the checkpoint records no val_accuracy and the run no evaluation.json")
        data = ref.manifest.get("data", {})
        result = {"accuracy": float(score), "count": data.get("counts", {}).get("val"), "split": "val",
                  "source": ref.uri}
        trained_on = data.get("uri")
    # Comparing accuracies on different data would be meaningless: say so when we can tell.
    if data_uri and trained_on and trained_on != "cifar10" and storage.normalize(trained_on) != storage.normalize(data_uri):
        result["warning"] = f"the CNN was trained on {trained_on}, the baseline on {data_uri}"
    return result


def _cnn_data_uri(checkpoint_uri: str) -> str | None:

    try:
        return checkpoint.read_manifest(checkpoint_uri).get("data", {}).get("uri")
    except Exception:  # the comparison still stands without the provenance check
        return None


# --------------------------------------------------------------------------- plot and report


def decision_boundary_png(result: BaselineResult) -> bytes:
    """The course's picture: two features as axes, one dot per image coloured by
    class, and the regions a 2-feature linear classifier assigns to each class."""
    import io

    from matplotlib.figure import Figure  # Agg, without touching pyplot's global state

    plot = result.plot
    xname, yname = plot["features"]
    xy, labels, model = plot["x"], plot["y"], plot["model"]
    k = len(result.class_names)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    pad = np.maximum((hi - lo) * 0.06, 1e-3)
    gx, gy = np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], 300),
                         np.linspace(lo[1] - pad[1], hi[1] + pad[1], 300))
    regions = model.predict(np.column_stack([gx.ravel(), gy.ravel()])).reshape(gx.shape)

    fig = Figure(figsize=(7, 5.5))
    ax = fig.subplots()
    colours = [f"C{i % 10}" for i in range(k)]
    ax.contourf(gx, gy, regions, levels=np.arange(k + 1) - 0.5, colors=colours, alpha=0.15)
    if k > 1:
        ax.contour(gx, gy, regions, levels=np.arange(k - 1) + 0.5, colors="black", linewidths=1.2)
    for rows, marker, split in ((plot["fit_rows"], "o", "train"), (plot["eval_rows"], "^", result.split)):
        for i, name in enumerate(result.class_names):
            sel = rows[labels[rows] == i]
            ax.scatter(xy[sel, 0], xy[sel, 1], s=14, marker=marker, color=colours[i], alpha=0.75,
                       edgecolors="white", linewidths=0.3, label=f"{name} ({split})")
    ax.set_xlabel(_axis_label(xname))
    ax.set_ylabel(_axis_label(yname))
    n_eval = len(plot["eval_rows"])
    alone = "" if judge(plot["accuracy"], result.chance, n_eval)[0] else " (no better than chance)"
    ax.set_title(f"{xname} × {yname}: linear boundary, {result.split} accuracy {plot['accuracy']:.2f}{alone}\n"
                 f"(all {len(result.features)} features: {result.accuracy:.2f}, chance {result.chance:.2f})",
                 fontsize=10)
    ax.legend(fontsize=7, loc="best", ncol=2 if k > 3 else 1)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _axis_label(name: str) -> str:
    units = {"brightness": "brightness (mean grey level, 0-255)",
             "object_height": "object height (fraction of image height)",
             "object_width": "object width (fraction of image width)",
             "object_fraction": "object area (fraction of image)"}
    return units.get(name, name)


def write_report(result: BaselineResult, out: str) -> dict[str, str]:
    """Write ``baseline.json``, ``decision_boundary.png`` and ``baseline.html`` under
    ``out`` (a local folder or ``s3://`` prefix). Returns their URIs."""

    out = storage.normalize(out)
    if storage.is_s3(out):
        storage.check_bucket(out)
    layout = BaselineLayout(out)
    uris = {f.name: getattr(layout, attr) for attr, f in BaselineLayout.files().items()}
    storage.atomic_write(layout.boundary_plot, decision_boundary_png(result))
    storage.atomic_write(layout.result, json.dumps(result.to_dict(), indent=1))

    def row(*cells: Any) -> str:
        return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"

    compare = row("hand-made features + logistic regression", f"{result.accuracy:.4f}", result.split,
                  result.counts[result.split])
    if result.cnn:
        compare += row(f"CNN ({result.cnn['source']})", f"{result.cnn['accuracy']:.4f}",
                       result.cnn.get("split", "?"), result.cnn.get("count", "?"))
    compare += row("always the most common class", f"{result.chance:.4f}", result.split,
                   result.counts[result.split])
    per_class = "".join(row(c, f"{a:.4f}") for c, a in result.per_class_accuracy.items())
    bad = "".join(row(b["path"], b["reason"]) for b in result.bad_files[:200])
    sections = [
        ("Verdict", f"<p><b>{html.escape(result.verdict)}</b></p>"),
        ("Accuracy", "<table><tr><th>model</th><th>accuracy</th><th>split</th><th>images</th></tr>"
                     f"{compare}</table>"),
        ("Decision boundary", f"<img src='{BaselineLayout.boundary_plot.name}' alt='two features and the learned boundary'>"),
        ("Per class", f"<table><tr><th>class</th><th>accuracy</th></tr>{per_class}</table>"),
        ("Features", "<p>" + html.escape(", ".join(result.features)) + "</p>"),
    ]
    if result.bad_files:
        sections.append((f"Skipped files ({len(result.bad_files)})",
                         f"<table><tr><th>file</th><th>reason</th></tr>{bad}</table>"))
    storage.atomic_write(layout.report, render_html(f"imgrec baseline: {result.source}", sections))
    return uris
