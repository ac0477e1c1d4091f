"""Batch offline prediction (``imgrec.predict.predict_bucket``), its CLI and job:
probabilities equal ``model.predict``, bad files become error rows, class
folders give labels and metrics, a killed run resumes without duplicates, and
manifests, S3 and local storage all work. No Ray Train: a small model is
built and written straight into the checkpoint contract."""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from imgrec import predict as P
from imgrec import storage
from imgrec.config import ConfigError, DecodeConfig, ModelConfig, PredictConfig, to_dict
from imgrec.layout import PredictionLayout
from imgrec.predict import chunks, columns, listing, output

CLASSES = ["blue", "green", "red"]
SIZE = (32, 32)
COLOURS = {"blue": (30, 40, 220), "green": (30, 200, 40), "red": (220, 30, 40)}
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fixtures


def _image(colour, seed: int, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 40, (40, 48, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _write_tree(root: Path, per_class: int = 4) -> dict[str, bytes]:
    """Class folders plus the real-world mess: corrupt, empty and text files
    with image endings, a README (skipped) and a folder that is not a class."""
    files = {f"{name}/{i:03d}.jpg": _image(COLOURS[name], 10 * k + i) for k, name in enumerate(CLASSES)
             for i in range(per_class)}
    files["blue/corrupt.jpg"] = _image(COLOURS["blue"], 99)[:300]  # truncated JPEG
    files["green/empty.png"] = b""
    files["red/notes.jpg"] = b"not an image, just text\n"
    files["misc/unlabelled.png"] = _image(COLOURS["red"], 77, "PNG")
    files["README.txt"] = b"images of colours\n"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


BAD = {"blue/corrupt.jpg", "green/empty.png", "red/notes.jpg"}


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    """(run dir, checkpoint dir, model): a small_cnn written as a run's only checkpoint."""
    import keras

    from imgrec.checkpoint import write_checkpoint
    from imgrec.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(name="small_cnn"), num_classes=3, image_size=SIZE)
    # Untrained on purpose (fitting costs ~15 s here): its class probabilities differ
    # by ~1e-2, far above float noise, so argmax comparisons are still stable.
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    run = tmp_path_factory.mktemp("runs") / "run1"
    ckpt_dir = run / "checkpoint_000001"
    manifest = {
        "class_names": CLASSES,
        "image_size": list(SIZE),
        "decode": to_dict(DecodeConfig(image_size=SIZE)),
        "model": to_dict(ModelConfig(name="small_cnn")),
        "epoch": 1,
        "metrics": {"val_accuracy": 0.9},
    }
    write_checkpoint(model, str(ckpt_dir), manifest)
    return str(run), str(ckpt_dir), model


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    files = _write_tree(root)
    return str(root), files


def _expected_probs(model, data: bytes) -> np.ndarray:
    from imgrec.decode import decode_image

    return model.predict(decode_image(data, DecodeConfig(image_size=SIZE))[None], verbose=0)[0]


def _class_order_probs(row) -> np.ndarray:
    probs = dict(zip(row["topk_classes"], row["topk_probs"], strict=True))
    return np.array([probs[c] for c in CLASSES], dtype=np.float32)


# --------------------------------------------------------------------------- end to end


def test_local_tree_probabilities_errors_labels_and_summary(ray_cluster, model_run, image_tree, tmp_path):
    import pyarrow.parquet as pq

    from imgrec.evaluate import classification_metrics

    run, ckpt_dir, model = model_run
    root, files = image_tree
    out = str(tmp_path / "out")
    chunks_seen = []
    summary = P.predict_bucket(
        PredictConfig(model=run, input=root, output=out, top_k=3, files_per_output=5, batch_size=4),
        progress=False,
        on_chunk=chunks_seen.append,
    )
    images = {rel for rel in files if rel != "README.txt"}
    assert summary.files == len(images) and summary.errors == len(BAD)
    assert summary.skipped_files == 1 and summary.skipped_examples == [os.path.join(root, "README.txt")]
    assert summary.chunks == len(chunks_seen) == summary.chunks_run >= 2
    assert summary.checkpoint == ckpt_dir and summary.model_uri == run

    # One schema for every part, exactly as documented.
    parts = sorted(os.listdir(os.path.join(out, P.PREDICTIONS_DIR)))
    assert len(parts) == summary.chunks and all(p.startswith("part-") for p in parts)
    for part in parts:
        assert pq.read_schema(os.path.join(out, P.PREDICTIONS_DIR, part)).remove_metadata() == P.output_schema()

    df = P.read_predictions(out)
    assert sorted(df["path"]) == sorted(os.path.join(root, rel) for rel in images)
    by_rel = {os.path.relpath(p, root): row for p, row in zip(df["path"], df.to_dict("records"), strict=True)}
    assert set(df["model_uri"]) == {run} and set(df["checkpoint"]) == {ckpt_dir}

    for rel in BAD:  # error rows: reason set, no prediction, label still known
        row = by_rel[rel]
        assert row["error"] and pd.isna(row["predicted"]) and row["topk_classes"] is None
        assert row["label"] == rel.split("/")[0]
    assert "zero-byte" in by_rel["green/empty.png"]["error"]

    labels, probs = [], []
    for rel in sorted(images - BAD):
        row = by_rel[rel]
        expected = _expected_probs(model, files[rel])
        np.testing.assert_allclose(_class_order_probs(row), expected, atol=1e-5)
        assert pd.isna(row["error"]) and row["predicted"] == CLASSES[int(np.argmax(expected))]
        assert row["predicted_index"] == int(np.argmax(expected))
        assert row["confidence"] == pytest.approx(float(expected.max()), abs=1e-5)
        assert list(row["topk_probs"]) == sorted(row["topk_probs"], reverse=True)
        if rel.startswith("misc/"):
            assert pd.isna(row["label"])  # "misc" is not a class: no label
        else:
            assert row["label"] == rel.split("/")[0]
            labels.append(CLASSES.index(row["label"]))
            probs.append(expected)

    direct = classification_metrics(np.array(labels), np.array(probs), CLASSES)
    saved = json.loads(Path(out, P.SUMMARY_FILE).read_text())
    assert saved["metrics"]["accuracy"] == pytest.approx(direct["accuracy"])
    assert saved["metrics"]["confusion"] == direct["confusion"]
    assert saved["metrics"]["per_class"] == direct["per_class"]
    assert saved["labelled"] == len(images) - 1 and saved["errors"] == len(BAD)

    # The page to look at: every predicted class counted, the error rows with their reasons,
    # a sample per class that has predictions, the plots, a link to the checkpoint.
    page = Path(out, PredictionLayout.report.name).read_text()
    assert saved["report_uri"] == str(Path(out, PredictionLayout.report.name))
    predicted = df["predicted"].dropna().value_counts()
    for name, n in predicted.items():
        assert f"<td>{name}</td><td>{n}</td>" in page
    for rel in BAD:
        assert os.path.join(root, rel) in page and html.escape(by_rel[rel]["error"]) in page
    samples = re.findall(r"src='(samples/[0-9a-f]+\.png)'", page)
    assert len(samples) == sum(min(int(n), 8) for n in predicted.values) and all(Path(out, s).is_file() for s in samples)
    for plot in (PredictionLayout.class_plot.name, PredictionLayout.confidence_plot.name):
        assert f"src='{plot}'" in page and Path(out, plot).stat().st_size > 1000
    assert ckpt_dir in page


def test_s3_killed_run_resumes_with_every_file_once(ray_cluster, model_run, image_tree, bucket):
    run, _, _ = model_run
    root, _ = image_tree
    storage.upload_dir(run, f"{bucket}/runs/run1", progress=False)
    storage.upload_dir(root, f"{bucket}/images", progress=False)
    out = f"{bucket}/predictions-out"
    cfg = PredictConfig(model=f"{bucket}/runs/run1", input=f"{bucket}/images", output=out,
                        files_per_output=3, batch_size=4)

    def die_after_first(done: P.ChunkDone) -> None:
        raise RuntimeError(f"injected kill after {done.name}")

    with pytest.raises(RuntimeError, match="injected kill"):
        P.predict_bucket(cfg, progress=False, on_chunk=die_after_first)
    assert len(output.part_uris(out)) == 1  # the part written before the kill

    summary = P.predict_bucket(cfg, progress=False)
    expected = sorted(o.uri for o in storage.list_objects(f"{bucket}/images") if not o.path.endswith(".txt"))
    assert summary.chunks_skipped == 1 and summary.chunks_run == summary.chunks - 1 >= 2
    assert summary.checkpoint == f"{bucket}/runs/run1/checkpoint_000001"
    df = P.read_predictions(out)
    assert sorted(df["path"]) == expected and df["path"].is_unique

    saved = json.loads(storage.read_text(f"{out}/{P.SUMMARY_FILE}"))
    assert saved["files"] == len(df) and saved["chunks_skipped"] == 1 and saved["errors"] == len(BAD)


def test_cli_predict_from_a_csv_manifest(ray_cluster, model_run, image_tree, tmp_path):
    from imgrec.cli import app

    run, ckpt_dir, model = model_run
    root, files = image_tree
    rows = ["red/000.jpg", os.path.join(root, "blue/001.jpg"), "red/notes.jpg", "missing/gone.jpg"]
    manifest = Path(root, "manifest.csv")  # relative paths resolve against the manifest's folder
    manifest.write_text("path,label\n" + "\n".join(f"{r},{r.split('/')[-2]}" for r in rows) + "\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", "--model", ckpt_dir, "--input", str(manifest),
                                      "--output", str(out), "--top-k", "2", "--batch-size", "8"])
    manifest.unlink()
    assert result.exit_code == 0, result.output
    assert "chunk 1/1" in result.output and "images/s" in result.output
    df = P.read_predictions(str(out))
    assert list(df["path"]) == [os.path.join(root, r) for r in rows]  # manifest order
    assert df["topk_classes"].iloc[0].tolist()[0] == df["predicted"].iloc[0]
    assert len(df["topk_classes"].iloc[0]) == 2
    assert df["label"].tolist()[:3] == ["red", "blue", "red"] and pd.isna(df["label"].iloc[3])  # not a class
    assert df["error"].iloc[2] and df["error"].iloc[3].startswith("cannot read")
    np.testing.assert_allclose(df["confidence"].iloc[0], _expected_probs(model, files["red/000.jpg"]).max(),
                               atol=1e-5)


# --------------------------------------------------------------------------- no Ray needed


def _entries(keys):
    return [listing.Entry(uri=f"s3://b/{k}", key=k, size=1, label=None) for k in keys]


def test_chunks_are_deterministic_bounded_and_local_to_changes():
    keys = [f"img/{i:06d}.jpg" for i in range(3000)]
    first = list(chunks.cut_chunks(iter(_entries(keys)), 100))
    assert [c.name for c in first] == [c.name for c in chunks.cut_chunks(iter(_entries(keys)), 100)]
    sizes = [len(c.paths) for c in first]
    assert sum(sizes) == 3000 and max(sizes) <= 200 and min(sizes[:-1]) >= 50
    assert 15 <= len(first) <= 45  # about N files per chunk on average
    changed = keys[:1500] + ["img/001500a.jpg"] + keys[1500:]
    second = list(chunks.cut_chunks(iter(_entries(changed)), 100))
    new = {c.name for c in second} - {c.name for c in first}
    assert 1 <= len(new) <= 3  # only the chunk(s) around the inserted file change


def test_changed_listing_removes_stale_parts_and_keeps_the_rest(tmp_path):
    keys = [f"c/{i:04d}.jpg" for i in range(400)]
    before = [c.name for c in chunks.cut_chunks(iter(_entries(keys)), 20)]
    out = tmp_path / "out"
    (out / P.PREDICTIONS_DIR).mkdir(parents=True)
    for name in before:
        (out / P.PREDICTIONS_DIR / name).write_bytes(b"a finished part")
    job = {"input": "s3://b", "checkpoint": "s3://b/ck", "model_sha256": "h", "top_k": 5,
           "files_per_output": 20, "all_files": False, "columns": columns.schema_record(P.output_schema())}
    (out / P.JOB_FILE).write_text(json.dumps(job))
    plan = chunks.Plan.write(str(tmp_path / "plan.jsonl"),
                         chunks.cut_chunks(iter(_entries([*keys[:200], "c/0199a.jpg", *keys[200:]])), 20))
    done, stale = output.prepare_output(str(out), job, plan, resume=True)
    assert done == set(before) & set(plan.names) and 1 <= stale <= 2
    assert 1 <= len(plan.names) - len(done) <= 3  # only the chunks around the new file run again
    assert set(os.listdir(out / P.PREDICTIONS_DIR)) == done  # no part left to duplicate rows


def test_txt_manifest_rows_local_and_s3(tmp_path, bucket):
    text = "# my images\na/1.jpg\n\ns3://b/k/2.png\r\n/abs/3.jpg\n"
    manifest = tmp_path / "list.txt"
    manifest.write_text(text)
    storage.write_bytes(f"{bucket}/lists/list.txt", text.encode())
    expected = ["a/1.jpg", "s3://b/k/2.png", "/abs/3.jpg"]
    assert [p for p, _ in listing.manifest_rows(str(manifest))] == expected
    assert [p for p, _ in listing.manifest_rows(f"{bucket}/lists/list.txt")] == expected
    assert listing.absolute("a/1.jpg", str(tmp_path)) == str(tmp_path / "a/1.jpg")
    assert listing.absolute("k/2.png", f"{bucket}/lists") == f"{bucket}/lists/k/2.png"


def test_resume_refuses_an_output_from_another_setup(model_run, image_tree, tmp_path):
    run, _, _ = model_run
    root, _ = image_tree
    out = tmp_path / "out"
    out.mkdir()
    (out / P.JOB_FILE).write_text(json.dumps({"input": root, "checkpoint": "elsewhere", "top_k": 5}))
    with pytest.raises(P.PredictError, match="different job.*--no-resume"):
        P.predict_bucket(PredictConfig(model=run, input=root, output=str(out)), progress=False)
    with pytest.raises(ConfigError, match="top_k must be >= 1"):
        PredictConfig(model=run, input=root, output=str(out), top_k=0)
    with pytest.raises(P.PredictError, match="no image files"):
        P.predict_bucket(PredictConfig(model=run, input=str(tmp_path / "out"), output=str(tmp_path / "o2")),
                         progress=False)


def test_resume_refuses_parts_written_with_other_columns(ray_cluster, model_run, image_tree, tmp_path):
    """An output whose parts lack a column this version writes (an older imgrec's,
    with no columns in its _job.json) is refused on resume, never mixed with new
    parts; --no-resume rewrites it with one schema."""
    import pyarrow.parquet as pq

    run, _, _ = model_run
    root, files = image_tree
    out = tmp_path / "out"
    cfg = PredictConfig(model=run, input=root, output=str(out), files_per_output=4)
    P.predict_bucket(cfg, progress=False)
    job = json.loads((out / P.JOB_FILE).read_text())
    assert job["columns"] == columns.schema_record(P.output_schema())
    # Turn it into an older version's output: no columns recorded, parts without `checkpoint`.
    (out / P.JOB_FILE).write_text(json.dumps({k: v for k, v in job.items() if k != "columns"}))
    parts = sorted((out / P.PREDICTIONS_DIR).iterdir())
    for part in parts:
        pq.write_table(pq.read_table(part).drop_columns(["checkpoint"]), part)
    first = parts[0]
    first.unlink()  # one chunk still to do, so a resume would write a new-schema part beside the old ones
    with pytest.raises(P.PredictError, match=r"other output columns.*'checkpoint'.*--no-resume"):
        P.predict_bucket(cfg, progress=False)
    assert not first.exists()  # nothing written
    P.predict_bucket(dataclasses.replace(cfg, resume=False), progress=False)
    schemas = {tuple(pq.read_schema(p).names) for p in (out / P.PREDICTIONS_DIR).iterdir()}
    assert schemas == {tuple(P.output_schema().names)}
    assert len(P.read_predictions(str(out))) == len([f for f in files if f != "README.txt"])


def test_cli_predict_one_prints_answer_and_probabilities(model_run, image_tree):
    from imgrec.cli import app

    _, ckpt_dir, model = model_run
    root, files = image_tree
    result = CliRunner().invoke(app, ["predict-one", os.path.join(root, "green/001.jpg"), "--model", ckpt_dir])
    assert result.exit_code == 0, result.output
    expected = _expected_probs(model, files["green/001.jpg"])
    assert "answer:     green" in result.output
    assert f"prediction: {CLASSES[int(np.argmax(expected))]}" in result.output
    for name, p in zip(CLASSES, expected, strict=True):
        assert re.search(rf"^  {name} +{p:.4f}", result.output, re.M), result.output


def test_job_entry_point_parses_into_the_config():
    spec = importlib.util.spec_from_file_location("predict_job", REPO / "jobs" / "predict.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    cfg = job.parse_args(["--model", "s3://b/runs/r", "--input", "s3://b/in", "--output", "s3://b/out",
                          "--actors", "2", "--gpus", "0.5", "--top-k", "3", "--no-resume"])
    assert cfg == PredictConfig(model="s3://b/runs/r", input="s3://b/in", output="s3://b/out", actors=2,
                                num_gpus=0.5, top_k=3, resume=False)


def _decoded(files: dict[str, bytes], names: list[str]) -> np.ndarray:
    from imgrec.decode import decode_image

    return np.stack([decode_image(files[n], DecodeConfig(image_size=SIZE)) for n in names])


def test_flip_tta_is_the_mean_of_the_image_and_its_mirror(model_run, image_tree):
    """Evaluation's scorer (``Predictor``): with tta "flip" each image's probabilities
    are the mean of the model's on it and on its left-right mirror."""
    run, ckpt_dir, model = model_run
    root, files = image_tree
    names = [f"{c}/{i:03d}.jpg" for c in CLASSES for i in range(2)]
    images = _decoded(files, names)
    plain = model.predict(images, verbose=0)
    expected = (plain + model.predict(images[:, :, ::-1], verbose=0)) / 2
    got = P.Predictor(ckpt_dir, tta="flip")({"image": images})["probs"]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - plain).max() > 1e-4  # the mirror changed something
    np.testing.assert_allclose(P.Predictor(ckpt_dir)({"image": images})["probs"], plain, atol=1e-5)


def test_predict_bucket_with_flip_tta(ray_cluster, model_run, image_tree, tmp_path):
    run, ckpt_dir, model = model_run
    root, files = image_tree
    out = str(tmp_path / "out")
    P.predict_bucket(PredictConfig(model=run, input=root, output=out, top_k=3, tta="flip"), progress=False)
    df = P.read_predictions(out)
    rows = [(os.path.relpath(p, root), r) for p, r in zip(df["path"], df.to_dict("records"), strict=True)
            if r["topk_classes"] is not None and not os.path.relpath(p, root).startswith("misc")]
    images = _decoded(files, [rel for rel, _ in rows])
    expected = (model.predict(images, verbose=0) + model.predict(images[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(np.stack([_class_order_probs(r) for _, r in rows]), expected, atol=1e-5)


def test_an_unknown_tta_is_a_one_line_error_naming_the_option():
    with pytest.raises(ConfigError, match="tta must be one of none, flip, got 'rotate'"):
        PredictConfig(model="m", input="i", output="o", tta="rotate")
