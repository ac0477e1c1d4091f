"""Backbone weights files: fetched once per node from s3://, checked against the
backbone before anything is assigned, in the three formats Keras writes (the
published legacy ``.h5`` notop files, Keras 3 ``.weights.h5``, whole ``.keras``
models), and written back with what they hold recorded."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from typing import Any

import keras
import numpy as np

from imgrec import storage
from imgrec.config import ConfigError
from imgrec.layout import cache_dir
from imgrec.models.freeze import get_backbone
from imgrec.models.layers import fix_efficientnet_normalization
from imgrec.models.registry import ModelSpec, get_spec, model_identity, parse_model_name, warn_size

log = logging.getLogger(__name__)


class WeightsMismatchError(ValueError):
    """A weights file does not fit the backbone (other architecture or alpha)."""


def weights_cache_dir() -> str:
    return cache_dir("weights")


def fetch_weights(uri: str) -> str:
    """A local path for a weights file: local paths as they are; s3:// URIs are
    downloaded once per node into ``weights_cache_dir()`` (atomically, so
    concurrent workers never see half a file) and reused afterwards. The cache
    is keyed by URI: write a changed file under a new name."""
    if not storage.is_s3(uri):
        path = storage.normalize(uri)
        if not os.path.isfile(path):
            raise ConfigError(f"weights file {path} does not exist; give a local path or s3:// URI to a weights file")
        return path
    uri = storage.normalize(uri)
    digest = hashlib.sha256(uri.encode("utf-8")).hexdigest()[:16]
    local = os.path.join(weights_cache_dir(), digest, storage.basename(uri))
    if os.path.isfile(local):
        log.info("weights %s: using the cached copy %s", uri, local)
        return local
    log.info("weights %s: downloading to %s", uri, local)
    return storage.download_file(uri, local)


def load_backbone_weights(
    backbone: keras.Model,
    weights: str,
    *,
    spec: ModelSpec | str | None = None,
    alpha: float | None = None,
    image_size: tuple[int, int] | None = None,
) -> None:
    """Load a weights file (local path or s3:// URI) into a backbone.

    * ``.h5``: the original Keras applications notop files (the legacy HDF5
      format), loaded by layer order as keras.applications itself does.
    * ``.weights.h5``: Keras 3 weights of a backbone (``save_backbone_weights``)
      or of a whole imgrec model (its backbone part is used).
    * ``.keras``: a whole saved model; the weights of its backbone are used.

    Everything is checked before anything is assigned: a file that does not fit
    raises ``WeightsMismatchError`` naming the file, the backbone, alpha and the
    first mismatching layer. Nothing here touches the network for a local path."""
    spec = get_spec(spec) if spec is not None else None
    label = f"{spec.name if spec else backbone.name} (alpha={alpha})"
    path = fetch_weights(weights)
    with tempfile.TemporaryDirectory(prefix="imgrec-weights-") as tmp:
        meta: dict[str, Any] = {}
        if zipfile.is_zipfile(path):
            h5_path, meta = _unpack_keras_archive(path, tmp, weights)
        else:
            h5_path = path
        fmt, file_meta = _h5_format(h5_path, weights)
        meta = {**file_meta, **meta}
        source = _describe_source(meta)
        if fmt == "legacy":
            _load_legacy_h5(backbone, h5_path, weights, label, source)
        else:
            _load_keras3_h5(backbone, h5_path, weights, label, source, tmp)
    if spec is not None and image_size is not None:
        trained = meta.get("input_size") or _size_from_filename(weights)
        warn_size(spec, tuple(image_size), tuple(trained) if trained else None, f"the weights in {weights}")
    if spec is not None and spec.imagenet_stddev_fix:
        fix_efficientnet_normalization(backbone)


def _describe_source(meta: dict[str, Any]) -> str:
    if not meta.get("model"):
        return ""
    alpha = meta.get("alpha")
    return f"; the file holds {meta['model']} (alpha={alpha}) weights"


def _size_from_filename(uri: str) -> tuple[int, int] | None:
    # The published MobileNet files name their resolution: mobilenet_1_0_224_tf_no_top.h5.
    m = re.search(r"_(\d{2,3})_(?:tf_)?no_top", storage.basename(uri))
    return (int(m[1]), int(m[1])) if m else None


def _unpack_keras_archive(path: str, tmp: str, uri: str) -> tuple[str, dict[str, Any]]:
    """The weights file and what we can tell (model, alpha, input size) of a .keras archive."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        if "model.weights.h5" not in names:
            raise ConfigError(f"{uri} is a zip without model.weights.h5; give a .keras model saved by Keras 3")
        zf.extract("model.weights.h5", tmp)
        config = json.loads(zf.read("config.json")) if "config.json" in names else {}
    meta: dict[str, Any] = {}
    model_cfg = config.get("config", {})
    spec_name, alpha = parse_model_name(model_cfg.get("name", ""))
    if spec_name:
        meta.update(model=spec_name, alpha=alpha)
    for layer in model_cfg.get("layers", []):
        if layer.get("class_name") == "InputLayer":
            shape = layer.get("config", {}).get("batch_shape") or []
            if len(shape) == 4 and shape[1] and shape[2]:
                meta["input_size"] = (int(shape[1]), int(shape[2]))
            break
    return os.path.join(tmp, "model.weights.h5"), meta


def _h5_format(path: str, uri: str) -> tuple[str, dict[str, Any]]:
    """'legacy' (keras 2 / applications files) or 'keras3', judged by content, plus our metadata."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            meta = _read_meta(f.attrs)
            if any(str(k).startswith("layer_names") for k in f.attrs) or "model_weights" in f:
                return "legacy", meta
            if "layers" in f or "vars" in f:
                return "keras3", meta
    except OSError as exc:
        raise ConfigError(
            f"{uri} is not an HDF5 weights file or a .keras model ({exc}); "
            "give a .h5, .weights.h5 or .keras file"
        ) from None
    raise ConfigError(f"{uri}: an HDF5 file, but not Keras weights (neither legacy nor Keras 3 layout)")


_META_KEYS = ("imgrec_model", "imgrec_alpha", "imgrec_input_size")


def _read_meta(attrs) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if "imgrec_model" in attrs:
        meta["model"] = _text(attrs["imgrec_model"])
        alpha = float(attrs.get("imgrec_alpha", -1.0))
        meta["alpha"] = None if alpha < 0 else alpha
        size = attrs.get("imgrec_input_size")
        if size is not None and len(size) == 2:
            meta["input_size"] = (int(size[0]), int(size[1]))
    return meta


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _mismatch(uri: str, label: str, source: str, detail: str) -> WeightsMismatchError:
    return WeightsMismatchError(
        f"weights file {uri} does not fit backbone {label}{source}: {detail}. "
        "Use weights saved from the same backbone with the same alpha, or change the model/alpha to match the file"
    )


# --- legacy HDF5 (the published keras.applications notop files)


def _legacy_weight_list(layer) -> list:
    # The order keras' legacy HDF5 format uses (trainable first, then the rest).
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _load_legacy_h5(backbone: keras.Model, path: str, uri: str, label: str, source: str) -> None:
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        saved = []
        # keras' helper also reads attributes split into chunks (layer_names0, layer_names1, ...)
        # which large models need: HDF5 caps one attribute at 64 kB.
        read = legacy_h5_format.load_attributes_from_hdf5_group
        for name in [_text(n) for n in read(group, "layer_names")]:
            weight_names = [_text(n) for n in read(group[name], "weight_names")]
            if weight_names:
                saved.append((name, [tuple(group[name][w].shape) for w in weight_names]))
        expected = [(layer.name, [tuple(w.shape) for w in _legacy_weight_list(layer)]) for layer in backbone.layers]
        expected = [(name, shapes) for name, shapes in expected if shapes]
        # Loading is by order, as keras.applications does: compare layer by layer first.
        for k, ((name, shapes), (saved_name, saved_shapes)) in enumerate(zip(expected, saved, strict=False)):
            if shapes != saved_shapes:
                raise _mismatch(
                    uri, label, source,
                    f"weighted layer #{k} {name!r} expects shapes {shapes}, the file's layer {saved_name!r} has {saved_shapes}",
                )
        if len(expected) != len(saved):
            extra = saved[len(expected)][0] if len(saved) > len(expected) else expected[len(saved)][0]
            raise _mismatch(
                uri, label, source,
                f"the backbone has {len(expected)} layers with weights, the file {len(saved)} (first unmatched: {extra!r})",
            )
        legacy_h5_format.load_weights_from_hdf5_group(group, backbone)


# --- Keras 3 weights (.weights.h5, or inside .keras)


def _dataset_shapes(group) -> dict[str, tuple]:
    import h5py

    shapes: dict[str, tuple] = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            shapes[name] = tuple(obj.shape)

    group.visititems(visit)
    return shapes


def _snake(name: str) -> str:
    # keras.src.utils.naming.to_snake_case: how Keras 3 names entries in weight files.
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _entry_names(model: keras.Model) -> dict[str, str]:
    """File entry ('conv2d_3') -> layer name ('conv_pw_2'). Keras 3 addresses
    layers by class and position, not by name, which is what makes its files
    portable across sessions; this maps entries back for error messages."""
    used: dict[str, int] = {}
    entries: dict[str, str] = {}
    for layer in model.layers:
        base = _snake(type(layer).__name__)
        if base in used:
            used[base] += 1
            entry = f"{base}_{used[base]}"
        else:
            used[base] = 0
            entry = base
        entries[entry] = layer.name
    return entries


def _load_keras3_h5(backbone: keras.Model, path: str, uri: str, label: str, source: str, tmp: str) -> None:
    import h5py

    probe = os.path.join(tmp, "expected.weights.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone.save_weights(probe)
    with h5py.File(probe, "r") as f:
        expected = _dataset_shapes(f)
    with h5py.File(path, "r") as f:
        # A backbone's own file has its layers at the root; a whole imgrec model
        # keeps the backbone as its (only) nested Functional: layers/functional.
        nested = "layers/functional"
        candidates = [""]
        if nested in f and not any(k.startswith(nested + "/") for k in expected):
            candidates = [nested, ""]
        results = []
        for prefix in candidates:
            found = _dataset_shapes(f[prefix]) if prefix else _dataset_shapes(f)
            results.append((prefix, _first_difference(expected, found, backbone)))
        prefix, problem = next(((p, d) for p, d in results if d is None), results[0])
        if problem is not None:
            raise _mismatch(uri, label, source, problem)
        if prefix:
            sub = os.path.join(tmp, "backbone.weights.h5")
            with h5py.File(sub, "w") as out:
                for key in f[prefix]:
                    f.copy(f[prefix][key], out, name=key)
            path = sub
    with warnings.catch_warnings():
        # Keras 3.15 warns about internal containers of Functional models that it
        # never writes; the layout check above already proved the file complete.
        warnings.filterwarnings("ignore", message="Skipping nested container")
        backbone.load_weights(path)


def _first_difference(expected: dict[str, tuple], found: dict[str, tuple], backbone: keras.Model) -> str | None:
    entries = _entry_names(backbone)
    order = {entry: i for i, entry in enumerate(entries)}

    def where(key: str) -> str:
        parts = key.split("/")
        entry = parts[1] if len(parts) > 1 and parts[0] == "layers" else key
        return f"layer {entries[entry]!r} ({key})" if entry in entries else key

    def sort_key(key: str):
        parts = key.split("/")
        return (order.get(parts[1] if len(parts) > 1 else "", len(order)), key)

    for key in sorted(set(expected) | set(found), key=sort_key):
        if key not in found:
            return f"{where(key)} is missing from the file (backbone expects shape {expected[key]})"
        if key not in expected:
            return f"the file has {key} with shape {found[key]}, which this backbone does not have"
        if expected[key] != found[key]:
            return f"{where(key)}: backbone expects shape {expected[key]}, the file has {found[key]}"
    return None


def save_backbone_weights(model: keras.Model, path: str) -> str:
    """Write the backbone's weights of ``model`` to ``path`` (local or s3://):
    ``.weights.h5`` in the Keras 3 format, any other ``.h5`` in the legacy format
    of the published keras.applications files. The file records the registry
    name, alpha and input size, so a later mismatch error can say what it holds.
    Returns the normalised path."""
    import h5py

    backbone = get_backbone(model)
    spec_name, alpha = model_identity(model)
    uri = storage.normalize(path)
    if not uri.lower().endswith(".h5"):
        raise ConfigError(f"backbone weights go to a .weights.h5 (or legacy .h5) file, got {path!r}")
    with tempfile.TemporaryDirectory(prefix="imgrec-weights-") as tmp:
        local = os.path.join(tmp, storage.basename(uri))
        if uri.lower().endswith(".weights.h5"):
            backbone.save_weights(local)
        else:
            from keras.src.legacy.saving import legacy_h5_format

            with h5py.File(local, "w") as f:
                legacy_h5_format.save_weights_to_hdf5_group(f, backbone)
        with h5py.File(local, "a") as f:
            if spec_name:
                f.attrs["imgrec_model"] = spec_name
                f.attrs["imgrec_alpha"] = -1.0 if alpha is None else float(alpha)
            f.attrs["imgrec_input_size"] = np.asarray(backbone.input_shape[1:3], dtype="int64")
        if storage.is_s3(uri):
            with open(local, "rb") as fh:
                storage.write_bytes(uri, fh.read())
        else:
            os.makedirs(os.path.dirname(uri), exist_ok=True)
            shutil.move(local, uri)
    return uri


# --------------------------------------------------------------------------- the table
