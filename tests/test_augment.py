"""augment.py: exact geometry with fixed parameters, the random draws, Ray Data's
Augmenter, and the preview grid (library and CLI, local and S3)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imgrec import storage
from imgrec.augment import (
    Augmenter,
    TransformParams,
    apply_transforms,
    augment_batch,
    inverse_matrices,
    preview_grid,
    random_transforms,
    save_preview,
)
from imgrec.cli import app
from imgrec.config import AugmentConfig, ConfigError

NEAREST = AugmentConfig()  # fill_mode/cval only; the parameters come from TransformParams


def dot_image(h: int = 33, w: int = 33, y: int = 10, x: int = 10) -> np.ndarray:
    img = np.zeros((1, h, w, 3), dtype=np.uint8)
    img[0, y, x] = 255
    return img


def peak(images: np.ndarray) -> tuple[int, int]:
    y, x = np.unravel_index(np.argmax(images[0, ..., 0]), images.shape[1:3])
    return int(y), int(x)


def random_images(n: int = 4, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- identity


def test_identity_config_returns_the_input_unchanged():
    images = random_images()
    assert augment_batch(images, AugmentConfig()) is images
    assert augment_batch(images, AugmentConfig.preset("none")) is images


def test_identity_parameters_are_exact_on_every_path():
    images = random_images()
    params = TransformParams.identity(len(images))
    out = apply_transforms(images, params, NEAREST)
    np.testing.assert_array_equal(out, images)
    assert out is not images  # a copy: callers may write into it
    # The resampling path with an identity map is exact too (no rounding drift).
    from imgrec.augment import _warp

    np.testing.assert_array_equal(_warp(images, params, "nearest", 0, params.brightness), images)


def test_zero_ranges_with_flags_off_are_the_identity():
    cfg = AugmentConfig(rotation_range=0, width_shift_range=0, zoom_range=0.0, shear_range=0, seed=1)
    assert not cfg.enabled
    images = random_images()
    np.testing.assert_array_equal(augment_batch(images, cfg), images)


# --------------------------------------------------------------------------- geometry


def test_shift_moves_a_dot_by_the_given_pixels():
    img = dot_image(y=10, x=10)
    out = apply_transforms(img, TransformParams.identity(1, shift_x=5), NEAREST)
    assert peak(out) == (10, 15)
    assert out[0, 10, 15, 0] == 255 and out.sum() == img.sum()  # integer shift: exact
    out = apply_transforms(img, TransformParams.identity(1, shift_y=-3), NEAREST)
    assert peak(out) == (7, 10)


def test_integer_shift_is_an_exact_translation():
    images = random_images(2, 20, 30)
    out = apply_transforms(images, TransformParams.identity(2, shift_x=5, shift_y=2), NEAREST)
    np.testing.assert_array_equal(out[:, 2:, 5:], images[:, :-2, :-5])


def test_rotation_by_90_degrees_moves_a_corner_dot_counter_clockwise():
    img = dot_image(y=2, x=2)  # near the top-left corner
    out = apply_transforms(img, TransformParams.identity(1, rotation=90), NEAREST)
    assert peak(out) == (30, 2)  # counter-clockwise: top-left -> bottom-left
    out = apply_transforms(img, TransformParams.identity(1, rotation=-90), NEAREST)
    assert peak(out) == (2, 30)  # clockwise: top-left -> top-right


def test_zoom_factor_above_one_zooms_out():
    img = np.zeros((1, 64, 64, 3), dtype=np.uint8)
    img[0, 16:48, 16:48] = 255  # a 32x32 white square, a quarter of the area
    out = apply_transforms(img, TransformParams.identity(1, zoom_x=2.0, zoom_y=2.0), NEAREST)
    white = (out[0, ..., 0] > 127).sum()
    assert 200 <= white <= 330  # ~16x16: content shrank by half (Keras: > 1 zooms out)
    assert out[0, 32, 32, 0] == 255 and out[0, 20, 20, 0] == 0
    out = apply_transforms(img, TransformParams.identity(1, zoom_x=0.5, zoom_y=0.5), NEAREST)
    assert (out[0, ..., 0] > 127).all()  # zoomed in: the square fills the frame


def test_shear_slants_columns_and_keeps_the_centre_row():
    img = np.zeros((1, 33, 33, 3), dtype=np.uint8)
    img[0, :, 20] = 255  # a vertical line
    out = apply_transforms(img, TransformParams.identity(1, shear=30), NEAREST)
    np.testing.assert_array_equal(out[0, 16], img[0, 16])  # the centre row does not move
    expected_top = 20 - np.tan(np.deg2rad(30)) * 16  # x' = x + tan(s) * (y - cy)
    assert abs(int(np.argmax(out[0, 0, :, 0])) - expected_top) <= 1


def test_inverse_matrices_of_the_identity():
    mats = inverse_matrices(TransformParams.identity(3), 10, 20)
    np.testing.assert_allclose(mats, np.tile([[1.0, 0, 0], [0, 1.0, 0]], (3, 1, 1)), atol=1e-12)


# --------------------------------------------------------------------------- fill modes


def column_ramp(h: int = 4, w: int = 16) -> np.ndarray:
    ramp = (np.arange(w) * 10).astype(np.uint8)
    return np.broadcast_to(ramp[None, None, :, None], (1, h, w, 3)).copy()


@pytest.mark.parametrize(
    "fill_mode, expected_left",
    [
        ("nearest", [0, 0, 0, 0]),  # repeat the edge column
        ("constant", [7, 7, 7, 7]),  # cval
        ("reflect", [30, 20, 10, 0]),  # d c b a | a b c d
        ("wrap", [120, 130, 140, 150]),  # the right edge comes round
    ],
)
def test_fill_modes(fill_mode, expected_left):
    img = column_ramp()
    cfg = AugmentConfig(fill_mode=fill_mode, cval=7)
    out = apply_transforms(img, TransformParams.identity(1, shift_x=4), cfg)
    assert out[0, 0, :4, 0].tolist() == expected_left
    np.testing.assert_array_equal(out[0, :, 4:], img[0, :, :-4])  # the rest moved exactly


def test_constant_fill_covers_everything_outside():
    img = np.full((1, 16, 16, 3), 200, dtype=np.uint8)
    cfg = AugmentConfig(fill_mode="constant", cval=0)
    out = apply_transforms(img, TransformParams.identity(1, rotation=45, zoom_x=2, zoom_y=2), cfg)
    assert out[0, 0, 0, 0] == 0 and out[0, 8, 8, 0] == 200


# --------------------------------------------------------------------------- flips and brightness


def test_horizontal_flip_mirrors_exactly_about_half_the_time():
    images = random_images(n=32)
    cfg = AugmentConfig(horizontal_flip=True)
    out = augment_batch(images, cfg, np.random.default_rng(7))
    flipped = random_transforms(32, cfg, np.random.default_rng(7), 24, 32).flip_h
    assert 0 < flipped.sum() < 32
    for i in range(32):
        expected = images[i, :, ::-1] if flipped[i] else images[i]
        np.testing.assert_array_equal(out[i], expected)


def test_vertical_flip_mirrors_rows():
    images = random_images(n=2)
    out = apply_transforms(images, TransformParams.identity(2, flip_v=[True, False]), NEAREST)
    np.testing.assert_array_equal(out[0], images[0, ::-1])
    np.testing.assert_array_equal(out[1], images[1])


def test_flip_is_applied_after_the_warp():
    images = random_images(n=1, h=10, w=20)
    params = TransformParams.identity(1, shift_x=3, flip_h=True)
    out = apply_transforms(images, params, NEAREST)
    shifted = apply_transforms(images, TransformParams.identity(1, shift_x=3), NEAREST)
    np.testing.assert_array_equal(out, shifted[:, :, ::-1])


def test_brightness_scales_and_clips():
    img = np.full((2, 8, 8, 3), 100, dtype=np.uint8)
    img[1] = 200
    out = apply_transforms(img, TransformParams.identity(2, brightness=1.5), NEAREST)
    assert (out[0] == 150).all() and (out[1] == 255).all()


def test_brightness_scales_the_mean_on_both_paths():
    images = random_images(n=1, h=64, w=64)
    for params in (
        TransformParams.identity(1, brightness=0.8),  # no warp
        TransformParams.identity(1, brightness=0.8, shift_x=0.0, rotation=1e-9),  # via the warp
    ):
        out = apply_transforms(images, params, NEAREST)
        assert abs(out.mean() - 0.8 * images.mean()) < 0.6


# --------------------------------------------------------------------------- random draws


def test_random_transforms_respect_the_ranges():
    cfg = AugmentConfig(
        rotation_range=40, width_shift_range=0.2, height_shift_range=3, zoom_range=(0.5, 0.9), shear_range=10,
        brightness_range=(0.8, 1.2), horizontal_flip=True,
    )  # fmt: skip
    p = random_transforms(2000, cfg, np.random.default_rng(0), height=50, width=100)
    assert np.abs(p.rotation).max() <= 40 and np.abs(p.shear).max() <= 10
    assert np.abs(p.shift_x).max() <= 20 and np.abs(p.shift_x).max() > 15  # 0.2 of the width
    assert np.abs(p.shift_y).max() <= 3  # >= 1: pixels, as Keras
    assert 0.5 <= p.zoom_x.min() and p.zoom_y.max() <= 0.9
    assert not np.allclose(p.zoom_x, p.zoom_y)  # x and y drawn independently, as Keras
    assert 0.8 <= p.brightness.min() and p.brightness.max() <= 1.2
    assert 0.4 < p.flip_h.mean() < 0.6 and not p.flip_v.any()


def test_course_preset_keeps_dtype_and_shape():
    images = random_images(n=8, h=40, w=30)
    out = augment_batch(images, AugmentConfig.preset("course"), np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert not np.array_equal(out, images)


def test_bad_input_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match=r"uint8 images of shape \(N, H, W, 3\)"):
        augment_batch(np.zeros((2, 8, 8, 3), dtype=np.float32), AugmentConfig.preset("course"))


def test_config_validation():
    with pytest.raises(ConfigError, match="zoom_range"):
        AugmentConfig(zoom_range=1.5)
    with pytest.raises(ConfigError, match="brightness_range"):
        AugmentConfig(brightness_range=(1.2, 0.8))
    with pytest.raises(ConfigError, match="fill_mode"):
        AugmentConfig(fill_mode="mirror")


# --------------------------------------------------------------------------- Augmenter (Ray Data)


def batch(n: int = 6) -> dict[str, np.ndarray]:
    return {
        "image": random_images(n=n, h=16, w=16),
        "label": np.arange(n),
        "path": np.array([f"s3://b/train/cls/{i}.jpg" for i in range(n)]),
    }


def test_seeded_augmenter_is_deterministic_across_instances():
    cfg = AugmentConfig(**{**vars(AugmentConfig.preset("course")), "seed": 123})
    a, b = Augmenter(cfg), Augmenter(cfg)
    first_a, first_b = a(batch()), b(batch())
    np.testing.assert_array_equal(first_a["image"], first_b["image"])
    np.testing.assert_array_equal(first_a["label"], np.arange(6))  # other columns pass through
    second_a = a(batch())
    assert not np.array_equal(first_a["image"], second_a["image"])  # fresh per call
    np.testing.assert_array_equal(second_a["image"], b(batch())["image"])
    other_paths = {**batch(), "path": np.array([f"x{i}" for i in range(6)])}
    assert not np.array_equal(Augmenter(cfg)(other_paths)["image"], first_a["image"])


def test_unseeded_augmenter_is_random():
    augmenter = Augmenter(AugmentConfig.preset("course"))
    assert not np.array_equal(augmenter(batch())["image"], augmenter(batch())["image"])


def test_augmenter_accepts_a_config_dict_and_object_arrays():
    from imgrec.config import to_dict

    augmenter = Augmenter(to_dict(AugmentConfig(horizontal_flip=True, seed=0)))
    images = random_images(n=3, h=8, w=8)
    ragged = np.empty(3, dtype=object)
    for i in range(3):
        ragged[i] = images[i]
    out = augmenter({"image": ragged})["image"]
    assert out.shape == (3, 8, 8, 3) and out.dtype == np.uint8


# --------------------------------------------------------------------------- preview


def png_bytes(h: int = 64, w: int = 64) -> bytes:
    img = Image.new("RGB", (w, h), (200, 220, 255))
    img.paste((200, 30, 30), (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def png_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def test_preview_grid_is_one_row_of_n():
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    fig = preview_grid(image, AugmentConfig.preset("course"), n=5, seed=0)
    assert len(fig.axes) == 5
    width, height = fig.get_size_inches()
    assert width / height == pytest.approx(5 * 48 / 32)


def test_save_preview_from_a_local_file(tmp_path):
    src = tmp_path / "cat.png"
    src.write_bytes(png_bytes(64, 64))
    out = save_preview(str(src), str(tmp_path / "grid.png"), AugmentConfig.preset("course"), n=8, seed=1)
    width, height = png_size((tmp_path / "grid.png").read_bytes())
    assert out == str(tmp_path / "grid.png")
    assert width / height == pytest.approx(8, rel=0.02)  # a 1x8 grid of square samples


def test_cli_preview_local(tmp_path):
    src = tmp_path / "dog.png"
    src.write_bytes(png_bytes(48, 96))  # 2:1 samples -> a 16:1 strip
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(
        app,
        ["augment", "preview", str(src), "--out", str(out), "-n", "8", "--seed", "3",
         "--fill-mode", "reflect", "--zoom-range", "0.9,1.1", "--brightness-range", "none"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "fill_mode='reflect'" in result.output and "brightness_range" not in result.output
    width, height = png_size(out.read_bytes())
    assert width / height == pytest.approx(16, rel=0.03)


def test_cli_preview_from_s3(bucket, tmp_path):
    uri = f"{bucket}/train/cat/001.png"
    storage.atomic_write(uri, png_bytes(64, 64))
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(app, ["augment", "preview", uri, "--out", str(out), "-n", "8"])
    assert result.exit_code == 0, result.output
    width, height = png_size(out.read_bytes())
    assert width / height == pytest.approx(8, rel=0.02)
    # ... and the grid can go to S3 too.
    result = CliRunner().invoke(
        app, ["augment", "preview", uri, "--out", f"{bucket}/previews/grid.png", "-n", "4"]
    )
    assert result.exit_code == 0, result.output
    width, height = png_size(storage.read_bytes(f"{bucket}/previews/grid.png"))
    assert width / height == pytest.approx(4, rel=0.02)


def test_cli_preview_errors_are_one_line(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    result = CliRunner().invoke(app, ["augment", "preview", str(text), "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 2 and "not an image" in result.output
    src = tmp_path / "ok.png"
    src.write_bytes(png_bytes())
    result = CliRunner().invoke(app, ["augment", "preview", str(src), "--zoom-range", "big"])
    assert result.exit_code == 2 and "--zoom-range" in result.output
