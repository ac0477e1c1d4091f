"""``--class-weight`` and the imbalance scores, without Ray: the weights resolved
from the training split's counts or a JSON mapping (bad values refused naming the
option), the weighted loss of the worker's train step equal to Keras'
``class_weight`` (sample-weighted sum over the GLOBAL batch), the manifest's
record of the weights, and macro-F1 / balanced accuracy / per-class F1 against
hand-computed values. The end-to-end check reads the shared run's outputs
(``tests/test_train.py::test_evaluation_has_the_imbalance_scores``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from imgrec import preflight, synth
from imgrec.cli import app
from imgrec.cli_options import build, flag_of, values_from_args
from imgrec.cli_train import TRAIN_OPTIONS, train_command
from imgrec.config import (
    ConfigError,
    DataConfig,
    DecodeConfig,
    TrainConfig,
    from_dict,
    parse_class_weight,
    resolve_class_weights,
    to_dict,
)
from imgrec.data.datasets import ImageDataset, class_counts
from imgrec.metrics import classification_metrics, confusion_metrics

# --------------------------------------------------------------------------- resolution


def test_balanced_weights_are_n_over_classes_times_count():
    assert resolve_class_weights("balanced", ["cat", "dog"], [900, 100]) == pytest.approx([1000 / 1800, 1000 / 200])
    weights = resolve_class_weights("balanced", ["a", "b", "c"], [10, 20, 0])
    assert weights == pytest.approx([1.0, 0.5, 0.0])  # a class with no training image: 0
    # weighted counts are equal per class (the point of "balanced") and sum to n
    counts = [700, 200, 100]
    weights = resolve_class_weights("balanced", ["a", "b", "c"], counts)
    assert [w * c for w, c in zip(weights, counts, strict=True)] == pytest.approx([1000 / 3] * 3)
    assert resolve_class_weights("none", ["a", "b"], [1, 2]) is None


def test_a_json_mapping_weighs_its_classes_and_one_for_the_rest():
    assert resolve_class_weights('{"dog": 3}', ["cat", "dog", "emu"], None) == [1.0, 3.0, 1.0]
    assert resolve_class_weights({"cat": 0.5, "emu": 0}, ["cat", "dog", "emu"], None) == [0.5, 1.0, 0.0]
    assert parse_class_weight(' {"cat": 1, "dog": 2.5} ') == {"cat": 1.0, "dog": 2.5}
    assert parse_class_weight("balanced") == "balanced" and parse_class_weight("none") == "none"
    cfg = TrainConfig(class_weight='{"cat": 1, "dog": 3}')  # the option's text travels as given
    assert from_dict(TrainConfig, to_dict(cfg)).class_weight == '{"cat": 1, "dog": 3}'


@pytest.mark.parametrize("value, says", [
    ("balance", "--class-weight 'balance' is neither none, balanced nor JSON"),
    ('{"cat": -1}', "--class-weight of 'cat' must be a number >= 0, got -1"),
    ('{"cat": "x"}', "--class-weight of 'cat' must be a number >= 0, got 'x'"),
    ('{"cat": true}', "--class-weight of 'cat' must be a number >= 0, got True"),
    ('{"cat": Infinity}', "--class-weight of 'cat' must be a number >= 0, got inf"),
    ("[1, 3]", "--class-weight must map class names to weights, got [1, 3]"),
    ("{}", "--class-weight must map class names to weights, got {}"),
])
def test_bad_values_are_refused_naming_the_option(value, says):
    with pytest.raises(ConfigError) as caught:
        TrainConfig(class_weight=value)
    assert caught.value.field == "class_weight"
    assert caught.value.naming(flag_of(TRAIN_OPTIONS, "class_weight")).startswith(says)
    result = CliRunner().invoke(app, ["train", "--data", "/nowhere", "--class-weight", value])
    assert result.exit_code == 2 and result.output.startswith(f"error: {says}"), result.output
    assert result.output.count("\n") == 1  # one line


def test_unknown_class_names_and_all_zero_are_refused_where_the_classes_are_known(tmp_path):
    names = ["cat", "dog"]
    with pytest.raises(ConfigError, match=r"^class_weight names unknown class\(es\) \['cow'\]; the classes are "
                                          r"\['cat', 'dog'\]") as caught:
        resolve_class_weights('{"cow": 2, "cat": 1}', names, None)
    assert caught.value.naming("--class-weight").startswith("--class-weight names unknown class(es) ['cow']")
    with pytest.raises(ConfigError, match="class_weight gives every class weight 0"):
        resolve_class_weights({"cat": 0, "dog": 0}, names, None)
    # a tree: pre-flight lists it (no decode) and refuses a name that is not one of its folders
    tree = str(tmp_path / "tree")
    synth.make_dataset(tree, classes=2, per_class=2, test_per_class=0, image_size=(16, 16))
    known = synth.class_names("shapes", 2)
    preflight.check_class_weight(TrainConfig(data=DataConfig(uri=tree), class_weight=json.dumps({known[1]: 4})))
    with pytest.raises(ConfigError, match=r"class_weight names unknown class\(es\) \['cow'\]"):
        preflight.check_class_weight(TrainConfig(data=DataConfig(uri=tree), class_weight='{"cow": 4}'))


def test_the_option_reaches_the_config():
    values = values_from_args(train_command, ["--data", "/d", "--class-weight", "balanced"])
    assert build(TrainConfig, TRAIN_OPTIONS, values).class_weight == "balanced"
    values = values_from_args(train_command, ["--data", "/d"])
    assert build(TrainConfig, TRAIN_OPTIONS, values).class_weight == "none" == TrainConfig().class_weight


def test_training_counts_skip_bad_files_and_the_manifest_records_the_weights():
    from imgrec.train import _class_weights, _manifest_base

    records = [{"path": f"/t/{c}/{i}.jpg", "label": label} for label, (c, n) in enumerate((("cat", 9), ("dog", 2)))
               for i in range(n)]
    assert class_counts(records, [{"path": "/t/dog/1.jpg", "reason": "truncated"}], 3) == [9, 1, 0]
    decode = DecodeConfig(image_size=(32, 32))
    data = ImageDataset(class_names=["cat", "dog"], train=None, val=None, test=None,
                        counts={"train": 1000, "val": 0, "test": 0}, bad_files=[], source="/t", decode=decode,
                        split_seed=0, validation_split=0.0, class_counts={"train": [900, 100]})
    cfg = TrainConfig(data=DataConfig(uri="/t", decode=decode), class_weight="balanced", run_name="r")
    weights = _class_weights(cfg, data)
    assert weights == pytest.approx([1000 / 1800, 5.0])
    manifest = _manifest_base(cfg, data, weights)
    assert manifest["class_weights"] == pytest.approx({"cat": 1000 / 1800, "dog": 5.0})
    assert manifest["train_config"]["class_weight"] == "balanced"
    json.dumps(manifest)  # JSON-ready
    unweighted = TrainConfig(data=DataConfig(uri="/t", decode=decode), run_name="r")
    assert _class_weights(unweighted, data) is None and _manifest_base(unweighted, data, None)["class_weights"] is None


# --------------------------------------------------------------------------- the loss


def _tiny_models(class_weight=None):
    """Two copies of one tiny softmax model: ``keras_model`` compiled for ``fit``
    (SGD without momentum: a step is linear in the gradient), ``ours`` for the loop."""
    import keras

    keras.utils.set_random_seed(3)

    def make():
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="relu"),
                                 keras.layers.Dense(3, activation="softmax")])

    keras_model, ours = make(), make()
    ours.set_weights(keras_model.get_weights())
    keras_model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    ours.compile(optimizer=keras.optimizers.SGD(0.5))
    return keras_model, ours


def _loop_train_step(model, class_weights, global_batch, tmp_path):
    import tensorflow as tf

    from imgrec.layout import RunLayout
    from imgrec.loop import step_functions
    from imgrec.loop_state import WorkerLoop

    loop = WorkerLoop(cfg=TrainConfig(), run=RunLayout(str(tmp_path / "run")), rank=0, world=1,
                      class_names=["a", "b", "c"], manifest_base={}, steps_per_epoch=1, global_batch=global_batch,
                      class_weights=class_weights)
    loop.strategy, loop.model = tf.distribute.get_strategy(), model
    return step_functions(loop)[0]


def _batch(n=12):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 0, 1][:n], dtype=np.int64)
    return x, y


def test_the_weighted_train_step_is_keras_class_weight(tmp_path):
    """One step of the loop with weights moves the model exactly as ``fit(class_weight=)``
    does on the same batch, and reports the same (weighted) loss."""
    import tensorflow as tf

    x, y = _batch()
    weights = {0: 0.5, 1: 3.0, 2: 7.0}
    keras_model, ours = _tiny_models()
    history = keras_model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, class_weight=weights, verbose=0)
    step = _loop_train_step(ours, [weights[i] for i in range(3)], len(x), tmp_path)
    loss_sum, correct, seen = (float(v) for v in step((tf.constant(x), tf.constant(y))))
    assert seen == len(x)
    assert loss_sum / seen == pytest.approx(history.history["loss"][0], rel=1e-5)
    for ours_w, keras_w in zip(ours.get_weights(), keras_model.get_weights(), strict=True):
        np.testing.assert_allclose(ours_w, keras_w, rtol=1e-5, atol=1e-6)


def test_the_weighted_loss_is_divided_by_the_global_batch(tmp_path):
    """A replica holding half the global batch contributes sum(w_i * ce_i) / GLOBAL
    batch: its step is half the single-replica step (SGD, no momentum), and the
    weights are not normalised by their own sum."""
    import tensorflow as tf

    x, y = _batch()
    weights = [0.5, 3.0, 7.0]
    _, whole = _tiny_models()
    _, half = _tiny_models()
    before = [w.copy() for w in whole.get_weights()]
    _loop_train_step(whole, weights, len(x), tmp_path)((tf.constant(x), tf.constant(y)))
    _loop_train_step(half, weights, 2 * len(x), tmp_path)((tf.constant(x), tf.constant(y)))
    for b, w, h in zip(before, whole.get_weights(), half.get_weights(), strict=True):
        np.testing.assert_allclose(h - b, 0.5 * (w - b), rtol=1e-4, atol=1e-7)
    # unweighted is the plain mean cross-entropy, unchanged
    keras_model, plain = _tiny_models()
    history = keras_model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    loss_sum, _, seen = (float(v) for v in _loop_train_step(plain, None, len(x), tmp_path)(
        (tf.constant(x), tf.constant(y))))
    assert loss_sum / seen == pytest.approx(history.history["loss"][0], rel=1e-5)


# --------------------------------------------------------------------------- the scores


def test_macro_f1_balanced_accuracy_and_per_class_f1_by_hand():
    # rows: actual, columns: predicted; class c never occurs nor is predicted
    m = confusion_metrics(np.array([[5, 1, 0], [2, 2, 0], [0, 0, 0]]), ["a", "b", "c"])
    f1_a = 2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6)  # = 10/13
    f1_b = 2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2)  # = 4/7
    assert m["per_class"]["a"] == pytest.approx({"precision": 5 / 7, "recall": 5 / 6, "f1": 10 / 13, "support": 6})
    assert m["per_class"]["b"]["f1"] == pytest.approx(4 / 7) == pytest.approx(f1_b)
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["balanced_accuracy"] == pytest.approx((5 / 6 + 1 / 2) / 2)  # over classes present: a, b
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b) / 2)  # c neither present nor predicted: left out
    assert m["accuracy"] == pytest.approx(7 / 10)
    # a class predicted but absent counts in macro-F1 (F1 0), not in balanced accuracy
    m = confusion_metrics(np.array([[3, 1], [0, 0]]), ["a", "b"])
    assert m["macro_f1"] == pytest.approx((6 / 7 + 0) / 2) and m["balanced_accuracy"] == pytest.approx(0.75)


def test_the_scores_from_labels_and_probabilities_match_sklearn_if_installed():
    rng = np.random.default_rng(1)
    labels = rng.choice(4, size=200, p=[0.7, 0.2, 0.08, 0.02])
    probs = rng.dirichlet(np.ones(4), size=200)
    probs[np.arange(200), labels] += rng.uniform(0, 0.6, size=200)  # better than chance, not perfect
    m = classification_metrics(labels, probs, ["w", "x", "y", "z"])
    pred = probs.argmax(axis=1)
    recalls = [np.mean(pred[labels == c] == c) for c in range(4) if (labels == c).any()]
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    try:
        from sklearn.metrics import balanced_accuracy_score, f1_score
    except ImportError:
        return
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(labels, pred, average="macro", zero_division=0))
    per_class = f1_score(labels, pred, average=None, labels=range(4), zero_division=0)
    assert [m["per_class"][n]["f1"] for n in "wxyz"] == pytest.approx(list(per_class))


def test_the_report_shows_the_scores(tmp_path):
    from imgrec.report import write_run_report
    from imgrec.train import RunResult

    test = {**confusion_metrics(np.array([[8, 1], [3, 2]]), ["cat", "dog"]), "split": "test"}
    result = RunResult(run_uri=str(tmp_path / "run"), best_checkpoint="b", latest_checkpoint="l", history=[],
                       class_names=["cat", "dog"], test_metrics=test)
    page = open(write_run_report(result, TrainConfig(class_weight="balanced"))).read()
    assert "balanced accuracy" in page and "macro-F1" in page and "<th>F1</th>" in page
    assert f"{test['macro_f1']:.4f}" in page and f"{test['per_class']['dog']['f1']:.4f}" in page
    assert "<td>class weight</td><td>balanced</td>" in page
