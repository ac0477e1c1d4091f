"""``--class-weight none`` against ``balanced`` on a 9:1 imbalanced tree of real photos.

    nice -n 19 .venv/bin/python benchmarks/class_weight.py
    nice -n 19 .venv/bin/python benchmarks/class_weight.py --majority cat --minority dog --seeds 0,1 --epochs 8

The tree is built in a temporary folder from ``../shared/data/cifar10-dev`` (real
CIFAR-10 JPEGs, read in place: symlinks, nothing copied): ``train/<majority>`` gets
``--n-majority`` (360) photos and ``train/<minority>`` ``--n-minority`` (40) of the
dev set's training photos; ``test/`` keeps both classes' 100 test photos each, so
the test set is balanced and recall per class is what the scores turn on. The data
is decoded once and the same split feeds every run (``train(cfg, dataset=data)``):
``small_cnn`` at 32x32, no augmentation, Adam 1e-3, ``--workers 1``, batch 32, 20 %
validation. Each run's LATEST checkpoint is scored on the test photos (the best one
is chosen by validation accuracy, which on an imbalanced split favours predicting
the majority class). Printed side by side: minority recall, macro-F1, balanced
accuracy, accuracy, and the resolved class weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
CIFAR_DEV = os.path.join(ROOT, "..", "shared", "data", "cifar10-dev")


def imbalanced_tree(source: str, out: str, majority: str, minority: str, n_majority: int, n_minority: int) -> str:
    """Symlinks into ``source``: train/ imbalanced n_majority : n_minority, test/ as it is."""
    for split, counts in (("train", {majority: n_majority, minority: n_minority}),
                          ("test", {majority: None, minority: None})):
        for name, n in counts.items():
            files = sorted(os.listdir(os.path.join(source, split, name)))
            if n is not None and n > len(files):
                raise SystemExit(f"{source}/{split}/{name} has {len(files)} photos, fewer than {n}")
            os.makedirs(os.path.join(out, split, name))
            for f in files[:n]:
                os.symlink(os.path.abspath(os.path.join(source, split, name, f)), os.path.join(out, split, name, f))
    return out


def run(args, tree: str, storage: str) -> list[dict]:
    from imgrec.config import AugmentConfig, DataConfig, DecodeConfig, ModelConfig, TrainConfig
    from imgrec.data import load_dataset
    from imgrec.evaluate import evaluate_dataset
    from imgrec.runtime import ensure_ray
    from imgrec.train import train

    ensure_ray()
    data_cfg = DataConfig(uri=tree, validation_split=0.2, decode=DecodeConfig(image_size=(32, 32)))
    data = load_dataset(data_cfg)
    print(f"data: {data.summary()}; training counts {data.class_counts['train']}", flush=True)
    minority = data.class_names.index(args.minority)
    rows = []
    for seed in args.seeds:
        for weighting in args.class_weights:
            cfg = TrainConfig(data=data_cfg, model=ModelConfig(name="small_cnn"), augment=AugmentConfig(),
                              storage=storage, run_name=f"{weighting}-{seed}", workers=1, batch_size=32,
                              epochs=args.epochs, learning_rate=1e-3, seed=seed, class_weight=weighting,
                              evaluate=False, report=False, keep_checkpoints=1)
            t0 = time.time()
            result = train(cfg, dataset=data)
            m = evaluate_dataset(data.test, result.latest_checkpoint, data.class_names)
            rows.append({"class_weight": weighting, "seed": seed, "seconds": round(time.time() - t0, 1),
                         "minority_recall": m["per_class"][args.minority]["recall"],
                         "minority_f1": m["per_class"][args.minority]["f1"], "macro_f1": m["macro_f1"],
                         "balanced_accuracy": m["balanced_accuracy"], "accuracy": m["accuracy"],
                         "class_weights": _manifest_weights(result.latest_checkpoint), "minority": minority})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _manifest_weights(checkpoint: str):
    from imgrec import checkpoint as ckpt

    return ckpt.read_manifest(checkpoint)["class_weights"]


def table(rows: list[dict]) -> str:
    head = "| class weight | seed | minority recall | minority F1 | macro-F1 | balanced acc. | accuracy | weights |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        weights = ", ".join(f"{k} {v:.3g}" for k, v in r["class_weights"].items()) if r["class_weights"] else "-"
        lines.append(f"| {r['class_weight']} | {r['seed']} | {r['minority_recall']:.3f} | {r['minority_f1']:.3f} | "
                     f"{r['macro_f1']:.3f} | {r['balanced_accuracy']:.3f} | {r['accuracy']:.3f} | {weights} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cifar10-dev", default=CIFAR_DEV, help="the dev photos (read in place)")
    p.add_argument("--majority", default="cat")
    p.add_argument("--minority", default="dog")
    p.add_argument("--n-majority", type=int, default=360)
    p.add_argument("--n-minority", type=int, default=40)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--class-weights", default="none,balanced", help="comma-separated --class-weight values")
    p.add_argument("--out", help="also write the rows as JSON here")
    args = p.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.class_weights = args.class_weights.split(",")
    if not os.path.isdir(os.path.join(args.cifar10_dev, "train")):
        p.error(f"--cifar10-dev: no train/ folder under {os.path.abspath(args.cifar10_dev)}")
    with tempfile.TemporaryDirectory(prefix="imgrec-class-weight-") as tmp:
        tree = imbalanced_tree(args.cifar10_dev, os.path.join(tmp, "tree"), args.majority, args.minority,
                               args.n_majority, args.n_minority)
        rows = run(args, tree, os.path.join(tmp, "runs"))
    print(table(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
