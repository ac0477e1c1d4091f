"""Bytes to uint8 H×W×3 pixels, exactly the same way in training and prediction.

(Minimal first version; hardened for real-world files in the data-plane issue.)
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from imgrec.config import DecodeConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


class BadImage(ValueError):
    """A file that is not a usable image; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def decode_image(data: bytes, cfg: DecodeConfig) -> np.ndarray:
    """Decode and resize one image to ``cfg.image_size`` as uint8 (H, W, 3)."""
    if not data:
        raise BadImage("zero-byte file")
    try:
        img = Image.open(io.BytesIO(data))
        img = ImageOps.exif_transpose(img)
        img = img.convert("RGB")
        h, w = cfg.image_size
        img = img.resize((w, h), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)
    except Exception as exc:
        raise BadImage(f"cannot decode: {exc}") from None
