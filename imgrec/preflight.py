"""Pre-flight: a whole config checked before Ray or TensorFlow is imported and
before anything is written.

The config dataclasses check each value on its own (``__post_init__``); this
module checks what needs the rest of imgrec: the model registry's rules (head,
dropout, alpha, weights and freeze depth for this model, the image size it
accepts, a sweep's freeze depths) and every URI: the data tree (a cheap listing,
not the decode) or label manifest (read whole, its first image there), the weights file, the model to predict with, and the storage
and output buckets (there, and the credentials work). ``train``, the sweep
driver and ``predict_bucket`` call these first, so Python callers get them too.

Every failure is one ``ConfigError`` naming the config field at fault
(``model.dropout``), which the CLI shows as its option (``--dropout``), and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from imgrec import checkpoint as ckpt
from imgrec import models, storage
from imgrec.config import (
    CACHE_MODES,
    ConfigError,
    PredictConfig,
    SweepConfig,
    TrainConfig,
    parse_class_weight,
    replace,
    resolve_class_weights,
)
from imgrec.data.manifest import is_manifest, list_images, list_manifest
from imgrec.data.tree import DataError, list_image_tree
from imgrec.decode import IMAGE_SUFFIXES
from imgrec.models.registry import ModelSpec, check_model_config, check_size, weights_kind
from imgrec.tracking.uris import check_tracking

NAMED_DATASETS = ("cifar10",)  # data URIs that are not a tree (loaded by name)


@contextmanager
def blame(path: str) -> Iterator[None]:
    """Errors raised inside name the config field ``path``: a ConfigError's own
    field goes under it (``model`` + ``dropout``), a storage, checkpoint or data
    error becomes a ConfigError of that field."""
    try:
        yield
    except ConfigError as exc:
        exc.field = f"{path}.{exc.field}" if exc.field else path
        raise
    except (storage.StorageError, ckpt.CheckpointError, DataError) as exc:
        raise ConfigError(f"{path}: {exc}", path) from None


# --------------------------------------------------------------------------- the entry points


def check_train(cfg: TrainConfig, *, data: bool = True) -> None:
    """A run's config (a resumed run's own) fits its model and its URIs work;
    ``data=False`` when the caller hands the data in (arrays, a loaded dataset)."""
    check_model(cfg)
    check_tracking(cfg.tracking)
    check_inputs(cfg, data=data)
    with blame("storage"):
        check_storage(cfg.storage)


def check_sweep(cfg: SweepConfig, *, data: bool = True) -> None:
    """The base run (its trials write under the sweep, not its storage) and every
    freeze depth the sweep will try with it. The sweep's own storage is checked
    by the sweep driver, first: it reads a saved ``sweep.json`` from there."""
    with blame("base"):
        spec = check_model(cfg.base)
        check_tracking(cfg.base.tracking)
        check_inputs(cfg.base, data=data)
    for depth in cfg.freeze_depths or []:
        try:
            check_model_config(spec, replace(cfg.base.model, freeze_depth=depth))
        except ConfigError as exc:
            raise ConfigError(f"freeze_depths: {exc}", "freeze_depths") from None


def check_predict(cfg: PredictConfig) -> ckpt.CheckpointRef:
    """The model resolves to a complete checkpoint (returned), the input is there
    and the output's bucket works."""
    with blame("model"):
        ref = ckpt.resolve(cfg.model)
    with blame("input"):
        if not storage.exists(cfg.input):
            raise ConfigError(f"input {cfg.input}: nothing there; give an image prefix or a .txt/.csv/.parquet "
                              "manifest")
    with blame("output"):
        check_storage(cfg.output)
    return ref


# --------------------------------------------------------------------------- the checks


def check_model(cfg: TrainConfig) -> ModelSpec:
    """The model's registry entry, after its rules: the ``ModelConfig``, the image size, two stages."""
    with blame("model.name"):
        spec = models.get_spec(cfg.model.name)
    with blame("model"):
        check_model_config(spec, cfg.model)
    with blame("data.decode.image_size"):
        check_size(spec, cfg.data.decode.image_size)
    if cfg.head_epoch_count() and spec.kind != "backbone":
        raise ConfigError(f"head_epochs (two-stage transfer) applies to backbones; {spec.name} has none, "
                          "set it to 0", "head_epochs")
    return spec


def check_inputs(cfg: TrainConfig, *, data: bool = True) -> None:
    """What a run reads: its data tree (unless handed in), the decoded cache's folder
    (written by the decode tasks) and its weights file."""
    if data:
        with blame("data.uri"):
            check_data(cfg.data.uri)
        check_class_weight(cfg)
        if cfg.data.cache not in CACHE_MODES:
            with blame("data.cache"):
                check_storage(cfg.data.cache)
    with blame("model.weights"):
        check_weights(cfg.model.weights)


def check_data(uri: str) -> None:
    """A class-per-folder tree is there: the listing stops at the second class
    folder holding an image; anything else gets the full listing's own verdict.
    A label manifest is read whole (every fault of its rows is refused here) and
    its first image must be there: a wrong base for relative URIs shows now, not
    as a run of unreadable files."""
    if not uri:
        raise ConfigError("data.uri is empty: give an image tree (<root>/train/<class>/*.jpg), a .csv/.parquet "
                          "label manifest, or cifar10")
    if uri in NAMED_DATASETS:
        return
    if is_manifest(uri):
        check_manifest(uri)
        return
    root = storage.normalize(uri)
    if not storage.is_s3(root) and os.path.isfile(root):
        raise ConfigError(f"{uri} is a file; give the root folder of an image tree (<root>/train/<class>/*.jpg) "
                          "or a label manifest (.csv or .parquet of uri,label[,split])")
    if not storage.exists(root):
        list_image_tree(root)  # raises: no files found, with the expected layout
    train = storage.join(root, "train")
    top = train if storage.exists(train) else root
    classes = set()
    for obj in storage.list_objects(top, suffixes=IMAGE_SUFFIXES):
        folder = obj.path.split("/", 1)[0] if "/" in obj.path else None
        if folder and not (top == root and folder == "test"):  # test/ without train/: the listing refuses it
            classes.add(folder)
        if len(classes) >= 2:
            return
    list_image_tree(root)  # raises, naming what is wrong with the tree


def check_manifest(uri: str) -> None:
    listed = list_manifest(uri)
    first = listed.train[0]["path"]  # a listed manifest has rows of 2+ labels to train on
    if not storage.exists(first):
        raise DataError(f"{listed.root}: its first image {first} is not there; relative URIs resolve against the "
                        f"manifest's folder {storage.parent(listed.root)}")


def check_class_weight(cfg: TrainConfig) -> None:
    """A ``class_weight`` mapping names only classes of the data (its full listing, no
    decode); ``none``, ``balanced`` and named datasets are resolved by the driver."""
    if not isinstance(parse_class_weight(cfg.class_weight), dict) or cfg.data.uri in NAMED_DATASETS:
        return
    resolve_class_weights(cfg.class_weight, list_images(cfg.data.uri).class_names, None)


def check_weights(weights: str | None) -> None:
    """A weights file (not ``none``/``imagenet``) exists: a local file or an S3 object."""
    if weights_kind(weights) != "file":
        return
    uri = storage.normalize(weights)
    found = storage.exists(uri) if storage.is_s3(uri) else os.path.isfile(uri)
    if not found:
        raise ConfigError(f"weights file {weights} does not exist; give none, imagenet, or the local path or "
                          "s3:// URI of a .h5, .weights.h5 or .keras file")


def check_storage(uri: str) -> None:
    """Where a job writes: an S3 bucket that exists and answers to these credentials,
    or a local folder (created later, when the job writes) that is not a file."""
    if storage.is_s3(uri):
        storage.check_bucket(uri)
    elif os.path.isfile(storage.normalize(uri)):
        raise ConfigError(f"{uri} is a file; give a folder or s3://bucket/prefix")
