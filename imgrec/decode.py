"""Bytes to uint8 H×W×3 pixels, exactly the same way in training and prediction.

This is the hot path of ingestion, so the order of work is chosen for speed:

1. ``Image.open`` reads only the header, trying only the formats in
   ``DecodeConfig.formats`` (no other Pillow plugin ever parses a file); the
   file size, the pixel count and the memory the decode will need (from mode,
   bit depth, size and the steps below) are checked *before* anything is decoded
   (``plan_decode``; ``DecodeConfig.max_file_bytes``, ``max_pixels``,
   ``max_decode_bytes``).
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
* Float (``F``, TIFF only): values within [0, 1] are scaled by 255; otherwise
  min-max stretched. Wide modes are converted in row strips, never as a
  full-size int64/float copy.
* Greyscale stays one channel through the resize and becomes RGB at the end
  (the same pixels, a third of the memory).
* Animated images (GIF, APNG, WebP, MPO): the first frame.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from imgrec.config import IMAGE_FORMATS, ConfigError, DecodeConfig

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

    Raises ``BadImage`` (with a reason) for empty, non-image, refused-format,
    corrupt, truncated, too-large or over-budget files, and ``ConfigError`` if
    ``cfg.image_size`` is unset."""
    return plan_decode(data, cfg).run()


@dataclass
class DecodePlan:
    """A parsed header whose decode fits the budget; ``run()`` decodes it."""

    img: Image.Image
    cfg: DecodeConfig
    orientation: int
    memory_bytes: int  # estimated working memory, file bytes not included

    def run(self) -> np.ndarray:
        img = self.img
        try:
            img.load()
            orientation = self.orientation if self.orientation != 1 else self._late_orientation()
            if orientation in _TRANSPOSE:
                img = img.transpose(_TRANSPOSE[orientation])
            return _fit(_to_rgb_rgba_or_l(img), self.cfg)
        except BadImage:
            raise
        except Exception as exc:
            raise BadImage(_reason(exc)) from None

    def _late_orientation(self) -> int:
        """PNG may carry eXIf after the pixel data, known only after load(): the
        rotation's copy was not in the plan, so the budget is checked again."""
        orientation = _orientation(self.img, header_only=False)
        if orientation in _TRANSPOSE:
            _check_budget(self.img, self.cfg, orientation)
        return orientation


def plan_decode(data: bytes, cfg: DecodeConfig) -> DecodePlan:
    """Every check that needs only the header: size of the file, format, pixel
    count, and the decode's memory (after JPEG draft scaling) against
    ``cfg.max_decode_bytes``. Raises ``BadImage`` when one fails."""
    _require_size(cfg)
    check_file_size(len(data), cfg.max_file_bytes)
    img = _open(data, cfg.max_pixels, cfg.formats)
    try:
        orientation = _orientation(img)
        decoder = _decoder_bytes(img)  # before draft: progressive JPEG buffers are full size
        _draft(img, cfg, orientation)
    except Exception as exc:
        raise BadImage(_reason(exc)) from None
    return DecodePlan(img, cfg, orientation, _check_budget(img, cfg, orientation, decoder))


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


def check_file_size(size: int, max_file_bytes: int) -> None:
    """Refuse a file over ``DecodeConfig.max_file_bytes`` (before reading it, where the size is known)."""
    if size > max_file_bytes:
        raise BadImage(
            f"file too large: {size} bytes > max_file_bytes={max_file_bytes}; "
            "raise DecodeConfig.max_file_bytes to allow it"
        )


def image_info(data: bytes, formats: tuple[str, ...] = IMAGE_FORMATS) -> tuple[int, int, str, str]:
    """``(width, height, mode, format)`` from the header only (no pixel decode).

    Width and height are as displayed, i.e. after the EXIF orientation, so they
    match what ``decode_image`` resizes from."""
    img = _open(data, max_pixels=None, formats=formats)
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
    return (f"{size} {cfg.resize}{pad}, <= {cfg.max_pixels / 1e6:.1f} MP, <= {cfg.max_decode_bytes / 1e6:.0f} MB "
            f"to decode, {'/'.join(cfg.formats)}, alpha on white")


def _require_size(cfg: DecodeConfig) -> tuple[int, int]:
    if cfg.image_size is None:
        raise ConfigError(
            "DecodeConfig.image_size is None: set (height, width), or resolve it from the "
            "model's input size before decoding"
        )
    return cfg.image_size


# --------------------------------------------------------------------------- steps


def _open(data: bytes, max_pixels: int | None, formats: tuple[str, ...]) -> Image.Image:
    """Parse the header (only ``formats`` are tried) and enforce ``max_pixels``
    before any pixel is decoded."""
    if not data:
        raise BadImage("zero-byte file")
    if max_pixels is not None:
        _lift_pil_limit(max_pixels)
    try:
        # MPO has no opener of its own: Pillow's JPEG opener returns MPO files.
        img = Image.open(io.BytesIO(data), formats=[f for f in formats if f != "MPO"])
    except Image.DecompressionBombError as exc:
        # Only reached above twice our own limit (see _lift_pil_limit).
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = found.group(1) if found else "?"
        raise BadImage(_too_large(f"{pixels} pixels", max_pixels)) from None
    except UnidentifiedImageError:
        raise BadImage(_unrecognised(data, formats)) from None
    except Exception as exc:
        raise BadImage(_reason(exc)) from None
    if img.format not in formats:
        raise BadImage(_refused(img.format, formats))
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise BadImage(_too_large(f"{w}x{h}", max_pixels))
    return img


def _unrecognised(data: bytes, formats: tuple[str, ...]) -> str:
    """Why ``Image.open`` found nothing: a format we refuse (named from the file's
    signature, by Pillow's prefix checks only: its plugin never runs), or no image."""
    head = bytes(data[:16])
    Image.init()
    for name, (_, accept) in Image.OPEN.items():
        try:
            known = name not in formats and accept is not None and bool(accept(head))
        except Exception:
            known = False
        if known:
            return _refused(name, formats)
    return f"not an image: unrecognised format (file starts with {head[:8]!r})"


def _refused(found: str | None, formats: tuple[str, ...]) -> str:
    return (f"refused format: the file is {found} (whatever its name says); only {'/'.join(formats)} "
            "are decoded (DecodeConfig.formats)")


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


# Bytes per pixel of Pillow's single-band modes; every other mode (RGB, RGBA,
# CMYK, YCbCr, LA, ...) is stored as 4 bytes per pixel.
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I": 4, "F": 4}
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_MULTIBAND_BYTES = 4


def _bytes_per_pixel(mode: str) -> int:
    return _BYTES_PER_PIXEL.get(mode, _MULTIBAND_BYTES)


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)


def memory_needed(img: Image.Image, cfg: DecodeConfig, orientation: int, decoder_bytes: int = 0) -> int:
    """Peak working memory of decoding ``img`` (opened, drafted, not loaded), from
    its mode, bit depth and size: the decoded pixels, the conversion to
    RGB/RGBA/L, the EXIF rotation's copy, Pillow's premultiplied copy for
    resizing with alpha, the resize's own copies, and ``decoder_bytes``
    (``_decoder_bytes`` before draft). Counted as a sum: an upper bound."""
    w, h = img.size
    decoded = w * h * _bytes_per_pixel(img.mode)
    final_bpp = 1 if img.mode in ("L", "1", *_WIDE_MODES) else _MULTIBAND_BYTES  # L, or RGB/RGBA
    converted = 0 if img.mode in ("RGB", "RGBA", "L") else w * h * final_bpp
    rotated = decoded if orientation in _TRANSPOSE else 0
    premultiplied = w * h * _MULTIBAND_BYTES if _has_alpha(img) else 0
    if orientation in _SWAPS_AXES:
        w, h = h, w
    return decoded + converted + rotated + premultiplied + _resize_bytes(w, h, final_bpp, cfg) + decoder_bytes


def _resize_bytes(w: int, h: int, bpp: int, cfg: DecodeConfig) -> int:
    """The resize's copies of a ``w`` x ``h`` image: the reduced image (or, in crop
    mode without a reduction, the crop) and the horizontal pass's output."""
    th, tw = cfg.image_size
    box = _crop_box(w, h, cfg) if cfg.resize == "crop" else (0, 0, w, h)
    size = _content_size(w, h, cfg) if cfg.resize == "pad" else (tw, th)
    bw, bh = box[2] - box[0], box[3] - box[1]
    fx, fy = _reduce_factors(bw, bh, size)
    if fx == fy == 1:
        source = bw * bh if (bw, bh) != (w, h) else 0
        return (source + size[0] * bh) * bpp
    rw, rh = -(-bw // fx), -(-bh // fy)
    return (rw * rh + size[0] * rh) * bpp


def _decoder_bytes(img: Image.Image) -> int:
    """Buffers a decoder holds besides the image: libwebp decodes into its own
    RGBA frame first; progressive JPEG keeps every DCT coefficient (2 bytes
    each, at the full size: draft scaling happens after them)."""
    if img.format == "WEBP":
        return img.size[0] * img.size[1] * _MULTIBAND_BYTES
    if img.format in ("JPEG", "MPO") and img.info.get("progressive"):
        return _jpeg_coefficient_bytes(img)
    return 0


def _jpeg_coefficient_bytes(img: Image.Image) -> int:
    w, h = img.size
    layers = getattr(img, "layer", None) or [("", 1, 1, 0)] * max(1, len(img.getbands()))
    h_max = max(layer[1] for layer in layers) or 1
    v_max = max(layer[2] for layer in layers) or 1
    return sum(2 * -(-w * hs // h_max) * -(-h * vs // v_max) for _, hs, vs, _ in layers)


def _check_budget(img: Image.Image, cfg: DecodeConfig, orientation: int, decoder_bytes: int = 0) -> int:
    need = memory_needed(img, cfg, orientation, decoder_bytes)
    if need > cfg.max_decode_bytes:
        w, h = img.size
        raise BadImage(
            f"over the decode budget: {img.format} {w}x{h} mode {img.mode} needs ~{need / 1e6:.0f} MB "
            f"to decode > max_decode_bytes={cfg.max_decode_bytes}; raise DecodeConfig.max_decode_bytes "
            "to allow it"
        )
    return need


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


def _to_rgb_rgba_or_l(img: Image.Image) -> Image.Image:
    """Normalise any mode to RGB, to RGBA when there is transparency (composited
    after the resize: Pillow resizes RGBA premultiplied, so edges stay clean and
    compositing the small image is cheaper), or to L for greyscale (RGB after the
    resize)."""
    mode = img.mode
    if mode in ("RGB", "RGBA", "L"):
        return img
    if _has_alpha(img):
        return img.convert("RGBA")
    if mode == "1":
        return img.convert("L")
    if mode in _WIDE_MODES:
        return _wide_to_l(img)
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise BadImage(f"unsupported colour mode {mode!r}: {exc}") from None


_STRIP_BYTES = 4 << 20  # rows converted at once: a few MB of int64/float temporaries


def _strips(img: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """(top row, pixels) of horizontal strips, so no full-size numpy copy exists."""
    w, h = img.size
    rows = max(1, _STRIP_BYTES // (8 * w))
    for top in range(0, h, rows):
        yield top, np.asarray(img.crop((0, top, w, min(h, top + rows))))


def _wide_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float pixels to L, strip by strip."""
    lo, hi = _value_range(img)
    out = np.empty((img.size[1], img.size[0]), dtype=np.uint8)
    for top, strip in _strips(img):
        out[top : top + len(strip)] = _to_uint8(strip, img.mode, lo, hi)
    return Image.fromarray(out, "L")


def _value_range(img: Image.Image) -> tuple[float, float]:
    """(lo, hi) of the pixel values: finite ones only for float images."""
    if img.mode != "F":
        lo, hi = img.getextrema()
        return lo, hi
    lo, hi = np.inf, -np.inf
    for _, strip in _strips(img):
        finite = strip[np.isfinite(strip)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    return (lo, hi) if lo <= hi else (0.0, 1.0)


def _to_uint8(arr: np.ndarray, mode: str, lo: float, hi: float) -> np.ndarray:
    """Scale wide integer / float pixels to 0..255 without clipping the range."""
    if mode == "F":
        arr = arr.astype(np.float32)
        if lo >= 0.0 and hi <= 1.0:
            return np.rint(np.nan_to_num(arr) * 255.0).astype(np.uint8)
        return _stretch(np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo), lo, hi)
    arr = arr.astype(np.int64)
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
        return _rgb_array(_crop_resize(img, _crop_box(w, h, cfg), (tw, th)))
    if cfg.resize == "pad":
        nw, nh = _content_size(w, h, cfg)
        arr = _rgb_array(_resize(img, (nw, nh)))
        out = np.full((th, tw, 3), cfg.pad_value, dtype=np.uint8)
        y0, x0 = (th - nh) // 2, (tw - nw) // 2
        out[y0 : y0 + nh, x0 : x0 + nw] = arr
        return out
    return _rgb_array(_resize(img, (tw, th)))


def _crop_box(w: int, h: int, cfg: DecodeConfig) -> tuple[int, int, int, int]:
    """Crop mode's centred box with the target's aspect ratio, in whole source pixels."""
    th, tw = cfg.image_size
    scale = max(tw / w, th / h)
    cw, ch = min(w, max(1, round(tw / scale))), min(h, max(1, round(th / scale)))
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def _reduce_factors(box_w: int, box_h: int, size: tuple[int, int]) -> tuple[int, int]:
    """The integer box-filter shrink Pillow's ``resize(reducing_gap=...)`` does first."""
    return int(box_w / size[0] / _REDUCING_GAP) or 1, int(box_h / size[1] / _REDUCING_GAP) or 1


def _crop_resize(img: Image.Image, box: tuple[int, int, int, int], size: tuple[int, int]) -> Image.Image:
    """``_resize(img.crop(box), size)``, pixel for pixel, without the full-size crop
    copy: ``reduce`` reads only the box (nothing of the discarded margins bleeds
    into the edge pixels), as Pillow's resize would reduce the cropped image."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    fx, fy = _reduce_factors(bw, bh, size)
    if fx == fy == 1:  # the crop is < 6x the target each way: a small copy
        return _resize(img.crop(box) if (bw, bh) != img.size else img, size)
    premultiplied = img.mode == "RGBA"  # as Pillow's resize does for RGBA
    if premultiplied:
        img = img.convert("RGBa")
    reduced = img.reduce((fx, fy), box=box)
    out = reduced.resize(size, Image.Resampling.BILINEAR, box=(0, 0, bw / fx, bh / fy))
    return out.convert("RGBA") if premultiplied else out


def _resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    if img.size == size:
        return img
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=_REDUCING_GAP)


def _rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, WHITE)
        background.paste(img, mask=img.getchannel("A"))
        img = background
    elif img.mode == "L":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)  # a writable copy, never a view of PIL memory


def _reason(exc: BaseException) -> str:
    """A short, stable reason for a decoding failure."""
    text = str(exc) or type(exc).__name__
    if "truncated" in text.lower():
        return f"truncated image data: {text}"
    return f"corrupt image ({type(exc).__name__}): {text}"
