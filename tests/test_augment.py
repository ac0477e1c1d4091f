"""augment.py: exact geometry with fixed parameters, the random draws, Ray Data's
Augmenter, and the preview grid (library and CLI, local and S3)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps
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


# --------------------------------------------------------------------------- RandAugment

RA_PARAMS = TransformParams.identity(1).values
RA = {name: RA_PARAMS[name][0] for name in RA_PARAMS if name.startswith("ra_")}  # identity values


def ra_images(seed: int = 0) -> np.ndarray:
    """Random images, one with a narrow range (autocontrast stretches it) and a flat channel,
    one of few grey levels (equalize's lookup table is then coarse)."""
    images = random_images(n=4, h=20, w=24, seed=seed)  # > 256 pixels: equalize changes them
    images[1] = images[1] // 3 + 60
    images[1, ..., 2] = 90
    images[2] = (images[2] // 64) * 50
    return images


def pil(images: np.ndarray, fn) -> np.ndarray:
    return np.stack([np.asarray(fn(Image.fromarray(img))) for img in images])


def ra_apply(images: np.ndarray, **params) -> np.ndarray:
    return apply_transforms(images, TransformParams.identity(len(images), **params), NEAREST)


@pytest.mark.parametrize("param, values, reference", [
    ("ra_color", [0.1, 0.73, 1.27, 1.9], lambda v: lambda im: ImageEnhance.Color(im).enhance(v)),
    ("ra_contrast", [0.1, 0.73, 1.27, 1.9], lambda v: lambda im: ImageEnhance.Contrast(im).enhance(v)),
    ("ra_sharpness", [0.1, 0.73, 1.27, 1.9], lambda v: lambda im: ImageEnhance.Sharpness(im).enhance(v)),
    ("ra_posterize", [1, 4, 7, 8], lambda v: lambda im: ImageOps.posterize(im, int(v))),
    ("ra_solarize", [0.0, 127.5, 178.5, 255.0], lambda v: lambda im: ImageOps.solarize(im, int(np.ceil(v)))),
    ("ra_autocontrast", [True] * 4, lambda v: ImageOps.autocontrast),
    ("ra_equalize", [True] * 4, lambda v: ImageOps.equalize),
])  # fmt: skip
def test_randaugment_colour_ops_match_pil(param, values, reference):
    images = ra_images()
    out = ra_apply(images, **{param: values})
    expected = np.stack([pil(images[i : i + 1], reference(v))[0] for i, v in enumerate(values)])
    assert out.dtype == np.uint8 and out.shape == images.shape
    # PIL truncates its blends and autocontrast table, these round: one grey level apart at most.
    exact = param in ("ra_posterize", "ra_solarize", "ra_equalize")
    assert np.abs(out.astype(int) - expected).max() <= (0 if exact else 1)
    assert (out != images).any()


def test_randaugment_colour_ops_against_direct_formulas():
    images = ra_images(seed=1)
    x = images.astype(float)
    grey = np.floor(0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2] + 0.5)[..., None]
    out = ra_apply(images, ra_color=0.5)
    np.testing.assert_allclose(out, np.clip(np.floor(grey + 0.5 * (x - grey) + 0.5), 0, 255), atol=1)
    out = ra_apply(images, ra_contrast=1.5)
    mean = np.floor(grey.mean(axis=(1, 2, 3), keepdims=True) + 0.5)
    np.testing.assert_allclose(out, np.clip(np.floor(mean + 1.5 * (x - mean) + 0.5), 0, 255), atol=1)
    np.testing.assert_array_equal(ra_apply(images, ra_posterize=3), images & 0b11100000)
    np.testing.assert_array_equal(ra_apply(images, ra_solarize=100.0), np.where(images >= 100, 255 - images, images))
    # Sharpness: the border is kept, the interior of a flat image too (the kernel sums to one).
    out = ra_apply(images, ra_sharpness=1.9)
    for edge in (np.s_[:, 0], np.s_[:, -1], np.s_[:, :, 0], np.s_[:, :, -1]):
        np.testing.assert_array_equal(out[edge], images[edge])
    flat = np.full((1, 5, 5, 3), 77, np.uint8)
    np.testing.assert_array_equal(ra_apply(flat, ra_sharpness=1.9), flat)
    # Autocontrast per channel, a flat channel left alone.
    out = ra_apply(images, ra_autocontrast=True)
    assert (out[[0, 1], ..., :2].min(axis=(1, 2)) == 0).all() and (out[[0, 1], ..., :2].max(axis=(1, 2)) == 255).all()
    np.testing.assert_array_equal(out[1, ..., 2], images[1, ..., 2])


def test_randaugment_colour_ops_apply_after_the_warp_in_a_fixed_order():
    images = random_images(n=2, h=10, w=20)
    out = ra_apply(images, ra_shift_x=3.0, ra_brightness=1.2, ra_solarize=128.0, ra_posterize=4)
    warped = apply_transforms(images, TransformParams.identity(2, shift_x=3.0, brightness=1.2), NEAREST)
    posterized = warped & 0xF0  # posterize before solarize, whatever order an image drew them in
    np.testing.assert_array_equal(out, np.where(posterized >= 128, 255 - posterized, posterized))


def test_randaugment_geometry_is_the_explicit_warp():
    images = random_images(n=3, h=20, w=24)
    same = [
        ({"ra_rotation": [12.0, -30.0, 0.5]}, {"rotation": [12.0, -30.0, 0.5]}),
        ({"ra_shift_x": [4.0, -4.0, 2.5], "ra_shift_y": 3.0}, {"shift_x": [4.0, -4.0, 2.5], "shift_y": 3.0}),
        ({"ra_shear_x": np.tan(np.deg2rad([10.0, -17.0, 5.0]))}, {"shear": [10.0, -17.0, 5.0]}),
        ({"ra_brightness": [0.73, 1.27, 1.0]}, {"brightness": [0.73, 1.27, 1.0]}),
    ]
    for ra, explicit in same:
        np.testing.assert_array_equal(ra_apply(images, **ra), ra_apply(images, **explicit))
    # ShearY: y' = y + b·x about the centre; the centre column stays, a row slants.
    img = np.zeros((1, 33, 33, 3), dtype=np.uint8)
    img[0, 20, :] = 255
    out = ra_apply(img, ra_shear_y=0.3)
    np.testing.assert_array_equal(out[0, :, 16], img[0, :, 16])
    assert abs(int(np.argmax(out[0, :, 0, 0])) - (20 - 0.3 * 16)) <= 1


def test_randaugment_draws_num_ops_distinct_ops_per_image():
    n, h, w = 700, 24, 32
    for k in (1, 2, 5, 14):
        cfg = AugmentConfig(randaugment_ops=k, randaugment_magnitude=9)
        p = random_transforms(n, cfg, np.random.default_rng(k), h, w)
        changed = np.stack([p.values[name] != identity for name, identity in RA.items()], 1)  # (n, 14)
        assert (changed.sum(1) == k).all()  # ra_identity marks a drawn Identity
        assert np.allclose(changed.mean(0), k / 14, atol=0.08)  # every op as likely
        assert (p.shift_x == 0).all() and not p.flip_h.any()  # the other ops stay off
    values = p.values
    assert set(np.abs(values["ra_shear_x"])) == {0.09} and set(np.abs(values["ra_rotation"])) == {9.0}
    assert set(np.abs(values["ra_shift_x"])) == {4.0} and set(np.abs(values["ra_shift_y"])) == {3.0}  # int(150/331·size·0.3)
    assert set(np.round(values["ra_color"], 6)) == {0.73, 1.27} and 0.4 < (values["ra_color"] < 1).mean() < 0.6
    assert set(values["ra_posterize"]) == {7} and set(values["ra_solarize"]) == {178.5}
    assert values["ra_posterize"].dtype == RA_PARAMS["ra_posterize"].dtype


def test_randaugment_magnitude_zero_is_the_identity_but_for_the_magnitude_free_ops():
    images = random_images(n=8, h=16, w=16)
    images[images == 255] = 254  # solarize at 0 inverts only 255s (torchvision's threshold 255)
    cfg = AugmentConfig(randaugment_ops=14, randaugment_magnitude=0)
    p = random_transforms(8, cfg, np.random.default_rng(0), 16, 16)
    free = {"ra_identity", "ra_autocontrast", "ra_equalize"}
    for name, identity in RA.items():
        if name not in free | {"ra_solarize"}:
            assert (p.values[name] == identity).all(), name
    assert p.ra_autocontrast.all() and p.ra_equalize.all() and (p.ra_solarize == 255).all()
    p.ra_autocontrast[:], p.ra_equalize[:] = False, False
    np.testing.assert_array_equal(apply_transforms(images, p, cfg), images)


def test_randaugment_preset_is_seeded_and_keeps_dtype_and_shape():
    cfg = AugmentConfig.preset("randaugment")
    assert cfg == AugmentConfig(horizontal_flip=True, randaugment_ops=2, randaugment_magnitude=9)
    for images in (random_images(n=16, h=32, w=32), random_images(n=3, h=40, w=30)):
        out = augment_batch(images, cfg, np.random.default_rng(4))
        assert out.dtype == np.uint8 and out.shape == images.shape and not np.array_equal(out, images)
        np.testing.assert_array_equal(out, augment_batch(images, cfg, np.random.default_rng(4)))
        assert not np.array_equal(out, augment_batch(images, cfg, np.random.default_rng(5)))
    seeded = Augmenter(AugmentConfig(**{**vars(cfg), "seed": 9}))
    np.testing.assert_array_equal(seeded(batch())["image"], Augmenter(seeded.cfg)(batch())["image"])


def test_randaugment_config_validation_and_round_trips():
    import json

    from imgrec.augment import describe, preset_names
    from imgrec.config import TrainConfig, from_dict, to_dict

    for field, bad in [("randaugment_ops", 15), ("randaugment_ops", -1), ("randaugment_ops", 2.5),
                       ("randaugment_ops", True), ("randaugment_magnitude", 31), ("randaugment_magnitude", -1)]:
        with pytest.raises(ConfigError, match=f"^{field} must be an integer 0..") as info:
            AugmentConfig(**{field: bad})
        assert info.value.field == field and "\n" not in str(info.value)
    assert AugmentConfig(randaugment_ops=np.int64(3)).randaugment_ops == 3
    assert not AugmentConfig(randaugment_magnitude=30).enabled  # no ops: off

    cfg = AugmentConfig.preset("randaugment")
    assert "randaugment" in preset_names() and describe(cfg) == "horizontal_flip=True, randaugment_ops=2"
    assert from_dict(AugmentConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    train = TrainConfig(augment=cfg)
    assert from_dict(TrainConfig, json.loads(json.dumps(to_dict(train)))).augment == cfg
    # A manifest written before RandAugment existed has neither field: it loads, RandAugment off.
    old = to_dict(TrainConfig(augment=AugmentConfig.preset("course")))
    del old["augment"]["randaugment_ops"], old["augment"]["randaugment_magnitude"]
    assert from_dict(TrainConfig, old).augment == AugmentConfig.preset("course")


def test_cli_preview_randaugment(tmp_path):
    src = tmp_path / "cat.png"
    src.write_bytes(png_bytes(32, 32))
    result = CliRunner().invoke(
        app, ["augment", "preview", str(src), "--out", str(tmp_path / "g.png"), "-n", "3", "--seed", "1",
              "--preset", "randaugment", "--randaugment-magnitude", "20"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "randaugment_ops=2, randaugment_magnitude=20" in result.output
    result = CliRunner().invoke(app, ["augment", "preview", str(src), "--randaugment-ops", "15"])
    assert result.exit_code == 2 and "randaugment_ops must be an integer 0..14, got 15" in result.output
