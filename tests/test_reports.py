"""Reports people look at: the mistakes gallery and the clickable confusion matrix
of the shared run's report, Grad-CAM (a tiny Keras model trained here on a task
decided by one corner), and ``imgrec explain``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import CIFAR_DEV, needs_photos
from typer.testing import CliRunner

from imgrec import storage
from imgrec.layout import RunLayout

SIZE = (32, 40)  # not square: maps must keep the input's aspect


def _corner_task(n: int, seed: int):
    """Noise images; class 1 has a bright square in the top-left corner, class 0 none."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 120, (n, *SIZE, 3)).astype(np.uint8)
    y = np.arange(n) % 2
    x[y == 1, 2:10, 2:10] = 250
    return x, y


def _tiny_cnn(nested: bool):
    import keras

    L = keras.layers
    inputs = keras.Input((*SIZE, 3), dtype="uint8")
    x = L.Rescaling(1 / 255)(inputs)
    convs = [L.Conv2D(8, 3, padding="same", activation="relu"), L.MaxPooling2D(),
             L.Conv2D(16, 3, padding="same", activation="relu", name="last_conv")]
    if nested:  # a backbone as a sub-model, as keras.applications builds them
        x = keras.Sequential(convs, name="backbone")(x)
    else:
        for layer in convs:
            x = layer(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(2, activation="softmax")(x))


def test_grad_cam_peaks_where_the_class_is_decided():
    import keras

    from imgrec.explain import grad_cam, last_conv_layer

    keras.utils.set_random_seed(0)
    assert last_conv_layer(_tiny_cnn(nested=True)).name == "last_conv"
    model = _tiny_cnn(nested=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x, y = _corner_task(400, seed=1)
    model.fit(x, y, epochs=12, batch_size=32, verbose=0)
    xt, yt = _corner_task(40, seed=2)
    assert model.evaluate(xt, yt, verbose=0)[1] > 0.95
    cams = grad_cam(model, xt[yt == 1])
    assert cams.shape == (int((yt == 1).sum()), *SIZE)
    assert cams.min() >= 0.0 and cams.max() <= 1.0 and cams.max() > 0.5
    h, w = SIZE
    peaks = [np.unravel_index(np.argmax(c), c.shape) for c in cams]
    in_corner = [r < h // 2 and c < w // 2 for r, c in peaks]
    assert np.mean(in_corner) >= 0.9, peaks
    # The heat over the corner outweighs the rest of the image.
    assert cams[:, : h // 3, : w // 3].mean() > 2 * cams[:, h // 2:, w // 2:].mean()


def _check_items(items, names, *, wrong: bool):
    conf = [i["confidence"] for i in items]
    assert conf == sorted(conf, reverse=wrong)
    for item in items:
        assert (item["true"] != item["predicted"]) == wrong
        assert item["true"] == storage.basename(storage.parent(item["path"]))  # its class folder
        assert item["true"] in names and item["predicted"] in names


def test_run_report_gallery_matches_the_evaluation(trained_run):
    """The shared run's evaluation keeps a gallery: only wrong predictions, most confident
    first; each thumbnail's class and confidence is what the checkpoint says of its file."""
    from imgrec import checkpoint as ckpt
    from imgrec.decode import decode_image
    from imgrec.predict import decode_config

    _, result = trained_run
    run = RunLayout(result.run_uri)
    evaluation = json.loads(storage.read_text(run.evaluation))
    gallery, names = evaluation["gallery"], evaluation["class_names"]
    assert evaluation["split"] == "test" and set(gallery["classes"]) == set(names)
    shown = []
    for name in names:
        _check_items(gallery["classes"][name]["wrong"], names, wrong=True)
        _check_items(gallery["classes"][name]["unsure_right"], names, wrong=False)
        assert len(gallery["classes"][name]["unsure_right"]) == gallery["per_class"]  # 20 test images a class
        shown += gallery["classes"][name]["wrong"] + gallery["classes"][name]["unsure_right"]
    cm = evaluation["confusion"]
    for cell in gallery["cells"]:
        i, j = names.index(cell["true"]), names.index(cell["predicted"])
        assert 0 < len(cell["images"]) <= min(cm[i][j], gallery["per_cell"])
        assert all(im["true"] == cell["true"] and im["predicted"] == cell["predicted"] for im in cell["images"])
    assert sum(len(c["images"]) for c in gallery["cells"]) == sum(
        min(v, gallery["per_cell"]) for row in cm for v in row)

    model, manifest = ckpt.load(evaluation["checkpoint"], compile=False)
    pixels = np.stack([decode_image(storage.read_bytes(i["path"]), decode_config(manifest)) for i in shown])
    probs = model.predict(pixels, verbose=0)
    for item, p in zip(shown, probs, strict=True):
        assert names[int(np.argmax(p))] == item["predicted"]
        assert float(p.max()) == pytest.approx(item["confidence"], abs=1e-4)
        assert storage.exists(storage.join(run.uri, item["thumbnail"]))
        assert item["heatmap"] and storage.exists(storage.join(run.uri, item["heatmap"]))

    page = storage.read_text(run.report)
    assert "Mistakes gallery" in page and shown[0]["thumbnail"] in page and f"href='{shown[0]['path']}'" in page
    for cell in gallery["cells"]:  # every cell with images links to its anchor
        i, j = names.index(cell["true"]), names.index(cell["predicted"])
        assert f"href='#cell-{i}-{j}'" in page and f"id='cell-{i}-{j}'" in page


def test_gallery_surfaces_mislabelled_files(trained_run, bucket):
    """Test files put under the wrong class: the gallery shows them as the most
    confident mistakes of the class they were filed under."""
    import ray

    from imgrec import checkpoint as ckpt
    from imgrec.decode import decode_image
    from imgrec.evaluate import evaluate_dataset
    from imgrec.gallery import Gallery
    from imgrec.predict import decode_config

    cfg, result = trained_run
    names = result.test_metrics["class_names"]
    ref = ckpt.resolve(result.best_checkpoint)
    decode = decode_config(ref.manifest)
    files = sorted(o.uri for o in storage.list_objects(f"{cfg.data.uri}/test"))[::4]
    rows = []
    for k, uri in enumerate(files):
        label = names.index(storage.basename(storage.parent(uri)))
        if k % 5 == 0:
            label = (label + 1) % len(names)  # filed under the next class
        rows.append({"image": decode_image(storage.read_bytes(uri), decode), "label": label, "path": uri})
    gallery = Gallery(names, per_class=3, per_cell=2)
    metrics = evaluate_dataset(ray.data.from_items(rows), ref.uri, names, gallery=gallery)
    record = gallery.write(f"{bucket}/run")
    mislabelled = {r["path"] for k, r in enumerate(rows) if k % 5 == 0}
    wrong = [i for name in names for i in record["classes"][name]["wrong"]]
    assert wrong and {i["path"] for i in wrong} <= {r["path"] for r in rows}
    assert len({i["path"] for i in wrong} & mislabelled) >= min(len(wrong), len(mislabelled)) - 1
    for name in names:
        items = record["classes"][name]["wrong"]
        assert [i["confidence"] for i in items] == sorted((i["confidence"] for i in items), reverse=True)
        assert all(i["true"] == name != i["predicted"] for i in items)
    assert sum(len(record["classes"][n]["wrong"]) for n in names) == min(
        sum(sum(row) - row[i] for i, row in enumerate(metrics["confusion"])), 3 * len(names))
    assert all(storage.exists(storage.join(f"{bucket}/run", i["thumbnail"])) for i in wrong)


def test_cli_explain_writes_the_overlay_and_prints_top_k(trained_run, tmp_path):
    from PIL import Image

    from imgrec.cli import app

    cfg, result = trained_run
    image = sorted(o.uri for o in storage.list_objects(f"{cfg.data.uri}/test"))[0]
    out = tmp_path / "cam.png"
    res = CliRunner().invoke(app, ["explain", image, "--model", result.run_uri, "--out", str(out), "--top-k", "2"])
    assert res.exit_code == 0, res.output
    assert "heatmap for:" in res.output and str(out) in res.output
    assert len([line for line in res.output.splitlines() if "#" in line or line.startswith("  ")]) >= 2
    with Image.open(out) as png:
        assert png.size[0] > png.size[1] >= 224  # the image beside its overlay


@pytest.mark.slow
@needs_photos
def test_real_photo_run_gallery_and_prediction_page(ray_cluster, bucket, tmp_path):
    """A small_cnn trained by imgrec on the real CIFAR-10 photos (3 epochs, 1 worker): the
    gallery holds only wrong predictions, most confident first, each one what the
    checkpoint says of its file; a batch prediction over the test photos leaves a page
    whose counts are the Parquet rows' and which links the run's report."""
    from imgrec import checkpoint as ckpt
    from imgrec import predict as P
    from imgrec.config import DataConfig, DecodeConfig, ModelConfig, PredictConfig, TrainConfig
    from imgrec.decode import decode_image
    from imgrec.layout import PredictionLayout
    from imgrec.predict import decode_config
    from imgrec.train import train

    cfg = TrainConfig(data=DataConfig(uri=CIFAR_DEV, decode=DecodeConfig(image_size=(32, 32))),
                      model=ModelConfig(name="small_cnn"), storage=f"{bucket}/runs", run_name="cifar",
                      workers=1, batch_size=64, epochs=3)
    result = train(cfg)
    run = RunLayout(result.run_uri)
    evaluation = json.loads(storage.read_text(run.evaluation))
    names, gallery = evaluation["class_names"], evaluation["gallery"]
    assert evaluation["split"] == "test" and len(names) == 10 and 0.2 < evaluation["accuracy"] < 0.9
    wrong = [i for n in names for i in gallery["classes"][n]["wrong"]]
    assert len(wrong) >= 5 * len(names)  # a 3-epoch model errs often: every class has its gallery
    for name in names:
        _check_items(gallery["classes"][name]["wrong"], names, wrong=True)
    model, manifest = ckpt.load(evaluation["checkpoint"], compile=False)
    probs = model.predict(np.stack([decode_image(storage.read_bytes(i["path"]), decode_config(manifest))
                                    for i in wrong]), verbose=0)
    for item, p in zip(wrong, probs, strict=True):
        assert names[int(np.argmax(p))] == item["predicted"] != item["true"]
        assert float(p.max()) == pytest.approx(item["confidence"], abs=1e-4)

    out = str(tmp_path / "pred")
    summary = P.predict_bucket(PredictConfig(model=result.run_uri, input=f"{CIFAR_DEV}/test", output=out),
                               progress=False)
    page = storage.read_text(summary.report_uri)
    counts = P.read_predictions(out)["predicted"].value_counts()
    assert counts.sum() == summary.files == 1000
    for name in names:
        assert f"<td>{name}</td><td>{counts.get(name, 0)}</td>" in page
    assert storage.exists(storage.join(out, PredictionLayout.confidence_plot.name))
    assert f"href='{run.report}'" in page and summary.checkpoint in page


def test_grad_cam_of_a_bfloat16_model_is_computed_in_float32():
    """A checkpoint trained in bfloat16 (``--precision auto``) explains as its float32 copy: the same
    weights, gradients with float32's mantissa (computed in bfloat16, these maps differed by 0.005)."""
    import keras

    from imgrec import models
    from imgrec.config import ModelConfig
    from imgrec.explain import grad_cam

    keras.utils.set_random_seed(0)
    bf16 = models.build_model(ModelConfig(name="resnet_tiny", precision="mixed_bfloat16"), 2, SIZE)
    bf16.compile(optimizer=keras.optimizers.Adam(3e-3), loss=models.loss_name(2))
    bf16.fit(*_corner_task(200, seed=1), epochs=4, batch_size=32, verbose=0)  # maps with some spread
    x, _ = _corner_task(16, seed=2)
    cams = grad_cam(bf16, x, 1)
    assert bf16.dtype_policy.name == "mixed_bfloat16"  # the model itself is left as it was
    assert cams.shape == (16, *SIZE) and cams.mean() > 0.1
    np.testing.assert_allclose(cams, grad_cam(models.as_float32(bf16), x, 1), atol=1e-6)
