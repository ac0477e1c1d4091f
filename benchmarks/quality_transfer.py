"""Transfer recipes on real photos: one-stage frozen (the old default) against
two-stage fine-tuning (the new one), with pretrained weights made here.

    nice -n 19 .venv/bin/python benchmarks/quality_transfer.py
    nice -n 19 .venv/bin/python benchmarks/quality_transfer.py --seeds 0,1,2 --depths all,all-2,all-4

``weights="imagenet"`` needs the network, so the pretrained backbone is made from
``../shared/data/cifar10-dev`` itself (real CIFAR-10 JPEGs, read in place through
symlinks): MobileNet (alpha ``--alpha``) trained from scratch on the 8 classes
other than ``--hold`` (cat, dog: the hardest pair, a 2-class photo task), its
backbone saved as a weights file. Each row then fine-tunes on the held-out pair
(400 training photos per class, 30 % validation; the 100+100 test photos are read
once per run) from those weights with the transfer command's defaults, varying
the freeze depth and the head-only epochs: ``all`` + 0 head epochs is the old
one-stage default, ``all-K`` + ``auto`` head epochs the two-stage one. The
held-out pair's data is decoded once and the same split feeds every run.
Printed: test accuracy per seed, mean +- spread (max - min), wall seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
CIFAR_DEV = os.path.join(ROOT, "..", "shared", "data", "cifar10-dev")


def class_tree(source: str, out: str, classes: list[str]) -> str:
    """Symlinks into ``source``: ``train/`` and ``test/`` of the named classes."""
    for split in ("train", "test"):
        for name in classes:
            os.makedirs(os.path.join(out, split, name))
            for f in sorted(os.listdir(os.path.join(source, split, name))):
                os.symlink(os.path.abspath(os.path.join(source, split, name, f)), os.path.join(out, split, name, f))
    return out


def base_config(args, data_uri: str, storage: str, **changes):
    from imgrec.config import AugmentConfig, DataConfig, DecodeConfig, ModelConfig, TrainConfig

    model = dict(name="mobilenet", alpha=args.alpha, weights="none", freeze_depth=0)
    model.update(changes.pop("model", {}))
    return TrainConfig(
        data=DataConfig(uri=data_uri, decode=DecodeConfig(image_size=(args.size, args.size))),
        model=ModelConfig(**model), augment=AugmentConfig.preset("light"), storage=storage, workers=1,
        report=False, **changes)


def pretrain(args, tree: str, storage: str) -> str:
    from imgrec import checkpoint, models
    from imgrec.train import train

    # From scratch MobileNet needs a high rate to learn in a few thousand steps (see imgrec.demo).
    cfg = base_config(args, tree, storage, epochs=args.pretrain_epochs, learning_rate=3e-2, lr_schedule="cosine",
                      batch_size=64, run_name="pretrain", model=dict(bn_momentum=0.9))
    t0 = time.time()
    result = train(cfg)
    weights = os.path.join(storage, f"mobilenet_{args.alpha:g}_{args.size}_pretrain8.weights.h5")
    models.save_backbone_weights(checkpoint.load_model(result.best_checkpoint, compile=False), weights)
    print(f"pretrain on {len(result.class_names)} classes: test accuracy "
          f"{result.test_metrics.get('accuracy', float('nan')):.3f} in {time.time() - t0:.0f} s -> {weights}",
          flush=True)
    return weights


def fine_tune_rows(args, tree: str, storage: str, weights: str) -> list[dict]:
    from imgrec.data import load_dataset
    from imgrec.train import train

    data = None
    rows = []
    for depth in args.depths:
        head = "0" if depth == "all" else args.head_epochs
        for seed in args.seeds:
            cfg = base_config(args, tree, storage, epochs=args.epochs, seed=seed, head_epochs=head,
                              fine_tune_lr_factor=args.lr_factor, lr_schedule=args.lr_schedule,
                              run_name=f"ft-{depth}-h{head}-f{args.lr_factor:g}-{args.lr_schedule}-s{seed}",
                              model=dict(weights=weights, freeze_depth=depth))
            data = data or load_dataset(cfg.data)
            t0 = time.time()
            result = train(cfg, dataset=data)
            acc = float(result.test_metrics.get("accuracy", float("nan")))
            rows.append({"depth": depth, "head_epochs": cfg.head_epoch_count(), "seed": seed, "test": acc,
                         "wall_s": time.time() - t0})
            print(f"  freeze {depth:>6} head epochs {cfg.head_epoch_count()} seed {seed}: test {acc:.3f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| freeze depth | head epochs | test accuracy per seed | mean | spread | wall s/run |",
             "| --- | --- | --- | --- | --- | --- |"]
    for depth in dict.fromkeys(r["depth"] for r in rows):
        group = [r for r in rows if r["depth"] == depth]
        accs = [r["test"] for r in group]
        lines.append(f"| {depth} | {group[0]['head_epochs']} | {', '.join(f'{a:.3f}' for a in accs)} | "
                     f"{statistics.mean(accs):.3f} | {max(accs) - min(accs):.3f} | "
                     f"{statistics.mean(r['wall_s'] for r in group):.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=CIFAR_DEV)
    ap.add_argument("--hold", default="cat,dog", help="the fine-tuning pair, held out of pretraining")
    ap.add_argument("--alpha", type=float, default=0.25)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--pretrain-epochs", type=int, default=15)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--head-epochs", default="auto")
    ap.add_argument("--depths", default="all,all-2,all-4")
    ap.add_argument("--lr-factor", type=float, default=0.1, help="stage two's learning rate factor")
    ap.add_argument("--lr-schedule", default="constant")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--weights", help="reuse a pretrained backbone weights file (skips pretraining)")
    ap.add_argument("--out", help="working folder (default: a temporary one)")
    args = ap.parse_args()
    args.depths = args.depths.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    hold = args.hold.split(",")
    classes = sorted(os.listdir(os.path.join(args.data, "train")))
    work = args.out or tempfile.mkdtemp(prefix="quality-transfer-")
    storage = os.path.join(work, "runs")
    t0 = time.time()
    weights = args.weights or pretrain(
        args, class_tree(args.data, os.path.join(work, "pretrain"), [c for c in classes if c not in hold]), storage)
    rows = fine_tune_rows(args, class_tree(args.data, os.path.join(work, "finetune"), hold), storage, weights)
    print(f"\nMobileNet alpha {args.alpha:g} at {args.size}x{args.size}, fine-tuned {args.epochs} epochs on "
          f"{'/'.join(hold)} from weights pretrained on the other {len(classes) - len(hold)} classes "
          f"({time.time() - t0:.0f} s in all):\n")
    print(table(rows))


if __name__ == "__main__":
    main()
