"""Procedurally generated, learnable image datasets: no downloads, any size, any seed.

One call writes a class-per-folder JPEG tree that the rest of imgrec reads like
any real dataset::

    from imgrec import synth
    synth.make_dataset("s3://bucket/shapes")            # 3 shapes × 100 train + 20 test, 64×64
    synth.make_dataset("./animals", task="brightness", classes=2, per_class=300)

    <out>/train/<class>/<i>.jpg
    <out>/test/<class>/<i>.jpg

Tasks (each class folder has a readable name):

- ``shapes``: the class is the object's shape (circle, square, …); colours,
  positions, sizes and the background vary freely.
- ``colors``: the class is the object's colour (red, green, …); shapes vary.
  Related to ``shapes`` but different: pretrain on one, fine-tune on the other.
- ``brightness``: the course's animals told apart by brightness and height
  ("cat": dark scene, small object; "dog": bright scene, tall object). A
  hand-made brightness + size feature separates the classes almost perfectly.
- ``noinfo``: the class is the orientation of a striped texture; brightness and
  size are drawn the same way for every class, so those features see nothing.

Every image comes from its own random stream, seeded by (seed, task, split,
class, index): the same seed gives byte-identical files however the work is
split across threads, and a class's images do not change when classes are
added. ``make_arrays`` gives the same pixels in memory, CIFAR-style.
"""

from __future__ import annotations

import colorsys
import concurrent.futures as futures
import io
import math
import os
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image

from imgrec import storage

TASKS = ("shapes", "colors", "brightness", "noinfo")
SPLITS = ("train", "test")

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "diamond", "crescent")
# Hues in degrees, in the order classes are taken: the first few are far apart
# (3 classes: red, green, blue). All are at least 30° apart, so a ±8° jitter
# never makes two classes meet.
COLORS = {
    "red": 0,
    "green": 120,
    "blue": 230,
    "yellow": 60,
    "magenta": 315,
    "cyan": 180,
    "orange": 30,
    "purple": 275,
}
ANIMALS = ("cat", "dog", "horse", "cow", "sheep", "goat", "pig", "deer")  # darkest/smallest first
MAX_CLASSES = 8


class SynthError(ValueError):
    """A synthetic-dataset option is out of range; the message names it and the fix."""


@dataclass(frozen=True)
class DatasetSummary:
    """What ``make_dataset`` wrote: ``counts[split][class]`` images under ``uri``."""

    uri: str
    task: str
    class_names: tuple[str, ...]
    image_size: tuple[int, int]  # (height, width)
    seed: int
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(sum(per_class.values()) for per_class in self.counts.values())

    def __str__(self) -> str:
        h, w = self.image_size
        lines = [f"wrote {self.total} images to {self.uri} (task {self.task}, {h}x{w}, seed {self.seed})"]
        for split, per_class in self.counts.items():
            lines.append(f"  {split}: " + ", ".join(f"{name} {n}" for name, n in per_class.items()))
        return "\n".join(lines)


# --------------------------------------------------------------------------- public API


def class_names(task: str = "shapes", classes: int = 3) -> list[str]:
    """The class folder names for ``task``, sorted (the label order of a folder tree)."""
    return sorted(_kinds(_check_task(task), _check_classes(task, classes)))


def make_dataset(
    out_uri: str,
    task: str = "shapes",
    classes: int = 3,
    per_class: int = 100,
    image_size: tuple[int, int] = (64, 64),
    seed: int = 0,
    test_per_class: int | None = None,
    quality: int = 90,
    *,
    overwrite: bool = False,
    threads: int | None = None,
    progress: bool = False,
) -> DatasetSummary:
    """Write a class-per-folder JPEG dataset to a local folder or ``s3://`` prefix.

    Args:
        out_uri: destination root; ``train/`` and ``test/`` are created under it.
        task: ``shapes``, ``colors``, ``brightness`` or ``noinfo`` (see the module doc).
        classes: number of classes, 2 to 8.
        per_class: training images per class.
        image_size: ``(height, width)``; e.g. ``(375, 500)`` for photo-like images.
        seed: the same seed writes byte-identical files.
        test_per_class: test images per class; default 20 % of ``per_class`` (at least 1).
        quality: JPEG quality, 1-95.
        overwrite: replace whatever is already under ``out_uri``. Without it a
            non-empty destination is an error, so old classes never mix in.
        threads: rendering threads; default one per CPU for images from 128×128 up, else 1.
        progress: show a progress bar.
    """
    task = _check_task(task)
    kinds = _kinds(task, _check_classes(task, classes))
    per_class = _check_count("per_class", per_class, minimum=1)
    test_per_class = max(1, round(per_class * 0.2)) if test_per_class is None else test_per_class
    test_per_class = _check_count("test_per_class", test_per_class, minimum=0)
    height, width = _check_size(image_size)
    quality = _check_count("quality", quality, minimum=1, maximum=95)
    if threads is None:
        # Threads pay off only when each image is big enough for numpy and the
        # JPEG encoder to spend their time outside the GIL.
        threads = (os.cpu_count() or 1) if height * width >= 128 * 128 else 1
    threads = _check_count("threads", threads, minimum=1)
    # Last: it may delete, so only after every check.
    out = storage.empty_destination(out_uri, overwrite=overwrite, what="the dataset")

    counts = {"train": per_class, "test": test_per_class}
    jobs = [(split, kind, i) for split in SPLITS for kind in kinds for i in range(counts[split])]
    spec = _Spec(task=task, kinds=tuple(kinds), size=(height, width), seed=int(seed), quality=quality)
    # One stream for the whole set: rendering overlaps the writes (S3 PUTs run on their own pool).
    storage.write_many(out, _rendered(spec, jobs, threads), workers=8, progress=progress, total=len(jobs))

    names = sorted(kinds)
    return DatasetSummary(
        uri=out,
        task=task,
        class_names=tuple(names),
        image_size=(height, width),
        seed=int(seed),
        counts={split: {name: counts[split] for name in names} for split in SPLITS if counts[split]},
    )


def make_arrays(
    task: str = "shapes",
    classes: int = 3,
    per_class: int = 100,
    image_size: tuple[int, int] = (64, 64),
    seed: int = 0,
    *,
    split: str = "train",
) -> tuple[np.ndarray, np.ndarray]:
    """The same images in memory: ``(images uint8 N×H×W×3, labels int64 N)``.

    Labels index ``class_names(task, classes)`` (sorted, like a folder tree).
    The order is shuffled (deterministically), so Keras' ``validation_split``,
    which takes the last samples, sees every class. Pixels are the raw renders,
    not JPEG round trips. ``split="test"`` gives the test set's images."""
    task = _check_task(task)
    kinds = _kinds(task, _check_classes(task, classes))
    per_class = _check_count("per_class", per_class, minimum=1)
    height, width = _check_size(image_size)
    if split not in SPLITS:
        raise SynthError(f"split must be one of {SPLITS}, got {split!r}")
    spec = _Spec(task=task, kinds=tuple(kinds), size=(height, width), seed=int(seed), quality=0)
    names = sorted(kinds)
    jobs = [(split, kind, i) for kind in kinds for i in range(per_class)]
    order = np.random.default_rng([int(seed), _stable_id(task), _stable_id(split), 7]).permutation(len(jobs))
    images = np.empty((len(jobs), height, width, 3), dtype=np.uint8)
    labels = np.empty(len(jobs), dtype=np.int64)
    for row, j in enumerate(order):
        split_, kind, i = jobs[j]
        images[row] = _render(spec, split_, kind, i)
        labels[row] = names.index(kind)
    return images, labels


# --------------------------------------------------------------------------- validation


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise SynthError(f"unknown task {task!r}; choose one of {TASKS}")
    return task


def _check_classes(task: str, classes: int) -> int:
    if not isinstance(classes, int | np.integer) or not 2 <= classes <= MAX_CLASSES:
        raise SynthError(
            f"classes for task {task!r} must be an integer from 2 to {MAX_CLASSES}, got {classes!r}"
        )
    return int(classes)


def _check_count(name: str, value: int, minimum: int, maximum: int | None = None) -> int:
    if (
        not isinstance(value, int | np.integer)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise SynthError(f"{name} must be an integer >= {minimum}{upper}, got {value!r}")
    return int(value)


def _check_size(image_size: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise SynthError(f"image_size must be (height, width), got {image_size!r}") from None
    if min(height, width) < 16 or max(height, width) > 4096:
        raise SynthError(
            f"image_size must be (height, width) with each side from 16 to 4096 pixels, got {image_size!r}"
        )
    return height, width


def _kinds(task: str, classes: int) -> list[str]:
    """Class names in task order (for brightness: darkest first; for noinfo: by angle)."""
    if task == "shapes":
        return list(SHAPES[:classes])
    if task == "colors":
        return list(COLORS)[:classes]
    if task == "brightness":
        return list(ANIMALS[:classes])
    return [_orientation_name(180.0 * k / classes) for k in range(classes)]


def _orientation_name(degrees: float) -> str:
    named = {0.0: "horizontal", 45.0: "diagonal", 90.0: "vertical", 135.0: "antidiagonal"}
    return named.get(round(degrees, 6), f"angle{round(degrees):03d}")


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class _Spec:
    """Everything a rendering thread needs to draw any image of the dataset."""

    task: str
    kinds: tuple[str, ...]
    size: tuple[int, int]
    seed: int
    quality: int


def _relpath(split: str, kind: str, i: int) -> str:
    return f"{split}/{kind}/{i:05d}.jpg"


def _encode(pixels: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    # Fixed encoder settings (no optimize pass): the bytes depend only on the pixels.
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=quality, subsampling="4:2:0")
    return buf.getvalue()


def _render_encoded(spec: _Spec, job: tuple[str, str, int]) -> tuple[str, bytes]:
    split, kind, i = job
    return _relpath(split, kind, i), _encode(_render(spec, split, kind, i), spec.quality)


def _rendered(spec: _Spec, jobs: Sequence[tuple[str, str, int]], threads: int) -> Iterator[tuple[str, bytes]]:
    """Encoded images in job order, rendered on ``threads`` threads a little ahead
    of the consumer. Threads suffice: numpy's array maths and Pillow's JPEG
    encoder release the GIL, and threads avoid process start-up and the
    pitfalls of spawning from scripts and notebooks."""
    if threads <= 1:
        for job in jobs:
            yield _render_encoded(spec, job)
        return
    ahead: deque[futures.Future] = deque()
    pool = futures.ThreadPoolExecutor(threads, thread_name_prefix="synth")
    try:
        for job in jobs:
            ahead.append(pool.submit(_render_encoded, spec, job))
            if len(ahead) >= 4 * threads:  # bounded: memory stays flat for big images
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- rendering
#
# Pixels are float32 in [0, 1] until the end. Objects are drawn only inside
# their bounding window, so a 500×375 image costs little more than its
# background: the work is a gradient, the noise and one small window.


def _stable_id(text: str) -> int:
    """A process-independent integer for a name (``hash()`` is salted per process)."""
    return zlib.crc32(text.encode())


def _rng(spec: _Spec, split: str, kind: str, i: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, _stable_id(spec.task), _stable_id(split), _stable_id(kind), i])


@lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _render(spec: _Spec, split: str, kind: str, i: int) -> np.ndarray:
    """One image as uint8 H×W×3."""
    rng = _rng(spec, split, kind, i)
    height, width = spec.size
    renderer = {"shapes": _shapes, "colors": _colors, "brightness": _brightness, "noinfo": _noinfo}[spec.task]
    image = renderer(rng, height, width, kind, spec.kinds)
    # Sensor-like noise, one value per pixel for all channels (cheap at 500×375).
    noise = rng.standard_normal((height, width, 1), dtype=np.float32)
    noise *= np.float32(rng.uniform(0.01, 0.04))
    image += noise
    np.clip(image, 0.0, 1.0, out=image)
    image *= 255.0
    image += 0.5
    return image.astype(np.uint8)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(
        colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), dtype=np.float32
    )


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _with_luminance(rgb: np.ndarray, target: float) -> np.ndarray:
    """The colour with its hue kept and its luminance set to ``target``: darker
    by scaling towards black, brighter by mixing towards white."""
    target = min(max(float(target), 0.0), 1.0)
    lum = float(rgb @ _LUMA)
    if target <= lum:
        return rgb * np.float32(target / max(lum, 1e-6))
    return rgb + (1.0 - rgb) * np.float32((target - lum) / max(1.0 - lum, 1e-6))


def _gradient(
    rng: np.random.Generator, height: int, width: int, c0: np.ndarray, c1: np.ndarray
) -> np.ndarray:
    """A linear gradient from colour c0 to c1 in a random direction, H×W×3 float32."""
    angle = rng.uniform(0, 2 * math.pi)
    a, b = math.cos(angle) / width, math.sin(angle) / height
    # The extremes of a linear ramp are at the corners: normalise to [0, 1] from them.
    corners = [a * x + b * y for x in (0, width - 1) for y in (0, height - 1)]
    lo, span = min(corners), max(max(corners) - min(corners), 1e-6)
    # A ramp is separable: one column term plus one row term, a single pass over the pixels.
    delta = (c1 - c0).astype(np.float32)
    cols = (np.arange(width, dtype=np.float32) * np.float32(a / span))[:, None] * delta
    rows = (np.arange(height, dtype=np.float32) * np.float32(b / span) - np.float32(lo / span))[
        :, None
    ] * delta
    return (rows[:, None, :] + c0) + cols[None, :, :]


def _window(height: int, width: int, cx: float, cy: float, extent_x: float, extent_y: float | None = None):
    """The pixels an object centred at (cx, cy) can touch: (slices, dx, dy)."""
    extent_y = extent_x if extent_y is None else extent_y
    y0, y1 = max(0, int(cy - extent_y) - 2), min(height, int(math.ceil(cy + extent_y)) + 2)
    x0, x1 = max(0, int(cx - extent_x) - 2), min(width, int(math.ceil(cx + extent_x)) + 2)
    yy, xx = _grid(height, width)
    return (
        (slice(y0, y1), slice(x0, x1)),
        xx[y0:y1, x0:x1] - np.float32(cx),
        yy[y0:y1, x0:x1] - np.float32(cy),
    )


def _turn(rng: np.random.Generator, dx: np.ndarray, dy: np.ndarray, max_turn: float):
    """(dx, dy) turned by a random angle of up to ``max_turn`` degrees either way."""
    theta = math.radians(rng.uniform(-max_turn, max_turn))
    c, s = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    return c * dx + s * dy, c * dy - s * dx


def _paint(image: np.ndarray, window, alpha: np.ndarray, color: np.ndarray) -> np.ndarray:
    """Alpha-blend a flat colour over the image inside ``window`` (in place)."""
    view = image[window]
    view += alpha[..., None] * (color - view)
    return image


def _coverage(sdf: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) to coverage in [0, 1], anti-aliased over about a pixel."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _shape_sdf(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (approximately, in pixels) to a shape of size ``r`` at the origin of (u, v)."""
    r = np.float32(r)
    if shape == "circle":
        return np.hypot(u, v) - r
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.72 * r) - 0.25 * r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.85 * r
    if shape == "diamond":
        return (np.abs(u) + np.abs(v)) * np.float32(math.sqrt(0.5)) - 0.8 * r
    if shape == "triangle":  # apex up; v grows downwards
        k = np.float32(math.sqrt(3) / 2)
        return np.maximum(np.maximum(v, k * u - 0.5 * v), -k * u - 0.5 * v) - 0.6 * r
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        arm = 0.3 * r
        return np.minimum(np.maximum(au - arm, av - r), np.maximum(au - r, av - arm))
    if shape == "star":  # five sharp points: the radius swings with the angle, one point straight up
        phase = np.cos(5.0 * np.arctan2(u, -v))
        return (np.hypot(u, v) - r * (0.5 + 0.5 * phase * np.abs(phase))) * 0.7
    if shape == "crescent":
        bite = np.hypot(u - 0.45 * r, v + 0.2 * r) - 0.8 * r
        return np.maximum(np.hypot(u, v) - r, -bite)
    raise SynthError(f"unknown shape {shape!r}; choose one of {SHAPES}")  # pragma: no cover


def _place(rng: np.random.Generator, height: int, width: int, lo: float, hi: float):
    """A random centre and size ``r`` (a fraction of the short side) that keeps the object inside."""
    short = min(height, width)
    r = rng.uniform(lo, hi) * short
    cx = rng.uniform(r * 1.05, width - r * 1.05)
    cy = rng.uniform(r * 1.05, height - r * 1.05)
    return cx, cy, r


def _draw_shape(rng, image, shape: str, color: np.ndarray, max_turn: float) -> np.ndarray:
    height, width = image.shape[:2]
    cx, cy, r = _place(rng, height, width, 0.2, 0.34)
    window, dx, dy = _window(height, width, cx, cy, 1.5 * r)  # a turned cross reaches √2·r
    u, v = _turn(rng, dx, dy, max_turn)
    return _paint(image, window, _coverage(_shape_sdf(shape, u, v, r)), color)


def _shapes(rng, height, width, kind, kinds):
    """Shape is the class; colours are free, but object and background always
    differ clearly in luminance, so the outline is visible in every channel mix."""
    bg_lum = rng.uniform(0.1, 0.9)
    obj_lum = rng.uniform(bg_lum + 0.35, 1.0) if bg_lum < 0.5 else rng.uniform(0.0, bg_lum - 0.35)
    bg_h, bg_s = rng.uniform(), rng.uniform(0.0, 0.35)
    c0 = _with_luminance(_hsv(bg_h, bg_s, 1.0), bg_lum)
    c1 = _with_luminance(_hsv(bg_h + rng.uniform(-0.1, 0.1), bg_s, 1.0), bg_lum + rng.uniform(-0.08, 0.08))
    image = _gradient(rng, height, width, c0, c1)
    color = _with_luminance(_hsv(rng.uniform(), rng.uniform(0.0, 1.0), 1.0), obj_lum)
    # ±12°: a square never turns into a diamond (45°) and a triangle keeps its apex up.
    return _draw_shape(rng, image, kind, color, max_turn=12)


def _colors(rng, height, width, kind, kinds):
    """Colour is the class; a grey-ish background leaves the object's hue the only strong one."""
    bg_v = rng.uniform(0.15, 0.85)
    c0 = _hsv(rng.uniform(), rng.uniform(0, 0.12), bg_v)
    c1 = _hsv(rng.uniform(), rng.uniform(0, 0.12), bg_v + rng.uniform(-0.15, 0.15))
    image = _gradient(rng, height, width, c0, c1)
    color = _hsv((COLORS[kind] + rng.uniform(-8, 8)) / 360.0, rng.uniform(0.75, 1.0), rng.uniform(0.7, 1.0))
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    return _draw_shape(rng, image, shape, color, max_turn=180)


def _brightness(rng, height, width, kind, kinds):
    """Class k of K: scene brightness and object height both grow with k, with a
    jitter of a quarter of the gap between classes, so they never overlap."""
    k, n = kinds.index(kind), len(kinds)
    step = 1.0 / (n - 1)
    level = 0.15 + 0.5 * (k + rng.uniform(-0.25, 0.25)) * step
    tall = 0.3 + 0.5 * (k + rng.uniform(-0.25, 0.25)) * step  # object height / image height
    tint = rng.uniform()
    c0 = _hsv(tint, rng.uniform(0, 0.2), level)
    c1 = _hsv(tint, rng.uniform(0, 0.2), level * rng.uniform(0.85, 1.0))
    image = _gradient(rng, height, width, c0, c1)
    # An upright "animal": an ellipse somewhere in the scene, a little brighter than it.
    half_h = tall * height / 2
    half_w = min(rng.uniform(0.45, 0.8) * half_h, 0.3 * width)
    cx = rng.uniform(half_w + 1, width - half_w - 1)
    cy = rng.uniform(half_h + 1, height - half_h - 1)
    window, dx, dy = _window(height, width, cx, cy, half_w, half_h)
    sdf = (np.hypot(dx / np.float32(half_w), dy / np.float32(half_h)) - 1.0) * np.float32(min(half_w, half_h))
    color = _hsv(tint + rng.uniform(-0.05, 0.05), rng.uniform(0, 0.3), level + 0.25)
    return _paint(image, window, _coverage(sdf), color)


def _noinfo(rng, height, width, kind, kinds):
    """A striped patch whose stripe angle is the class; everything a brightness or
    size feature could see (levels, contrast, patch size, period) is drawn the
    same way for every class."""
    angle = 180.0 * (kinds.index(kind) + rng.uniform(-0.15, 0.15)) / len(kinds)
    bg_v = rng.uniform(0.2, 0.8)
    tint = rng.uniform()
    image = _gradient(
        rng, height, width, _hsv(tint, 0.15, bg_v), _hsv(tint, 0.15, bg_v * rng.uniform(0.85, 1))
    )
    cx, cy, r = _place(rng, height, width, 0.25, 0.45)
    window, dx, dy = _window(height, width, cx, cy, r)
    patch = _coverage(np.maximum(np.abs(dx), np.abs(dy)) - np.float32(r))
    period = rng.uniform(0.08, 0.16) * min(height, width)
    theta = math.radians(angle)
    # Stripes run along ``angle``: the wave varies across them. A sine averages
    # to the patch's mid level whatever the angle, so mean brightness carries nothing.
    across = np.float32(-math.sin(theta)) * dx + np.float32(math.cos(theta)) * dy
    wave = np.sin(across * np.float32(2 * math.pi / period) + np.float32(rng.uniform(0, 2 * math.pi)))
    shade = (np.float32(bg_v) + np.float32(rng.uniform(0.12, 0.22)) * wave)[..., None] * _hsv(tint, 0.15, 1.0)
    view = image[window]
    a = patch[..., None]
    view *= 1.0 - a
    view += a * shade
    return image
