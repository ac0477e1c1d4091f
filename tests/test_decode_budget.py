"""Hostile and huge files: decoding is bounded by a format allow-list, a file-size
cap and a memory budget computed from the header, each refusal a ``BadImage``
reason naming the format or the limit. Peak memory is measured as the peak RSS
(``VmHWM``) of a fresh Python process decoding one planted file; ordinary large
photos (48 MP JPEG, 24 MP PNG) still decode."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from imgrec import data as D
from imgrec import storage
from imgrec.config import IMAGE_FORMATS, ConfigError, DecodeConfig, from_dict, to_dict
from imgrec.decode import BadImage, decode_image, image_info, plan_decode

PEAK_LIMIT_MB = 300
WITH_TIFF = IMAGE_FORMATS + ("TIFF",)


# --------------------------------------------------------------------------- planted files


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    body = _chunk(b"IDAT", idat) if idat else b""
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + body + _chunk(b"IEND", b"")


def png16_bomb(side: int = 7900) -> bytes:
    """The issue's bomb: ~120 KB of zlib for a 16-bit greyscale side x side PNG
    (before this budget: 1.16 GB to decode)."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + 2 * side)  # filter byte + zero pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return _png(side, side, 16, 0, idat)


def float_tiff(side: int = 6000) -> bytes:
    buf = io.BytesIO()
    Image.new("F", (side, side)).save(buf, "TIFF", compression="tiff_adobe_deflate")
    return buf.getvalue()


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 30000 30000\n%%EndComments\nshowpage\n%%EOF\n"
PSD = b"8BPS" + struct.pack(">H", 1) + b"\0" * 6 + struct.pack(">HIIHH", 3, 30000, 30000, 8, 3) + b"\0" * 76


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted")
    files = {
        "bomb16.png": png16_bomb(),
        "float.tif": float_tiff(),
        "eps.jpg": EPS,  # an EPS file named .jpg: Pillow would look for Ghostscript
        "psd.jpg": PSD,
        "budget_header.png": _png(7000, 7000, 8, 2),  # 49 MP RGB: under max_pixels, over the budget
        "giant_header.png": _png(100_000, 100_000, 8, 2),
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


# Decodes one file in a fresh interpreter and reports the reason, the peak RSS and
# whether Pillow's EPS plugin parsed anything (a spy on its _open).
_CHILD = """
import json, sys
from PIL import EpsImagePlugin
from imgrec.config import DecodeConfig
from imgrec.decode import BadImage, decode_image
eps_ran = []
original = EpsImagePlugin.EpsImageFile._open
def spy(self):
    eps_ran.append(True)
    return original(self)
EpsImagePlugin.EpsImageFile._open = spy
path, cfg = sys.argv[1], DecodeConfig(**json.loads(sys.argv[2]))
data = open(path, "rb").read()
try:
    shape, reason = list(decode_image(data, cfg).shape), None
except BadImage as exc:
    shape, reason = None, exc.reason
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest)
# across exec, while VmHWM belongs to this process's own address space.
status = open("/proc/self/status").read()
peak_mb = int(status.split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({"shape": shape, "reason": reason, "peak_mb": peak_mb, "eps_ran": bool(eps_ran)}))
"""


def decode_in_fresh_process(path, **cfg) -> dict:
    cfg = {"image_size": [224, 224], **cfg}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path), json.dumps(cfg)],
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name, cfg, words", [
    ("bomb16.png", {}, ["over the decode budget", "7900x7900 mode I;16", "max_decode_bytes"]),
    ("float.tif", {}, ["refused format: the file is TIFF", "DecodeConfig.formats"]),
    ("float.tif", {"formats": WITH_TIFF}, ["over the decode budget", "mode F", "max_decode_bytes"]),
    ("eps.jpg", {}, ["refused format: the file is EPS"]),
    ("psd.jpg", {}, ["refused format: the file is PSD"]),
    ("budget_header.png", {}, ["over the decode budget", "7000x7000 mode RGB"]),
    ("giant_header.png", {}, ["too large: 10000000000 pixels > max_pixels", "raise DecodeConfig.max_pixels"]),
])
def test_planted_file_is_refused_with_a_reason_and_bounded_memory(planted, name, cfg, words):
    result = decode_in_fresh_process(planted / name, **cfg)
    assert result["shape"] is None
    for word in words:
        assert word in result["reason"], result["reason"]
    assert result["peak_mb"] < PEAK_LIMIT_MB, result
    assert not result["eps_ran"]  # Pillow's EPS plugin never parsed anything


def test_the_eps_spy_does_see_pillows_eps_plugin(planted):
    """The check above means something: without the allow-list Pillow parses the EPS."""
    opens = "from PIL import Image\ntry:\n    Image.open(sys.argv[1])\nexcept Exception:\n    pass\n"
    code = _CHILD.split("path, cfg")[0] + opens + "print(eps_ran)\n"
    done = subprocess.run([sys.executable, "-c", code, str(planted / "eps.jpg")],
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[True]"


@pytest.fixture(scope="module")
def big_photos(tmp_path_factory):
    """A 48 MP RGB JPEG (8000x6000) and a 24 MP RGB PNG (6000x4000) with photo-like
    noise, built by tiling one random block (cheap to make, still real files)."""
    folder = tmp_path_factory.mktemp("photos")
    block = np.random.default_rng(0).integers(0, 255, (500, 500, 3), dtype=np.uint8)
    Image.fromarray(np.tile(block, (12, 16, 1))).save(folder / "48mp.jpg", quality=90)
    Image.fromarray(np.tile(block, (8, 12, 1))).save(folder / "24mp.png", compress_level=1)
    return folder


@pytest.mark.parametrize("name", ["48mp.jpg", "24mp.png"])
@pytest.mark.parametrize("resize", ["stretch", "crop"])
def test_ordinary_large_photos_still_decode(big_photos, name, resize):
    result = decode_in_fresh_process(big_photos / name, resize=resize)
    assert result["shape"] == [224, 224, 3], result["reason"]
    assert result["peak_mb"] < PEAK_LIMIT_MB, result


# --------------------------------------------------------------------------- the budget and its settings


def test_the_budget_is_known_before_decoding_and_matches_the_image():
    data = _png(6000, 4000, 8, 2)  # a header only: planning must not need the pixels
    plan = plan_decode(data, DecodeConfig(image_size=(224, 224)))
    assert 96_000_000 <= plan.memory_bytes < 100_000_000  # 4 bytes a pixel in Pillow, plus the resize
    grey = plan_decode(_png(6000, 4000, 8, 0), DecodeConfig(image_size=(224, 224)))
    assert grey.memory_bytes < plan.memory_bytes / 3  # greyscale stays one byte a pixel


def test_a_larger_budget_lets_the_16_bit_bomb_decode_in_strips(planted):
    """Raising the budget is a real option: wide pixels are converted strip by
    strip, never as a full-size int64 copy (1.16 GB before)."""
    result = decode_in_fresh_process(planted / "bomb16.png", max_decode_bytes=400_000_000)
    assert result["shape"] == [224, 224, 3]
    assert result["peak_mb"] < PEAK_LIMIT_MB, result


def test_16_bit_strips_give_exactly_the_per_pixel_rule():
    values = np.random.default_rng(3).integers(0, 65536, (1500, 2100), dtype=np.uint16)  # several strips
    out = decode_image(_encode(Image.fromarray(values)), DecodeConfig(image_size=(1500, 2100)))
    expected = ((values.astype(np.int64) + 128) // 257).astype(np.uint8)
    assert (out[..., 0] == expected).all() and (out[..., 2] == expected).all()


def test_file_size_cap():
    data = _encode(Image.new("RGB", (64, 64)), "BMP")  # 12 KB
    with pytest.raises(BadImage, match=r"file too large: \d+ bytes > max_file_bytes=1000; raise DecodeConfig"):
        decode_image(data, DecodeConfig(image_size=(8, 8), max_file_bytes=1000))


def _encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP", "MPO"])
def test_every_allowed_format_decodes(fmt):
    img = Image.new("RGB", (40, 30), (200, 30, 40))
    out = decode_image(_encode(img, fmt), DecodeConfig(image_size=(30, 40)))
    assert np.abs(out.astype(int) - (200, 30, 40)).max() < 12


@pytest.mark.parametrize("fmt, named", [("ICO", "ICO"), ("TIFF", "TIFF"), ("PPM", "PPM")])
def test_formats_outside_the_list_are_refused_by_name(fmt, named):
    data = _encode(Image.new("RGB", (16, 16)), fmt)
    with pytest.raises(BadImage, match=f"refused format: the file is {named}"):
        decode_image(data, DecodeConfig(image_size=(8, 8)))
    with pytest.raises(BadImage, match="refused format"):
        image_info(data)


def test_tiff_is_an_opt_in():
    data = _encode(Image.new("RGB", (16, 16), (0, 0, 255)), "TIFF")
    out = decode_image(data, DecodeConfig(image_size=(8, 8), formats=WITH_TIFF))
    assert out[0, 0].tolist() == [0, 0, 255]


def test_decode_settings_are_validated_and_round_trip():
    cfg = DecodeConfig(image_size=(8, 8), formats=["png", "jpeg"], max_decode_bytes=10**8)
    assert cfg.formats == ("PNG", "JPEG")
    assert from_dict(DecodeConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    with pytest.raises(ConfigError, match="formats must be a non-empty subset of"):
        DecodeConfig(formats=("EPS",))
    with pytest.raises(ConfigError, match="max_decode_bytes must be >= 1"):
        DecodeConfig(max_decode_bytes=0)


# --------------------------------------------------------------------------- reading: cap and concurrency


def test_oversized_objects_are_refused_before_their_body_is_read(bucket, tmp_path):
    small = _encode(Image.new("RGB", (8, 8)), "PNG")
    big = _encode(Image.new("RGB", (300, 300)), "BMP")  # 270 KB
    for root in (f"{bucket}/imgs", str(tmp_path)):
        storage.write_bytes(storage.join(root, "small.png"), small)
        storage.write_bytes(storage.join(root, "big.jpg"), big)
        udf = D.DecodeImages(DecodeConfig(image_size=(8, 8), max_file_bytes=100_000))
        errors = udf.errors([storage.join(root, "small.png"), storage.join(root, "big.jpg")])
        assert errors[0] == ""
        assert errors[1].startswith(f"file too large: {len(big)} bytes > max_file_bytes=100000")
        with pytest.raises(BadImage, match="file too large"):
            D.fetch_bytes(storage.join(root, "big.jpg"), max_bytes=100_000)


def test_a_body_is_read_whole_when_it_grew_after_its_size_was_listed():
    # The body is asked for at its listed size + 1 (not max_file_bytes + 1, which
    # allocates that much per file); a longer body is read on, up to the cap.
    from imgrec.data.read import _read_body

    body = bytes(range(256)) * 40  # 10240 bytes
    assert _read_body(io.BytesIO(body), 100_000, len(body)) == body
    assert _read_body(io.BytesIO(body), 100_000, 100) == body  # grew from 100 bytes
    assert _read_body(io.BytesIO(body), None, 100) == body
    with pytest.raises(BadImage, match="file too large: 10001 bytes > max_file_bytes=10000"):
        _read_body(io.BytesIO(body), 10_000, 100)


def test_s3_objects_are_read_on_threads_and_local_files_on_the_calling_one(bucket, tmp_path):
    # Local decodes on one thread (Ray Data's tasks use the cores; threads only add GIL
    # contention), S3 GETs on many (each GET waits on the network).
    png = _encode(Image.new("RGB", (8, 8)), "PNG")
    seen: dict[str, set[int]] = {}

    class Recording(D.DecodeImages):
        def one(self, uri):
            seen.setdefault("s3" if uri.startswith("s3://") else "local", set()).add(threading.get_ident())
            return super().one(uri)

    for root in (f"{bucket}/threads", str(tmp_path)):
        paths = [storage.join(root, f"{i}.png") for i in range(32)]
        for p in paths:
            storage.write_bytes(p, png)
        assert Recording(DecodeConfig(image_size=(8, 8))).errors(paths) == [""] * 32
    assert seen["local"] == {threading.get_ident()}
    assert threading.get_ident() not in seen["s3"] and len(seen["s3"]) > 1


def test_memory_gate_bounds_bytes_in_flight_and_never_deadlocks():
    gate = D.MemoryGate(limit=100)
    in_flight, peak = [0], [0]
    lock = threading.Lock()

    def image(read: int, decode: int) -> None:
        with gate.hold(read):
            with gate.hold(decode, decoding=True):
                with lock:
                    in_flight[0] += read + decode
                    peak[0] = max(peak[0], in_flight[0])
                time.sleep(0.01)
                with lock:
                    in_flight[0] -= read + decode

    # reads of 40 fill the gate; each decode of 50 must still get through
    threads = [threading.Thread(target=image, args=(40, 50)) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads), "threads blocked one another"
    assert gate.held == 0 and peak[0] <= 100 + 90  # the limit plus one image at most


def test_read_threads_respect_the_inflight_limit(tmp_path):
    """A decode task whose limit fits one image at a time still decodes every file."""
    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        path.write_bytes(_encode(Image.new("RGB", (800, 600), (i * 40, 0, 0))))
        paths.append(str(path))
    cfg = DecodeConfig(image_size=(8, 8), max_inflight_bytes=2_500_000)  # ~one 800x600 image
    images = D.DecodeImages(cfg, io_threads=6)({"path": np.array(paths, dtype=object)})
    assert (images["error"] == "").all()
    assert [int(v) for v in images["image"][:, 0, 0, 0]] == [i * 40 for i in range(6)]
