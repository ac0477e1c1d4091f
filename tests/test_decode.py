"""decode.py: every odd real-world file becomes the right RGB uint8 pixels, or a
BadImage with a reason."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from imgrec.config import IMAGE_FORMATS, ConfigError, DecodeConfig
from imgrec.decode import BadImage, decode_batch, decode_image, describe, image_info

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def native(img: Image.Image, *formats: str) -> DecodeConfig:
    """Decode at the image's own size: no resampling, so pixels must be exact.
    ``formats``: opt-in formats (TIFF) on top of the default list."""
    w, h = img.size
    return DecodeConfig(image_size=(h, w), formats=IMAGE_FORMATS + formats)


def header_only_png(width: int, height: int) -> bytes:
    """A PNG signature + IHDR + IEND: a valid header claiming any size, no pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- colour modes


def test_rgb_png_round_trips_exactly():
    pixels = np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    out = decode_image(encode(img), native(img))
    assert out.dtype == np.uint8 and out.shape == (6, 9, 3)
    np.testing.assert_array_equal(out, pixels)
    assert out.flags.writeable


def test_grayscale_becomes_three_equal_channels():
    img = Image.new("L", (4, 3), 100)
    out = decode_image(encode(img), native(img))
    assert out.shape == (3, 4, 3)
    assert (out == 100).all()


def test_palette_colours_are_exact():
    img = Image.new("P", (4, 2), 0)
    img.putpalette([10, 20, 30, 200, 100, 50] + [0, 0, 0] * 254)
    img.putpixel((3, 1), 1)
    out = decode_image(encode(img), native(img))
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[1, 3]) == (200, 100, 50)


def test_palette_transparency_is_composited_on_white():
    img = Image.new("P", (2, 1), 0)
    img.putpalette([0, 0, 0, 200, 100, 50] + [0, 0, 0] * 254)
    img.putpixel((1, 0), 1)
    data = encode(img, transparency=0)  # index 0 (black) is fully transparent
    out = decode_image(data, native(img))
    assert tuple(out[0, 0]) == WHITE
    assert tuple(out[0, 1]) == (200, 100, 50)


def test_rgba_alpha_is_composited_on_white():
    pixels = np.array([[[0, 0, 0, 0], [10, 20, 30, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    img = Image.fromarray(pixels, "RGBA")
    out = decode_image(encode(img), native(img))
    assert tuple(out[0, 0]) == WHITE  # transparent black shows as the white page
    assert tuple(out[0, 1]) == (10, 20, 30)  # opaque: untouched
    assert np.all(np.abs(out[0, 2].astype(int) - 127) <= 1)  # half-transparent black: mid grey


def test_la_alpha_is_composited_on_white():
    pixels = np.array([[[0, 0], [50, 255]]], dtype=np.uint8)
    img = Image.fromarray(pixels, "LA")
    out = decode_image(encode(img), native(img))
    assert tuple(out[0, 0]) == WHITE
    assert tuple(out[0, 1]) == (50, 50, 50)


def test_rgba_resize_has_no_dark_fringe():
    # A red opaque square on transparent *black*: premultiplied resizing must not
    # pull black into the edge pixels after compositing on white.
    pixels = np.zeros((64, 64, 4), dtype=np.uint8)
    pixels[16:48, 16:48] = (255, 0, 0, 255)
    out = decode_image(encode(Image.fromarray(pixels, "RGBA")), DecodeConfig(image_size=(16, 16)))
    assert out[..., 0].min() >= 250  # red channel never darkens: edges blend red with white


@pytest.mark.parametrize(
    "cmyk, rgb",
    [
        ((255, 0, 0, 0), (0, 255, 255)),  # cyan
        ((0, 255, 0, 0), (255, 0, 255)),  # magenta
        ((0, 0, 255, 0), (255, 255, 0)),  # yellow
        ((0, 0, 0, 255), (0, 0, 0)),  # black
        ((0, 0, 0, 0), (255, 255, 255)),  # paper
    ],
)
def test_cmyk_jpeg_pure_colours(cmyk, rgb):
    img = Image.new("CMYK", (16, 16), cmyk)
    data = encode(img, "JPEG", quality=95)  # PIL writes Adobe (inverted) CMYK JPEGs
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data, native(img))
    assert np.abs(out.astype(int) - np.array(rgb)).max() <= 8


def test_16_bit_png_is_scaled_not_clipped():
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(values)
    data = encode(img)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = decode_image(data, native(img))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_32_bit_integer_mode_i_uses_the_16_bit_range():
    values = np.array([[0, 32768, 65535]], dtype=np.int32)
    img = Image.fromarray(values, "I")
    data = encode(img, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert decode_image(data, native(img, "TIFF"))[0, :, 0].tolist() == [0, 128, 255]


def test_i_mode_outside_16_bits_is_stretched():
    values = np.array([[-1000, 0, 100000]], dtype=np.int32)
    img = Image.fromarray(values, "I")
    out = decode_image(encode(img, "TIFF"), native(img, "TIFF"))
    assert out[0, 0, 0] == 0 and out[0, 2, 0] == 255


def test_float_mode_f_in_unit_range_is_scaled_by_255():
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    img = Image.fromarray(values, "F")
    data = encode(img, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    assert decode_image(data, native(img, "TIFF"))[0, :, 0].tolist() == [0, 128, 255]


def test_animated_gif_gives_the_first_frame():
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    out = decode_image(data, native(frames[0]))
    assert np.abs(out.astype(int) - np.array(RED)).max() <= 2


# --------------------------------------------------------------------------- EXIF orientation


def exif_jpeg(width: int, height: int, orientation: int) -> bytes:
    """Stored (un-rotated) image: white with a red block in the stored top-left corner."""
    img = Image.new("RGB", (width, height), WHITE)
    img.paste(RED, (0, 0, width // 4, height // 4))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif)


def red_corner(out: np.ndarray) -> str:
    h, w = out.shape[:2]
    corners = {
        "top-left": out[h // 16, w // 16],
        "top-right": out[h // 16, w - 1 - w // 16],
        "bottom-left": out[h - 1 - h // 16, w // 16],
        "bottom-right": out[h - 1 - h // 16, w - 1 - w // 16],
    }
    red = [name for name, px in corners.items() if px[0] > 200 and px[1] < 60 and px[2] < 60]
    assert len(red) == 1, corners
    return red[0]


def test_exif_orientation_6_is_rotated_upright():
    # Orientation 6: the camera was turned; display = stored rotated 90° clockwise,
    # so the stored top-left corner shows at the top-right.
    data = exif_jpeg(80, 40, orientation=6)
    assert image_info(data)[:2] == (40, 80)  # displayed width, height
    out = decode_image(data, DecodeConfig(image_size=(80, 40)))
    assert out.shape == (80, 40, 3)
    assert red_corner(out) == "top-right"


@pytest.mark.parametrize("orientation, corner", [(1, "top-left"), (3, "bottom-right"), (8, "bottom-left")])
def test_exif_orientations(orientation, corner):
    data = exif_jpeg(80, 40, orientation)
    h, w = (40, 80) if orientation in (1, 3) else (80, 40)
    assert red_corner(decode_image(data, DecodeConfig(image_size=(h, w)))) == corner


def test_exif_rotation_with_reduced_size_jpeg_decode():
    # Big enough that draft() decodes at 1/8 scale; the draft size must be planned
    # in the stored (pre-rotation) frame.
    data = exif_jpeg(1600, 800, orientation=6)
    out = decode_image(data, DecodeConfig(image_size=(64, 32)))
    assert out.shape == (64, 32, 3)
    assert red_corner(out) == "top-right"


# --------------------------------------------------------------------------- resizing


def test_resize_modes_give_the_target_shape():
    data = encode(Image.new("RGB", (200, 100), RED))
    for mode in ("stretch", "crop", "pad"):
        assert decode_image(data, DecodeConfig(image_size=(50, 60), resize=mode)).shape == (50, 60, 3)


def test_crop_keeps_the_centre():
    img = Image.new("RGB", (200, 100), GREEN)
    img.paste(RED, (0, 0, 50, 100))  # left and right quarters fall outside a centred square
    img.paste(BLUE, (150, 0, 200, 100))
    out = decode_image(encode(img), DecodeConfig(image_size=(50, 50), resize="crop"))
    assert np.abs(out.astype(int) - np.array(GREEN)).max() <= 2
    stretched = decode_image(encode(img), DecodeConfig(image_size=(50, 50), resize="stretch"))
    assert tuple(stretched[25, 0]) == RED and tuple(stretched[25, -1]) == BLUE


def test_pad_keeps_aspect_and_pad_value_bands():
    data = encode(Image.new("RGB", (200, 100), RED))
    out = decode_image(data, DecodeConfig(image_size=(50, 50), resize="pad", pad_value=7))
    # 200x100 scaled into 50x50 -> 50x25 content, 12 rows above, 13 below.
    assert (out[:12] == 7).all() and (out[37:] == 7).all()
    assert (out[12:37] == RED).all()


def test_pad_tall_image_pads_left_and_right():
    data = encode(Image.new("RGB", (20, 80), BLUE))
    out = decode_image(data, DecodeConfig(image_size=(40, 40), resize="pad", pad_value=255))
    assert (out[:, :15] == 255).all() and (out[:, 25:] == 255).all()
    assert (out[:, 15:25] == BLUE).all()


def test_reduced_size_jpeg_decode_matches_a_full_decode():
    y, x = np.mgrid[0:750, 0:1000]
    pixels = np.stack([x * 255 // 1000, y * 255 // 750, (x // 50 + y // 50) % 2 * 255], -1).astype(np.uint8)
    data = encode(Image.fromarray(pixels), "JPEG", quality=90)
    cfg = DecodeConfig(image_size=(64, 64))
    fast = decode_image(data, cfg)
    full = Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    assert np.abs(fast.astype(int) - np.asarray(full, dtype=int)).mean() < 4


def test_jpeg_draft_is_used_for_small_targets(monkeypatch):
    from PIL import JpegImagePlugin

    calls = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        calls.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    data = encode(Image.new("RGB", (1000, 800), GREEN), "JPEG")
    decode_image(data, DecodeConfig(image_size=(100, 100)))
    assert calls == [((100, 100), (125, 100))]  # 1/8 scale: still >= the 100x100 target


# --------------------------------------------------------------------------- bad files


def test_zero_byte_file():
    with pytest.raises(BadImage, match="zero-byte"):
        decode_image(b"", DecodeConfig(image_size=(8, 8)))


def test_random_bytes_are_not_an_image():
    junk = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(BadImage, match="not an image"):
        decode_image(junk, DecodeConfig(image_size=(8, 8)))


def test_text_file_is_not_an_image():
    with pytest.raises(BadImage, match="not an image") as info:
        decode_image(b"class,label\ncat,0\n", DecodeConfig(image_size=(8, 8)))
    assert info.value.reason.startswith("not an image")


def test_truncated_jpeg_fails():
    pixels = np.random.default_rng(2).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), "JPEG", quality=90)
    with pytest.raises(BadImage, match="truncated"):
        decode_image(data[: len(data) // 2], DecodeConfig(image_size=(200, 300)))
    with pytest.raises(BadImage, match="truncated"):  # also on the reduced-size path
        decode_image(data[: len(data) // 2], DecodeConfig(image_size=(32, 32)))


def test_corrupt_png_data_fails():
    data = bytearray(encode(Image.new("RGB", (64, 64), RED)))
    data[60:80] = b"\xff" * 20  # inside the compressed pixel data
    with pytest.raises(BadImage):
        decode_image(bytes(data), DecodeConfig(image_size=(64, 64)))


def test_header_only_png_fails_as_truncated_or_corrupt():
    with pytest.raises(BadImage) as info:
        decode_image(header_only_png(10, 10), DecodeConfig(image_size=(10, 10)))
    assert "too large" not in info.value.reason


def test_oversized_image_is_rejected_from_the_header():
    data = encode(Image.new("L", (5000, 5000)), compress_level=1)
    with pytest.raises(BadImage, match=r"too large: 5000x5000 > max_pixels=1000000") as info:
        decode_image(data, DecodeConfig(image_size=(8, 8), max_pixels=1_000_000))
    assert "raise DecodeConfig.max_pixels" in info.value.reason
    # The header is enough: a file with no pixel data at all is rejected the same way.
    with pytest.raises(BadImage, match="too large: 5000x5000"):
        decode_image(header_only_png(5000, 5000), DecodeConfig(image_size=(8, 8), max_pixels=1_000_000))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets our filter
def test_our_limit_decides_not_pillows(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored afterwards
    cfg = DecodeConfig(image_size=(8, 8), max_pixels=300_000_000)
    # 225 MP is above Pillow's own bomb error (~179 MP) but within our limit: it gets
    # past the header check and only fails for lack of pixel data.
    with pytest.raises(BadImage) as info:
        decode_image(header_only_png(15000, 15000), cfg)
    assert "too large" not in info.value.reason and "DecompressionBomb" not in info.value.reason
    with pytest.raises(BadImage, match="too large: 20000x20000 > max_pixels=300000000"):
        decode_image(header_only_png(20000, 20000), cfg)


def test_unset_image_size_is_a_config_error():
    with pytest.raises(ConfigError, match="image_size is None"):
        decode_image(encode(Image.new("RGB", (4, 4))), DecodeConfig())


# --------------------------------------------------------------------------- batch and header


def test_decode_batch_reports_errors_per_item():
    good = encode(Image.new("RGB", (20, 10), RED))
    cfg = DecodeConfig(image_size=(5, 10), pad_value=9)
    images, errors = decode_batch([good, b"", b"not an image", good], cfg)
    assert images.shape == (4, 5, 10, 3) and images.dtype == np.uint8
    assert errors[0] is None and errors[3] is None
    assert "zero-byte" in errors[1] and "not an image" in errors[2]
    assert (images[0] == RED).all() and (images[1] == 9).all()


def test_image_info_reads_the_header():
    assert image_info(encode(Image.new("RGB", (30, 20)), "JPEG")) == (30, 20, "RGB", "JPEG")
    assert image_info(encode(Image.new("I;16", (7, 5))))[:3] == (7, 5, "I;16")
    assert image_info(header_only_png(5000, 4000)) == (5000, 4000, "RGB", "PNG")  # no decode needed
    with pytest.raises(BadImage, match="not an image"):
        image_info(b"hello")


def test_describe():
    text = describe(DecodeConfig(image_size=(128, 96), resize="pad", pad_value=3))
    assert "128x96" in text and "pad value 3" in text
