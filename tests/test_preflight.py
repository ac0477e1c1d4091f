"""Pre-flight: every bad config value and URI is refused before Ray or
TensorFlow is imported and before anything is written, with one line naming
the option (CLI) or config field (library) and the fix.

The bad invocations run in one fresh process (``tests/preflight_probe.py``),
since this one may have loaded Ray and TensorFlow already; the probe reports
each case's exit code and output, the heavy modules loaded and what appeared
on disk or in S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgrec import storage, synth, tune
from imgrec.checkpoint import write_checkpoint
from imgrec.config import (
    ConfigError,
    DataConfig,
    DecodeConfig,
    ModelConfig,
    SweepConfig,
    TrainConfig,
    from_dict,
    replace,
    to_dict,
)
from imgrec.layout import SweepLayout

REPO = Path(__file__).resolve().parents[1]

NO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SHARED_CREDENTIALS_FILE":
                  "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}


@pytest.fixture(scope="module")
def places(tmp_path_factory, s3_server):
    """A good tree (local and in S3), a one-class tree, a real checkpoint, and an empty
    work folder and bucket every case may write into (and must not)."""
    root = tmp_path_factory.mktemp("preflight")
    tree = str(root / "tree")
    synth.make_dataset(tree, classes=3, per_class=4, test_per_class=1, image_size=(32, 32))
    one_class = str(root / "one")
    synth.make_dataset(one_class, classes=2, per_class=2, test_per_class=0, image_size=(32, 32))
    storage.delete_prefix(f"{one_class}/train/{synth.class_names('shapes', 2)[1]}")
    bucket = f"s3://preflight-{os.getpid()}"
    storage.ensure_bucket(bucket)
    storage.upload_dir(tree, f"{bucket}/tree", progress=False)
    work = root / "work"
    work.mkdir()
    return {"tree": tree, "one_class": one_class, "bucket": bucket, "work": str(work),
            "model": _checkpoint(str(root / "run")), "manifests": _bad_manifests(tree, root / "manifests")}


BAD_MANIFESTS = {  # name -> (file name, text, what the message must say)
    "missing column": ("column.csv", "file,label\n{a},x\n", "no `uri` column (found ['file', 'label'])"),
    "empty label": ("label.csv", "uri,label\n{a},x\n{b},\n", "line 3: empty label for"),
    "duplicate uri": ("twice.csv", "uri,label\n{a},x\n{b},y\n{a},y\n", "line 4: listed already at line 2"),
    "escaping": ("escape.csv", "uri,label\n{a},x\n../b.jpg,y\n", "line 3: '../b.jpg' has a `..` segment"),
    "label only in test": ("test.csv", "uri,label,split\n{a},x,\n{b},y,\n{c},z,test\n",
                           "label(s) ['z'] appear only in test rows"),
    "unknown split": ("split.csv", "uri,label,split\n{a},x,\n{b},y,holdout\n", "line 3: split 'holdout' is not one of"),
    "unreadable": ("broken.parquet", "not parquet", "cannot be read as Parquet"),
    "no labels": ("list.txt", "{a}\n", "a .txt manifest lists files without labels"),
    "wrong extension": ("labels.json", "{{}}", "is a file; give the root folder of an image tree"),
    "first image missing": ("moved.csv", "uri,label\nnowhere/a.jpg,x\n{b},y\n", "its first image"),
}


def _bad_manifests(tree: str, folder: Path) -> dict[str, str]:
    """One bad label manifest per case, naming real images of the tree, and a good one."""
    folder.mkdir()
    a, b, c = [o.uri for o in storage.list_objects(f"{tree}/train")][:3]
    out = {"good": str(folder / "good.csv")}
    (folder / "good.csv").write_text(f"uri,label\n{a},x\n{b},y\n")
    for name, (file, text, _) in BAD_MANIFESTS.items():
        (folder / file).write_text(text.format(a=a, b=b, c=c))
        out[name] = str(folder / file)
    return out


def _checkpoint(run: str) -> str:
    """A real (untrained) small_cnn checkpoint of three classes: a model URI that resolves."""
    from imgrec.models import build_model  # loads Keras

    model = build_model(ModelConfig(name="small_cnn"), num_classes=3, image_size=(32, 32))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    manifest = {"class_names": synth.class_names("shapes", 3), "image_size": [32, 32],
                "decode": to_dict(DecodeConfig(image_size=(32, 32))), "model": to_dict(ModelConfig()),
                "epoch": 1, "metrics": {"val_accuracy": 0.5}}
    write_checkpoint(model, f"{run}/checkpoint_000001", manifest)
    return run


def _cases(p: dict) -> dict[str, tuple[dict, str]]:
    """name -> (case, what the message must say)."""
    work, tree, bucket = p["work"], p["tree"], p["bucket"]
    train = ["train", "--data", tree, "--storage", f"{work}/runs"]
    transfer = ["transfer", "--data", tree, "--storage", f"{work}/runs", "--weights", "none"]
    tune = ["tune", "--data", tree, "--storage", f"{work}/sweeps", "--name", "n1"]
    predict = ["predict", "--model", p["model"], "--input", f"{tree}/test", "--output", f"{work}/out"]
    good = TrainConfig(data=DataConfig(uri=tree), storage=f"{work}/runs")
    cli = {
        # the list
        "lr": (train + ["--lr", "-1"], "--lr must be > 0"),
        "optimizer": (train + ["--optimizer", "adamm"], "Invalid value for '--optimizer'"),
        "data missing": (["train", "--data", "/nonexistent", "--storage", f"{work}/runs"], "--data: /nonexistent"),
        "model missing": (predict[:1] + ["--model", "/nonexistent"] + predict[3:], "--model: /nonexistent"),
        "data without credentials": (["train", "--data", f"{bucket}/tree", "--storage", f"{work}/runs"],
                                     f"--data: {bucket}/tree: no AWS credentials found"),
        "head": (train + ["--head", "bogus"], "Invalid value for '--head'"),
        "dropout": (train + ["--dropout", "3"], "--dropout must be in [0, 1), got 3.0"),
        "weights missing": (transfer[:-1] + ["/nonexistent.h5"], "--weights file /nonexistent.h5 does not exist"),
        "inspect missing": (["data", "inspect", "/nonexistent"], "/nonexistent: no such file or folder"),
        "tune model": (tune + ["--model", "foo"], "--model: unknown model 'foo'"),
        "freeze depth": (transfer + ["--freeze-depth", "foo"], "--freeze-depth 'foo'"),
        # more of the same kinds
        "storage bucket missing": (["train", "--data", tree, "--storage", "s3://no-such-bucket/runs"],
                                   "--storage: s3://no-such-bucket/runs: bucket 'no-such-bucket' does not exist"),
        "cache bucket missing": (["train", "--data", tree, "--storage", f"{work}/runs", "--cache",
                                  "s3://no-such-bucket/pixels"],
                                 "--cache: s3://no-such-bucket/pixels: bucket 'no-such-bucket' does not exist"),
        "storage without credentials": (["train", "--data", tree, "--storage", f"{bucket}/runs"],
                                        f"--storage: {bucket}/runs: no AWS credentials found"),
        "one class": (["train", "--data", p["one_class"], "--storage", f"{work}/runs"],
                      "--data: " + p["one_class"]),
        "data is a file": (["train", "--data", next(o.uri for o in storage.list_objects(tree)), "--storage",
                            f"{work}/runs"], "is a file; give the root folder"),
        "weights on a scratch model": (train + ["--weights", "imagenet"], "--weights: resnet_tiny is trained from"),
        "alpha": (transfer + ["--model", "resnet50", "--alpha", "0.5"], "--alpha (width multiplier) applies only"),
        "image size": (transfer + ["--image-size", "8"], "--image-size: mobilenet needs images of at least 32x32"),
        "batch size": (train + ["--batch-size", "0"], "--batch-size must be >= 1"),
        "head epochs": (transfer + ["--epochs", "2", "--head-epochs", "2"], "--head-epochs (2) must be < epochs"),
        "head epochs, no backbone": (train + ["--epochs", "3", "--head-epochs", "1"],
                                     "--head-epochs (two-stage transfer) applies to backbones"),
        "fine-tune factor": (train + ["--fine-tune-lr-factor", "0"], "--fine-tune-lr-factor must be > 0"),
        "keep": (train + ["--keep", "0"], "--keep must be >= 1"),
        "weight decay": (train + ["--weight-decay", "1.5"], "--weight-decay must be in [0, 1)"),
        "label smoothing": (train + ["--label-smoothing", "-0.1"], "--label-smoothing must be in [0, 1)"),
        "warmup": (train + ["--warmup-epochs", "-1"], "--warmup-epochs must be >= 0"),
        "cpus": (train + ["--cpus-per-worker", "0"], "--cpus-per-worker must be > 0"),
        "class weight syntax": (train + ["--class-weight", "balance"], "--class-weight 'balance' is neither none"),
        "class weight negative": (train + ["--class-weight", '{"a": -1}'], "--class-weight of 'a' must be a number"),
        "class weight unknown class": (train + ["--class-weight", '{"nosuch": 2}'],
                                       "--class-weight names unknown class(es) ['nosuch']"),
        "resume missing": (["train", "--resume", "/nonexistent"], "--resume: /nonexistent: nothing there"),
        "tracking in S3": (train + ["--tracking", "s3://b/mlruns"], "--tracking 's3://b/mlruns' is not a place MLflow"),
        "tracking with credentials": (transfer + ["--tracking", "http://me:secret@127.0.0.1:5000"],
                                      "--tracking URI holds credentials"),
        "tracking without a host": (train + ["--tracking", "http://"], "--tracking 'http://' names no host"),
        "tracking is a file": (train + ["--tracking", next(o.uri for o in storage.list_objects(tree))],
                               "is a file; give a folder"),
        "tune tracking": (tune + ["--tracking", "ftp://host/x"], "--tracking 'ftp://host/x' is not a place MLflow"),
        "tune data missing": (["tune", "--data", "/nonexistent", "--storage", f"{work}/sweeps", "--name", "n2"],
                              "--data: /nonexistent"),
        "tune weights missing": (tune + ["--weights", "/nonexistent.h5"], "--weights file /nonexistent.h5"),
        "tune freeze depths, no backbone": (tune + ["--model", "small_cnn", "--weights", "none", "--freeze-depths",
                                                   "0,5"], "--freeze-depths: freeze_depth applies to backbones"),
        "tune batch sizes": (tune + ["--batch-sizes", "8,0"], "--batch-sizes must be global batch sizes >= 1"),
        "predict input missing": (predict[:3] + ["--input", "/nonexistent"] + predict[5:],
                                  "--input /nonexistent: nothing there"),
        "predict output bucket missing": (predict[:5] + ["--output", "s3://no-such-bucket/out"],
                                          "--output: s3://no-such-bucket/out: bucket 'no-such-bucket' does not"),
        **{f"manifest: {name}": (["train", "--data", p["manifests"][name], "--storage", f"{work}/runs"],
                                 f"--data: {p['manifests'][name]}" + (" " if name == "wrong extension" else ": ")
                                 + says)
           for name, (_, _, says) in BAD_MANIFESTS.items()},
        "manifest: class weight unknown class": (["train", "--data", p["manifests"]["good"], "--storage",
                                                  f"{work}/runs", "--class-weight", '{"cat": 2}'],
                                                 "--class-weight names unknown class(es) ['cat']"),
        "manifest: tune": (["tune", "--data", p["manifests"]["escaping"], "--storage", f"{work}/sweeps", "--name",
                            "n4"], "has a `..` segment"),
        "manifest: transfer": (["transfer", "--data", p["manifests"]["label only in test"], "--storage",
                                f"{work}/runs", "--weights", "none"], "appear only in test rows"),
    }
    cases = {name: ({"cli": args}, says) for name, (args, says) in cli.items()}
    for name in ("data without credentials", "storage without credentials"):
        cases[name][0]["env"] = NO_CREDENTIALS
    calls = {  # the library entry points refuse the same, naming the config field
        "train(): data missing": ({"call": "train", "config": to_dict(replace(good, data=DataConfig(uri="/nonexistent")))},
                                  "data.uri: /nonexistent"),
        "train(): bad manifest": ({"call": "train", "config": to_dict(replace(good, data=DataConfig(
            uri=p["manifests"]["duplicate uri"])))}, "listed already at line 2"),
        "sweep(): unknown model": ({"call": "sweep", "config": to_dict(SweepConfig(
            base=replace(good, model=ModelConfig(name="foo")), storage=f"{work}/sweeps", name="n3"))},
            "unknown model 'foo'"),
        "predict_bucket(): model missing": ({"call": "predict", "config": {
            "model": "/nonexistent", "input": f"{tree}/test", "output": f"{work}/out"}}, "model: /nonexistent"),
    }
    return {**cases, **calls}


@pytest.fixture(scope="module")
def outcomes(places):
    cases = _cases(places)
    spec = {"watch": [places["work"], places["bucket"]], "cases": {name: case for name, (case, _) in cases.items()}}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "preflight_probe.py")], input=json.dumps(spec),
                          capture_output=True, text=True, env=env, cwd=places["work"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    return {name: (results[name], says) for name, (_, says) in cases.items()}


CASE_NAMES = [
    "lr", "optimizer", "data missing", "model missing", "data without credentials", "head", "dropout",
    "weights missing", "inspect missing", "tune model", "freeze depth", "storage bucket missing",
    "storage without credentials", "one class", "data is a file", "weights on a scratch model", "alpha",
    "image size", "batch size", "head epochs", "head epochs, no backbone", "fine-tune factor", "keep",
    "weight decay", "label smoothing", "warmup", "cpus",
    "class weight syntax", "class weight negative", "class weight unknown class",
    "resume missing", "tracking in S3", "tracking with credentials", "tracking without a host",
    "tracking is a file", "tune tracking", "tune data missing", "tune weights missing", "tune freeze depths, no backbone",
    "tune batch sizes", "predict input missing", "predict output bucket missing",
    *(f"manifest: {name}" for name in BAD_MANIFESTS), "manifest: class weight unknown class", "manifest: tune",
    "manifest: transfer",
]
CALL_NAMES = ["train(): data missing", "train(): bad manifest", "sweep(): unknown model",
              "predict_bucket(): model missing"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_the_cli_refuses_a_bad_value_before_ray_or_tensorflow_and_writes_nothing(outcomes, name):
    outcome, says = outcomes[name]
    assert outcome["crash"] is None, outcome["crash"]
    assert outcome["exit_code"] == 2, outcome["output"]
    text = " ".join(outcome["output"].replace("│", " ").split())  # typer boxes the parser's errors
    assert says in text, outcome["output"]
    if outcome["output"].startswith("error: "):  # the library's errors: one line
        assert outcome["output"].count("\n") == 1, outcome["output"]
    assert outcome["heavy"] == [] and outcome["written"] == []


@pytest.mark.parametrize("name", CALL_NAMES)
def test_the_library_entry_points_refuse_it_too(outcomes, name):
    outcome, says = outcomes[name]
    assert outcome["error"] == "ConfigError", outcome.get("crash")
    assert says in outcome["message"] and outcome["field"]
    assert outcome["heavy"] == [] and outcome["written"] == []


def test_a_sweep_refused_for_its_model_leaves_no_sweep_json_and_its_name_free(outcomes, places):
    assert outcomes["tune model"][0]["exit_code"] == 2
    sweeps = f"{places['work']}/sweeps"
    assert not os.path.exists(SweepLayout.of(sweeps, "n1").config)
    # The right model may take the name (no --resume of a bad config).
    base = TrainConfig(data=DataConfig(uri=places["tree"]), model=ModelConfig(name="mobilenet"), workers=1)
    cfg = tune._prepare(SweepConfig(base=base, storage=sweeps, name="n1"), check_data=True)
    assert json.loads(storage.read_text(SweepLayout.of(sweeps, "n1").config))["base"]["model"]["name"] == "mobilenet"
    assert cfg.name == "n1"


def test_config_errors_name_their_field_and_the_cli_its_flag():
    with pytest.raises(ConfigError) as caught:
        TrainConfig(learning_rate=0)
    assert caught.value.field == "learning_rate" and caught.value.naming("--lr") == "--lr must be > 0, e.g. 1e-3, got 0"
    with pytest.raises(ConfigError) as caught:
        from_dict(TrainConfig, {"data": {"validation_split": 1.5}})
    assert caught.value.field == "data.validation_split"
    assert caught.value.naming("--validation-split").startswith("--validation-split must be in [0, 1)")
    assert ConfigError("unknown model 'x'", "model.name").naming("--model") == "--model: unknown model 'x'"
