"""The image data plane: class-per-folder trees, label manifests (or arrays) from
any storage URI into Ray Data datasets of uint8 pixels, decoded once and
augmented every epoch.

Flow::

    list_images(uri)                -> ImageTree (class names, file records, split):
        list_image_tree(root)          a class-per-folder tree, or
        list_manifest(uri)             a .csv/.parquet of uri,label[,split]
    load_dataset(DataConfig)        -> ImageDataset: train / val / test Ray datasets
        read bytes + decode (map_batches, threaded GETs)  -> materialize()  (decode once)
        bad files dropped inside the decode tasks, then re-checked here for the report
        with a persistent cache (DataConfig.cache, default <storage>/.cache/): one task per
        shard of ~256 files reads its cached Parquet shard, or decodes the files and writes it
        train: randomize_block_order + Augmenter           (every epoch, fresh randomness)
    shard_batches / to_tf_dataset   -> per-worker (uint8 images, int labels) batches

    inspect(uri)                    -> InspectReport: counts per class and split, image sizes, bad files
    typical_image_size(uri)         -> median (h, w) of a header sample: train's default size for small images
    export_arrays / export_cifar10  -> in-memory arrays written as a PNG class-per-folder tree

Class names come from the folder names (a manifest's labels), sorted, and travel with every
checkpoint and prediction so label indices never drift.

Modules: ``tree`` (listing, split), ``manifest`` (label manifests, the one
manifest reader), ``read`` (bytes from any storage URI, the
decode UDF), ``cache`` (the persistent decoded cache), ``datasets`` (decode once, arrays, CIFAR-10, augmentation wiring),
``feed`` (batches for training), ``inspection`` (``imgrec inspect``), ``export``.
"""

from __future__ import annotations

from imgrec.data.datasets import ImageDataset, augmented, load_cifar10, load_dataset
from imgrec.data.export import export_arrays, export_cifar10
from imgrec.data.feed import shard_batches, take_arrays, to_tf_dataset
from imgrec.data.inspection import InspectReport, SizeSummary, inspect, typical_image_size
from imgrec.data.manifest import is_manifest, list_images, list_manifest
from imgrec.data.read import DecodeImages, MemoryGate, ReadError, fetch_bytes, memory_gate
from imgrec.data.tree import (
    ARRAY_SCHEME,
    CIFAR10_CLASSES,
    DataError,
    ImageTree,
    list_image_tree,
    split_records,
)

__all__ = [
    "ARRAY_SCHEME", "CIFAR10_CLASSES", "DataError", "DecodeImages", "ImageDataset", "ImageTree", "InspectReport",
    "MemoryGate", "ReadError", "SizeSummary", "augmented", "export_arrays", "export_cifar10", "fetch_bytes",
    "inspect", "is_manifest", "list_image_tree", "list_images", "list_manifest", "load_cifar10", "load_dataset", "memory_gate", "shard_batches", "split_records",
    "take_arrays", "to_tf_dataset", "typical_image_size",
]
