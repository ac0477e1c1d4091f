"""Freezing a backbone: which layers count, how deep a freeze goes, and the
depths that end exactly on a block (from the entry's block-end rule)."""

from __future__ import annotations

import functools
import re

import keras

from imgrec.config import ConfigError
from imgrec.models.registry import BACKBONE_NAME, get_spec, top_blocks


def get_backbone(model: keras.Model) -> keras.Model:
    """The backbone sub-model of a model built (or loaded) here."""
    try:
        layer = model.get_layer(BACKBONE_NAME)
    except ValueError:
        layer = None
    if isinstance(layer, keras.Model):
        return layer
    if getattr(model, "name", None) == BACKBONE_NAME:
        return model
    raise ConfigError(
        f"model {model.name!r} has no backbone (a sub-model named {BACKBONE_NAME!r}); "
        "freezing and backbone weights apply to transfer models (kind 'backbone' in `imgrec models list`)"
    )


def has_backbone(model: keras.Model) -> bool:
    try:
        get_backbone(model)
    except ConfigError:
        return False
    return True


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's layers in Keras order, without its InputLayer."""
    return [layer for layer in get_backbone(model).layers if not isinstance(layer, keras.layers.InputLayer)]


def backbone_layer_count(model: keras.Model) -> int:
    return len(backbone_layers(model))


def set_freeze_depth(model: keras.Model, depth: int | str, *, pretrained: bool = False,
                     model_name: str | None = None) -> int:
    """Freeze the first ``depth`` backbone layers and unfreeze the rest;
    ``"all"`` freezes the whole backbone, ``"all-K"`` all but its top K blocks
    (found by the block-end rule of ``model_name``'s registry entry). Returns the
    number frozen.

    Frozen BatchNormalization layers run in inference mode (Keras 3: a
    BatchNormalization with ``trainable=False`` uses its moving statistics and
    does not update them, even in ``fit``). With ``pretrained`` weights every
    backbone BatchNormalization stays frozen, unfrozen blocks included: small
    fine-tuning batches would otherwise overwrite the pretrained statistics (the
    classic transfer-learning pitfall; ``backbone(x, training=False)`` does not
    help in Keras 3, whose ``fit`` passes ``training=True`` through, keras#20285).
    A backbone trained from scratch needs its batch statistics: leave it False. Works on a freshly built model and
    on one reloaded with ``keras.models.load_model``. Compile (again) afterwards:
    the trainable set is fixed when the train step is traced.

    A model without a backbone (course, scratch) accepts only depth 0, as a no-op,
    so training code can call this for every model."""
    if depth in (0, "0", None) and not has_backbone(model):
        return 0
    layers = backbone_layers(model)
    n = _resolve_depth(depth, layers, model_name)
    backbone = get_backbone(model)
    backbone.trainable = True  # clears any blanket freeze before the per-layer one
    for i, layer in enumerate(layers):
        layer.trainable = i >= n and not (pretrained and isinstance(layer, keras.layers.BatchNormalization))
    return n


def frozen_depth(model: keras.Model) -> int:
    """How many leading backbone layers are frozen (what ``set_freeze_depth`` set).
    BatchNormalization layers kept frozen in a pretrained backbone's trainable part
    do not count: the depth ends before them where they open the trainable part."""
    layers = backbone_layers(model)
    n = next((i for i, layer in enumerate(layers) if layer.trainable), len(layers))
    bn = keras.layers.BatchNormalization
    kept = any(isinstance(layer, bn) and not layer.trainable for layer in layers[n:])  # pretrained mode
    while kept and 0 < n < len(layers) and isinstance(layers[n - 1], bn):
        n -= 1
    return n


def _resolve_depth(depth: int | str | None, layers: list[keras.layers.Layer], model_name: str | None) -> int:
    count = len(layers)
    if depth is None:
        return 0
    if isinstance(depth, str):
        if depth.strip().lower() == "all":
            return count
        top = top_blocks(depth)
        if top is not None:
            return _all_but_top(layers, top, model_name)
        try:
            depth = int(depth)
        except ValueError:
            raise ConfigError(f"freeze_depth must be an integer, 'all' or 'all-K', got {depth!r}") from None
    if not 0 <= int(depth) <= count:
        raise ConfigError(
            f"freeze_depth must be between 0 and {count} (this backbone's layer count) or 'all', got {depth}; "
            "see models.block_boundaries() for depths that end on a block"
        )
    return int(depth)


def _all_but_top(layers: list[keras.layers.Layer], top: int, model_name: str | None) -> int:
    if model_name is None:
        raise ConfigError("freeze_depth 'all-K' counts blocks: pass model_name so the block rule is known")
    ends = _block_ends(layers, get_spec(model_name).blocks)
    if not 1 <= top <= len(ends):
        raise ConfigError(f"freeze_depth all-{top}: {model_name} has {len(ends) + 1} blocks, so K must be in "
                          f"[1, {len(ends)}]; give a smaller K, or 0 to fine-tune everything", "model.freeze_depth")
    return ends[-top]


def _block_ends(layers: list[keras.layers.Layer], rule: str) -> list[int]:
    pattern = re.compile(rule)
    ends: set[int] = set()
    last_of_block: dict[str, int] = {}
    for i, layer in enumerate(layers):
        m = pattern.search(f"{type(layer).__name__}:{layer.name}")
        if not m:
            continue
        block = m.groupdict().get("block")
        if block:
            last_of_block[block] = i
        else:
            ends.add(i)
    ends.update(last_of_block.values())
    # A boundary k means "freeze layers[:k]"; freezing everything is "all", not a boundary.
    return sorted(i + 1 for i in ends if i + 1 < len(layers))


@functools.cache
def _block_boundaries_cached(name: str, alpha: float | None) -> tuple[int, ...]:
    spec = get_spec(name)
    size = max(spec.min_size, 32)
    backbone = spec.construct((size, size), alpha)
    layers = [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    return tuple(_block_ends(layers, spec.blocks))


def block_boundaries(name: str, alpha: float | None = None) -> list[int]:
    """Freeze depths that stop exactly after a block (e.g. MobileNet's
    ``conv_pw_N_relu``, ResNet's ``convN_blockM_out``, EfficientNet's
    ``blockNx`` ends), computed from the layer names of a weightless build."""
    spec = get_spec(name)
    if spec.kind != "backbone":
        raise ConfigError(f"{spec.name} has no backbone, so no block boundaries")
    return list(_block_boundaries_cached(spec.name, None if alpha is None else float(alpha)))


# --------------------------------------------------------------------------- weights files
