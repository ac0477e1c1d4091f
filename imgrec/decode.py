"""Bytes to uint8 H×W×3 pixels, exactly the same way in training and prediction.

This is the hot path of ingestion, so the order of work is chosen for speed:

1. ``Image.open`` reads only the header; the pixel count is checked against
   ``DecodeConfig.max_pixels`` *before* anything is decoded.
2. JPEGs are decoded at a reduced DCT scale (``draft``: 1/2, 1/4 or 1/8) when
   the target is at least twice smaller, which is several times faster than a
   full decode followed by a big downscale.
3. ``load()`` runs inside the ``try`` so lazy errors (truncated or corrupt
   data) become ``BadImage``; truncated files are never padded with grey
   (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off).
4. EXIF orientation is applied, then one antialiased bilinear resize to
   ``cfg.image_size`` (``stretch``, ``crop`` or ``pad``).

Colour rules (every mode ends as RGB uint8):

* ``L``/``1``/``P``/``CMYK``/``YCbCr``: PIL's conversion to RGB. CMYK JPEGs are
  read with Adobe (inverted) polarity, which is what Photoshop and PIL write.
* Anything with transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a
  transparent index, animated GIFs): **composited on white**. The colour under
  a fully transparent pixel is undefined (encoders store black, white or
  leftovers), so dropping alpha would decode one visible picture differently
  depending on the tool that wrote it; white is what a viewer shows on a page.
* 16-bit integer (``I;16*`` and ``I`` holding 0..65535, e.g. 16-bit PNG):
  scaled by /257 with rounding (65535 → 255, 32768 → 128), never clipped.
  ``I`` values outside 0..65535 are min-max stretched to 0..255.
* Float (``F``): values within [0, 1] are scaled by 255; otherwise min-max
  stretched.
* Animated images (GIF, APNG, WebP, MPO): the first frame.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from imgrec.config import ConfigError, DecodeConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

WHITE = (255, 255, 255)
_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that undoes it (same table as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = {5, 6, 7, 8}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# Bilinear resize first shrinks by an integer factor with a box filter when the
# scale is > 3x: much faster on big PNGs, visually indistinguishable.
_REDUCING_GAP = 3.0

# Our limit (cfg.max_pixels, checked from the header with a message saying what
# to change) replaces Pillow's global one. Pillow warns above MAX_IMAGE_PIXELS,
# which would only duplicate our own rejection, so that warning is silenced.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class BadImage(ValueError):
    """A file that is not a usable image; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- public API


def decode_image(data: bytes, cfg: DecodeConfig) -> np.ndarray:
    """Decode and resize one image to ``cfg.image_size`` as uint8 (H, W, 3).

    Raises ``BadImage`` (with a reason) for empty, non-image, corrupt,
    truncated or too-large files, and ``ConfigError`` if ``cfg.image_size`` is unset."""
    _require_size(cfg)
    img = _open(data, cfg.max_pixels)
    try:
        orientation = _orientation(img)
        _draft(img, cfg, orientation)
        img.load()
        if orientation == 1:
            # PNG may carry eXIf after the pixel data: only known after load().
            orientation = _orientation(img, header_only=False)
        if orientation in _TRANSPOSE:
            img = img.transpose(_TRANSPOSE[orientation])
        img = _to_rgb_or_rgba(img)
        return _fit(img, cfg)
    except BadImage:
        raise
    except Exception as exc:
        raise BadImage(_reason(exc)) from None


def decode_batch(datas: list[bytes], cfg: DecodeConfig) -> tuple[np.ndarray, list[str | None]]:
    """Decode many files: ``(images uint8 N×H×W×3, errors)``.

    ``errors[i]`` is None on success, else the ``BadImage`` reason; failed slots
    are filled with ``cfg.pad_value`` so the array keeps one row per input."""
    h, w = _require_size(cfg)
    images = np.full((len(datas), h, w, 3), cfg.pad_value, dtype=np.uint8)
    errors: list[str | None] = []
    for i, data in enumerate(datas):
        try:
            images[i] = decode_image(data, cfg)
            errors.append(None)
        except BadImage as exc:
            errors.append(exc.reason)
    return images, errors


def image_info(data: bytes) -> tuple[int, int, str, str]:
    """``(width, height, mode, format)`` from the header only (no pixel decode).

    Width and height are as displayed, i.e. after the EXIF orientation, so they
    match what ``decode_image`` resizes from."""
    img = _open(data, max_pixels=None)
    try:
        w, h = img.size
        if _orientation(img) in _SWAPS_AXES:
            w, h = h, w
        return w, h, img.mode, img.format or "unknown"
    except Exception as exc:
        raise BadImage(_reason(exc)) from None


def describe(cfg: DecodeConfig) -> str:
    """One line for logs and reports, e.g. ``128x128 (HxW) crop, <= 64.0 MP, alpha on white``."""
    size = "model input size" if cfg.image_size is None else "{}x{} (HxW)".format(*cfg.image_size)
    pad = f", pad value {cfg.pad_value}" if cfg.resize == "pad" else ""
    return f"{size} {cfg.resize}{pad}, <= {cfg.max_pixels / 1e6:.1f} MP, alpha on white"


def _require_size(cfg: DecodeConfig) -> tuple[int, int]:
    if cfg.image_size is None:
        raise ConfigError(
            "DecodeConfig.image_size is None: set (height, width), or resolve it from the "
            "model's input size before decoding"
        )
    return cfg.image_size


# --------------------------------------------------------------------------- steps


def _open(data: bytes, max_pixels: int | None) -> Image.Image:
    """Parse the header and enforce ``max_pixels`` before any pixel is decoded."""
    if not data:
        raise BadImage("zero-byte file")
    if max_pixels is not None:
        _lift_pil_limit(max_pixels)
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        # Only reached above twice our own limit (see _lift_pil_limit).
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = found.group(1) if found else "?"
        raise BadImage(_too_large(f"{pixels} pixels", max_pixels)) from None
    except UnidentifiedImageError:
        raise BadImage(f"not an image: unrecognised format (file starts with {bytes(data[:8])!r})") from None
    except Exception as exc:
        raise BadImage(_reason(exc)) from None
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise BadImage(_too_large(f"{w}x{h}", max_pixels))
    return img


def _lift_pil_limit(max_pixels: int) -> None:
    # Pillow raises DecompressionBombError in Image.open above 2 * MAX_IMAGE_PIXELS
    # (~179 MP by default), which would make a larger cfg.max_pixels unusable.
    # Raising the global (never lowering it) keeps Pillow's guard strictly above
    # ours, so our explicit header check is the one that decides.
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and limit < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _too_large(size: str, max_pixels: int | None) -> str:
    return (
        f"too large: {size} > max_pixels={max_pixels} (checked from the header); "
        "raise DecodeConfig.max_pixels to allow it"
    )


def _orientation(img: Image.Image, header_only: bool = True) -> int:
    """EXIF orientation (1 = upright), from the EXIF/XMP that ``open`` (or, with
    ``header_only=False``, ``load``) already read. Broken EXIF counts as upright."""
    info = img.info
    if not any(k in info for k in ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")):
        return 1
    if header_only and img.format == "PNG" and "exif" not in info:
        return 1  # PNG's getexif() would decode every pixel to look for a trailing eXIf
    try:
        return int(img.getexif().get(_ORIENTATION, 1))
    except Exception:
        return 1


def _draft(img: Image.Image, cfg: DecodeConfig, orientation: int) -> None:
    """Ask the JPEG decoder for a 1/2, 1/4 or 1/8 scale decode that stays >= the
    size we will resize to (the decoder picks the largest power of 2 that fits)."""
    if img.format not in ("JPEG", "MPO"):
        return
    w, h = img.size
    if orientation in _SWAPS_AXES:  # geometry is planned in the displayed frame
        w, h = h, w
    need_w, need_h = _content_size(w, h, cfg)
    if orientation in _SWAPS_AXES:
        need_w, need_h = need_h, need_w
    img.draft("RGB", (max(1, need_w), max(1, need_h)))


def _content_size(w: int, h: int, cfg: DecodeConfig) -> tuple[int, int]:
    """Size the whole source image is scaled to before crop/pad (width, height)."""
    th, tw = cfg.image_size
    if cfg.resize == "stretch":
        return tw, th
    if cfg.resize == "crop":
        scale = max(tw / w, th / h)
        return max(tw, int(np.ceil(w * scale))), max(th, int(np.ceil(h * scale)))
    scale = min(tw / w, th / h)  # pad
    return max(1, min(tw, round(w * scale))), max(1, min(th, round(h * scale)))


def _to_rgb_or_rgba(img: Image.Image) -> Image.Image:
    """Normalise any mode to RGB, or RGBA when there is transparency (composited
    after the resize: Pillow resizes RGBA premultiplied, so edges stay clean and
    compositing the small image is cheaper)."""
    mode = img.mode
    if mode in ("RGB", "RGBA"):
        return img
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        return img.convert("RGBA")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img), mode), "L").convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise BadImage(f"unsupported colour mode {mode!r}: {exc}") from None


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale wide integer / float pixels to 0..255 without clipping the range."""
    if mode == "F":
        arr = arr.astype(np.float32)
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if lo >= 0.0 and hi <= 1.0:
            return np.rint(np.nan_to_num(arr) * 255.0).astype(np.uint8)
        return _stretch(np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo), lo, hi)
    arr = arr.astype(np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= 0 and hi <= 65535:
        # 16-bit convention: /257 maps 0..65535 onto 0..255 exactly, rounded.
        return ((arr + 128) // 257).astype(np.uint8)
    return _stretch(arr, lo, hi)


def _stretch(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.rint((arr - lo) * (255.0 / (hi - lo))).clip(0, 255).astype(np.uint8)


def _fit(img: Image.Image, cfg: DecodeConfig) -> np.ndarray:
    """Resize (stretch / crop / pad) and composite alpha on white -> uint8 H×W×3."""
    th, tw = cfg.image_size
    w, h = img.size
    if cfg.resize == "crop":
        # Centred box with the target's aspect ratio, in whole source pixels. Cropping
        # first (not resize(box=...)) keeps the filter from reaching outside the box,
        # so nothing of the discarded margins bleeds into the edge pixels.
        scale = max(tw / w, th / h)
        cw, ch = min(w, max(1, round(tw / scale))), min(h, max(1, round(th / scale)))
        left, top = (w - cw) // 2, (h - ch) // 2
        if (cw, ch) != (w, h):
            img = img.crop((left, top, left + cw, top + ch))
        return _rgb_array(_resize(img, (tw, th)))
    if cfg.resize == "pad":
        nw, nh = _content_size(w, h, cfg)
        arr = _rgb_array(_resize(img, (nw, nh)))
        out = np.full((th, tw, 3), cfg.pad_value, dtype=np.uint8)
        y0, x0 = (th - nh) // 2, (tw - nw) // 2
        out[y0 : y0 + nh, x0 : x0 + nw] = arr
        return out
    return _rgb_array(_resize(img, (tw, th)))


def _resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    if img.size == size:
        return img
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=_REDUCING_GAP)


def _rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, WHITE)
        background.paste(img, mask=img.getchannel("A"))
        img = background
    return np.array(img, dtype=np.uint8)  # a writable copy, never a view of PIL memory


def _reason(exc: BaseException) -> str:
    """A short, stable reason for a decoding failure."""
    text = str(exc) or type(exc).__name__
    if "truncated" in text.lower():
        return f"truncated image data: {text}"
    return f"corrupt image ({type(exc).__name__}): {text}"
