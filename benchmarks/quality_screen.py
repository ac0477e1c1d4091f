"""The fast screen behind ``resnet_tiny`` (issue #19): a network variant and a recipe trained
in this process (plain Keras, a ``tf.function`` step, no Ray) on cifar10-dev's ``train/``
split 70/30, validation accuracy per epoch (also with flip TTA) and this process's CPU seconds.

    .venv/bin/python benchmarks/quality_screen.py --model seed_cifar --precision float32 \\
        --optimizer adam --lr 1e-3 --weight-decay 0 --label-smoothing 0 --warmup-epochs 0 --batch 32
    .venv/bin/python benchmarks/quality_screen.py --model resnet_tiny --flip            # the train default
    .venv/bin/python benchmarks/quality_screen.py --model variant --widths 48,96,192 --stem 32 --res 010 --flip

Screening only: the split is this script's own (seeded, not imgrec's), the data is in numpy, the
step is a plain GradientTape step with imgrec's optimizer and schedule (``loop.make_optimizer``).
Decisions are then checked through the real CLI with ``benchmarks/quality.py`` (test split, CPU of
the whole process tree). ``--model variant`` is resnet_small's layout with its parts as options:
``--widths``, ``--stem`` (width), ``--stem-stride``, ``--res`` (a 0/1 per stage: a residual block
after that stage's conv + pool) and ``--pool`` (0/1 per stage). ``resnet_tiny`` is
``--widths 32,64,128 --stem 24 --stem-stride 2 --res 010 --pool 110``; ``resnet_small`` is
``--widths 48,96,192 --stem 32 --stem-stride 1 --res 111 --pool 111``. ``--json`` appends a line.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from quality import CIFAR_DEV  # noqa: E402  (this folder)


def load_split(root: str, val_fraction: float = 0.3, seed: int = 1234):
    """(train x, train y, val x, val y) from ``root/train/<class>/*`` at 32x32, uint8."""
    classes = sorted(os.listdir(os.path.join(root, "train")))
    xs, ys = [], []
    for label, name in enumerate(classes):
        for path in sorted(glob.glob(os.path.join(root, "train", name, "*"))):
            xs.append(np.asarray(Image.open(path).convert("RGB").resize((32, 32))))
            ys.append(label)
    x, y = np.stack(xs), np.array(ys)
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = int(val_fraction * len(y))
    return x[order[n_val:]], y[order[n_val:]], x[order[:n_val]], y[order[:n_val]]


def variant_body(args):
    """resnet_small's layout with its parts as options (see the module doc)."""
    from imgrec.models.course import _conv_bn_relu, _residual

    widths = [int(w) for w in args.widths.split(",")]

    def body(x, cfg):
        from keras import layers as L

        x = _conv_bn_relu(x, args.stem, "stem", strides=args.stem_stride)
        for i, width in enumerate(widths, start=1):
            x = _conv_bn_relu(x, width, f"stage{i}")
            if args.pool[i - 1] == "1":
                x = L.MaxPooling2D(2, name=f"stage{i}_pool")(x)
            if args.res[i - 1] == "1":
                x = _residual(x, width, f"stage{i}_res")
        return L.GlobalAveragePooling2D(name="avg_pool")(x)

    return body


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet_tiny", help="a registry name, or 'variant'")
    p.add_argument("--widths", default="32,64,128")
    p.add_argument("--stem", type=int, default=24)
    p.add_argument("--stem-stride", type=int, default=2)
    p.add_argument("--res", default="010")
    p.add_argument("--pool", default="110")
    p.add_argument("--precision", default="auto", choices=("float32", "mixed_bfloat16", "auto"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--flip", action="store_true", help="random horizontal flips in training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=CIFAR_DEV)
    p.add_argument("--json", help="append the result line here")
    args = p.parse_args()

    xtr, ytr, xv, yv = load_split(args.data)
    import keras
    import tensorflow as tf

    from imgrec import models
    from imgrec.config import ModelConfig, TrainConfig
    from imgrec.loop import make_optimizer
    from imgrec.models.registry import ModelSpec, register

    keras.utils.set_random_seed(args.seed)
    if args.model == "variant":
        register(ModelSpec("variant", "scratch", (64, 64), 16, "rescale_0_1", "screen", builder=variant_body(args)))
    model = models.build_model(ModelConfig(name=args.model, dropout=args.dropout, precision=args.precision), 10,
                               (32, 32))
    steps = len(ytr) // args.batch
    cfg = TrainConfig(epochs=args.epochs, learning_rate=args.lr, lr_schedule="cosine", optimizer=args.optimizer,
                      warmup_epochs=args.warmup_epochs, weight_decay=args.weight_decay,
                      label_smoothing=args.label_smoothing, batch_size=args.batch)
    optimizer = make_optimizer(cfg, steps)
    loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    @tf.function
    def predict(x):
        return model(x, training=False)

    def evaluate() -> tuple[float, float]:
        plain, flipped = [], []
        for i in range(0, len(yv), 256):
            x = tf.constant(xv[i:i + 256])
            probs = predict(x)
            plain.append(np.argmax(probs.numpy(), 1))
            flipped.append(np.argmax(((probs + predict(tf.reverse(x, [2]))) / 2).numpy(), 1))
        return float((np.concatenate(plain) == yv).mean()), float((np.concatenate(flipped) == yv).mean())

    rng = np.random.default_rng(args.seed)
    cpu0, wall0, accs, tta = time.process_time(), time.time(), [], []
    for _ in range(args.epochs):
        order = rng.permutation(len(ytr))
        for s in range(steps):
            batch = order[s * args.batch:(s + 1) * args.batch]
            x = xtr[batch]
            if args.flip:
                x = np.where((rng.random(len(batch)) < 0.5)[:, None, None, None], x[:, :, ::-1], x)
            step(tf.constant(x), tf.one_hot(ytr[batch], 10))
        plain, flipped = evaluate()
        accs.append(round(plain, 4))
        tta.append(round(flipped, 4))
    result = {**vars(args), "val_accuracy": accs, "val_accuracy_tta": tta, "cpu_s": round(time.process_time() - cpu0, 1),
              "wall_s": round(time.time() - wall0, 1), "params": model.count_params()}
    print(f"{args.model}: val accuracy {accs[-1]:.3f} (flip TTA {tta[-1]:.3f}) after {args.epochs} epochs, "
          f"{result['cpu_s']} CPU s, {result['params']} parameters")
    print(json.dumps(result))
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
