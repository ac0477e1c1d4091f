"""The course's 1×n preview grid of augmented copies of one image, and ``describe``."""

from __future__ import annotations

import io
from dataclasses import fields

import numpy as np

from imgrec import storage
from imgrec.augment.transforms import augment_batch
from imgrec.config import AugmentConfig, DecodeConfig
from imgrec.decode import decode_image, image_info


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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def describe(cfg: AugmentConfig) -> str:
    """The non-default options, e.g. ``rotation_range=40, horizontal_flip=True`` (a
    subclass's op fields too: each op's setting is a config field)."""
    default = type(cfg)()
    changed = [
        f"{f.name}={getattr(cfg, f.name)!r}"
        for f in fields(cfg)
        if getattr(cfg, f.name) != getattr(default, f.name)
    ]
    return ", ".join(changed) or "none"
