"""Label manifests (``imgrec.data.manifest``): a CSV or Parquet of
``uri,label[,split]`` lists into the same records, class names and hash split as
the class-per-folder tree of the same files; every fault of a manifest is one
clear ``DataError``; and one small Ray training from a manifest in S3 records
the manifest (URI and digest) as its data lineage."""

from __future__ import annotations

import hashlib
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgrec import data, storage, synth
from imgrec.config import DataConfig, DecodeConfig, ModelConfig, TrainConfig
from imgrec.data import DataError, split_records
from imgrec.data.manifest import manifest_rows
from imgrec.layout import RunLayout


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A local train/test tree of 3 classes with a non-image file in train/."""
    root = str(tmp_path_factory.mktemp("manifest") / "tree")
    synth.make_dataset(root, classes=3, per_class=12, test_per_class=3, image_size=(16, 16))
    return root


def tree_rows(root: str) -> list[tuple[str, str, str]]:
    """(path under the root, label, split) of every image of a tree, from its own listing."""
    listed = data.list_image_tree(root)
    return ([(f"train/{r['rel']}", listed.class_names[r["label"]], "") for r in listed.train]
            + [(f"test/{r['rel']}", listed.class_names[r["label"]], "test") for r in listed.test])


def write_csv(uri: str, header: str, rows) -> str:
    storage.atomic_write(uri, header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return uri


def by_path(records):
    # A tree's listing gives file versions (the decoded cache's key), a manifest's rows none.
    return sorted(({k: v for k, v in r.items() if k != "version"} for r in records), key=lambda r: r["path"])


def assert_same_data(a, b):
    """Two listings hold the same data: class names, records, split, counts."""
    assert a.class_names == b.class_names
    assert by_path(a.train) == by_path(b.train) and by_path(a.test) == by_path(b.test)
    for fraction, seed in ((0.3, 0), (0.5, 3)):
        (ta, va), (tb, vb) = split_records(a.train, fraction, seed, a.splits), split_records(b.train, fraction,
                                                                                               seed, b.splits)
        assert by_path(ta) == by_path(tb) and by_path(va) == by_path(vb) and va


# --------------------------------------------------------------------------- the same data as the tree (no Ray)


def test_a_csv_manifest_of_a_tree_lists_and_splits_as_the_tree(tree):
    """Relative URIs at the tree's root, test rows marked: the same records, class
    names, train/val split and test set; `imgrec data inspect` counts the same."""
    manifest = write_csv(f"{tree}/labels.csv", "uri,label,split", tree_rows(tree))
    listed, folders = data.list_images(manifest), data.list_images(tree)
    assert_same_data(listed, folders)
    assert listed.root == manifest and listed.manifest_sha256 == hashlib.sha256(
        open(manifest, "rb").read()).hexdigest()
    assert folders.manifest_sha256 is None
    seen = [data.inspect(uri, validation_split=0.3, sample=0, decode_all=False) for uri in (manifest, tree)]
    assert seen[0].counts == seen[1].counts and seen[0].class_names == seen[1].class_names
    assert sum(seen[0].counts["test"].values()) == 9


def test_a_parquet_manifest_of_absolute_uris_elsewhere_equals_the_flat_tree(tree, tmp_path):
    """Parquet, integer-free text labels, absolute URIs, the manifest outside the
    tree: the tree ``<root>/<class>/*`` (no train/ folder) lists the same."""
    flat = data.list_image_tree(f"{tree}/train")
    paths = [r["path"] for r in flat.train]
    labels = [flat.class_names[r["label"]] for r in flat.train]
    pq.write_table(pa.table({"path": paths, "label": labels}), tmp_path / "labels.parquet")
    listed = data.list_images(str(tmp_path / "labels.parquet"))
    assert listed.class_names == flat.class_names and listed.test == [] and listed.splits == {}
    assert [(r["path"], r["label"]) for r in by_path(listed.train)] == [(r["path"], r["label"])
                                                                          for r in by_path(flat.train)]
    assert {r["rel"] for r in listed.train} == set(paths)  # outside the manifest's folder: keyed by the full URI
    # Keyed by the path under the manifest's folder: written beside the class folders, the keys are the tree's.
    beside = write_csv(f"{tree}/train/labels.csv", "uri,label", [(os.path.relpath(p, f"{tree}/train"), lab)
                                                                   for p, lab in zip(paths, labels, strict=True)])
    assert_same_data(data.list_images(beside), flat)


def test_a_split_column_places_its_rows_and_the_rest_split_by_hash(tree, tmp_path):
    rows = [r for r in tree_rows(tree) if r[2] != "test"]
    fixed = {rows[0][0]: "val", rows[1][0]: "train", rows[-1][0]: "val"}
    manifest = write_csv(str(tmp_path / "labels.csv"), "uri,label,split",
                         [(f"{tree}/{p}", lab, fixed.get(p, "")) for p, lab, _ in rows])
    listed = data.list_images(manifest)
    assert {os.path.relpath(p, tree): s for p, s in listed.splits.items()} == fixed
    for fraction in (0.0, 0.3, 0.9):
        train, val = split_records(listed.train, fraction, 0, listed.splits)
        val_paths = {os.path.relpath(r["path"], tree) for r in val}
        train_paths = {os.path.relpath(r["path"], tree) for r in train}
        assert {rows[0][0], rows[-1][0]} <= val_paths and rows[1][0] in train_paths
        assert len(train) + len(val) == len(rows)
        if fraction == 0.0:
            assert len(val) == 2  # only the rows the manifest puts there
        else:
            assert {r["label"] for r in train} == {r["label"] for r in val} == {0, 1, 2}


def test_non_image_rows_are_skipped_and_reported_and_prediction_reads_the_uri_column(tree, tmp_path):
    rows = [(f"{tree}/{p}", lab) for p, lab, s in tree_rows(tree) if not s] + [(f"{tree}/notes.txt", "a")]
    manifest = write_csv(str(tmp_path / "labels.csv"), "uri,label", rows)
    listed = data.list_images(manifest)
    assert listed.skipped == [{"path": f"{tree}/notes.txt", "reason": listed.skipped[0]["reason"]}]
    assert "not an image" in listed.skipped[0]["reason"] and len(listed.train) == len(rows) - 1
    assert [p for p, _ in manifest_rows(manifest)] == [p for p, _ in rows]  # one reader, `uri` or `path`


# --------------------------------------------------------------------------- bad manifests: one clear error each


BAD = {
    "no uri column": ("file,label\na.jpg,x\n", "no `uri` column (found ['file', 'label'])"),
    "no label column": ("uri,class\na.jpg,x\n", "no `label` column (found ['uri', 'class'])"),
    "empty label": ("uri,label\na.jpg,x\nb.jpg,\nc.jpg,y\n", "line 3: empty label for b.jpg"),
    "empty uri": ("uri,label\na.jpg,x\n,y\n", "line 3: empty uri"),
    "duplicate": ("uri,label\na.jpg,x\nb.jpg,y\n./a.jpg,y\n", "line 4: listed already at line 2 (./a.jpg)"),
    "escaping": ("uri,label\na.jpg,x\n../b.jpg,y\n", "line 3: '../b.jpg' has a `..` segment"),
    "only in test": ("uri,label,split\na.jpg,x,\nb.jpg,y,\nc.jpg,z,test\n",
                     "label(s) ['z'] appear only in test rows"),
    "only in val": ("uri,label,split\na.jpg,x,\nb.jpg,y,\nc.jpg,z,val\n", "label(s) ['z'] appear only in val rows"),
    "unknown split": ("uri,label,split\na.jpg,x,\nb.jpg,y,validation\n",
                      "line 3: split 'validation' is not one of train, val, test"),
    "one label": ("uri,label\na.jpg,x\nb.jpg,x\n", "found rows for only 1 label ['x']"),
    "header only": ("uri,label\n", "no rows"),
    "not csv": ('uri,label\n"a.jpg,x\nb.jpg\n', "cannot be read as CSV"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_manifest_is_one_error_naming_the_manifest_and_row(tmp_path, case):
    text, says = BAD[case]
    manifest = tmp_path / "labels.csv"
    manifest.write_text(text)
    with pytest.raises(DataError) as err:
        data.list_images(str(manifest))
    assert str(err.value).startswith(str(manifest)) and says in str(err.value), str(err.value)


def test_unreadable_files_and_wrong_kinds_are_refused(tmp_path, bucket):
    (tmp_path / "labels.parquet").write_bytes(b"not a parquet file")
    (tmp_path / "list.txt").write_text("a.jpg\n")
    for uri, says in ((str(tmp_path / "labels.parquet"), "cannot be read as Parquet"),
                      (str(tmp_path / "list.txt"), "a .txt manifest lists files without labels"),
                      (str(tmp_path / "nothing.csv"), "manifest not found"),
                      (f"{bucket}/nothing.csv", "manifest not found")):
        with pytest.raises(DataError, match=says):
            data.list_images(uri)


# --------------------------------------------------------------------------- one training run from a manifest in S3


def test_training_from_a_manifest_in_s3_records_it_as_the_lineage(ray_cluster, shapes_data, bucket):
    """A CSV of part of the shared tree's files (relative URIs, test rows marked,
    a corrupt file among them) beside the tree in S3: the run's class names,
    split counts and bad files are the listing's, its checkpoint names the
    manifest and its digest, and evaluation scores the manifest's test rows."""
    from imgrec import checkpoint as ckpt
    from imgrec.train import train

    folders = data.list_image_tree(shapes_data)
    per_class = {}
    rows = []
    for split, records in (("", folders.train), ("test", folders.test)):
        for r in records:  # the first files of each class, and both corrupt ones (first class)
            label = folders.class_names[r["label"]]
            taken = per_class.setdefault((split, label), 0)
            if taken < (24 if not split else 4) or "corrupt" in r["rel"] or "empty" in r["rel"]:
                per_class[(split, label)] = taken + 1
                rows.append((f"{'test' if split else 'train'}/{r['rel']}", label, split))
    manifest = write_csv(f"{shapes_data}/manifest-e2e.csv", "uri,label,split", rows)
    listed = data.list_images(manifest)
    train_recs, val_recs = split_records(listed.train, 0.3, 0, listed.splits)
    bad = {r["path"] for r in listed.train if r["rel"].endswith(("corrupt.jpg", "empty.png"))}

    cfg = TrainConfig(data=DataConfig(uri=manifest, decode=DecodeConfig(image_size=(32, 32))),
                      model=ModelConfig(name="small_cnn"), storage=f"{bucket}/runs", run_name="from-manifest",
                      workers=1, batch_size=16, epochs=1, report=False)
    result = train(cfg)
    assert result.class_names == folders.class_names
    assert sorted(os.path.basename(b["path"]) for b in result.bad_files) == ["corrupt.jpg", "empty.png"]
    lineage = ckpt.resolve(result.run_uri).manifest["data"]
    assert lineage["uri"] == manifest
    assert lineage["manifest_sha256"] == hashlib.sha256(storage.read_bytes(manifest)).hexdigest()
    assert len(bad) == 2 and lineage["counts"] == {"train": sum(r["path"] not in bad for r in train_recs),
                                                   "val": sum(r["path"] not in bad for r in val_recs),
                                                   "test": len(listed.test)}
    evaluation = json.loads(storage.read_text(RunLayout(result.run_uri).evaluation))
    assert evaluation["split"] == "test" and evaluation["count"] == len(listed.test) == 12
