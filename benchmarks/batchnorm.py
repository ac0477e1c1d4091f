"""Keras's batch norm against TensorFlow's fused kernel (``models.fuse_batch_norm``), in one process.

    .venv/bin/python benchmarks/batchnorm.py                 # every row, ~5 minutes on 2 cores
    .venv/bin/python benchmarks/batchnorm.py --rows resnet_tiny --steps 100

Each row builds one imgrec model twice from the same seed, one as Keras builds it and one with
its batch norms swapped, and times the same thing on both in the same run: a training step
(a ``tf.function`` GradientTape step with AdamW, as imgrec's loop takes, batch 64, random uint8
pixels) or inference (``model(x, training=False)``). ``transfer`` rows train a new head on a
frozen MobileNet backbone called in inference mode, as ``imgrec transfer`` does (its batch
norms never train); ``fine-tune`` rows also train its top blocks. Columns: img/s of each, the
speed-up, and the largest difference of their outputs (the same weights: the kernels compute the
same function). Wall time of the step, warmed up, median of ``--repeats`` timings, the two kernels' timings
interleaved.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# (row, model name, image size, precision, what is timed, extra ModelConfig fields)
ROWS = [
    ("resnet_tiny", "resnet_tiny", 32, "float32", "train", {}),
    ("resnet_tiny bf16", "resnet_tiny", 32, "mixed_bfloat16", "train", {}),
    ("small_cnn 64px", "small_cnn", 64, "float32", "train", {}),
    ("resnet_small", "resnet_small", 32, "float32", "train", {}),
    ("mobilenet transfer", "mobilenet", 128, "float32", "train", {"alpha": 0.25, "freeze_depth": "all"}),
    ("mobilenet transfer bf16", "mobilenet", 128, "mixed_bfloat16", "train", {"alpha": 0.25, "freeze_depth": "all"}),
    ("mobilenet fine-tune", "mobilenet", 128, "float32", "train", {"alpha": 0.25, "freeze_depth": "all-2"}),
    ("mobilenet predict", "mobilenet", 128, "float32", "predict", {"alpha": 0.25}),
    ("resnet_tiny predict", "resnet_tiny", 32, "float32", "predict", {}),
]


def timed_step(model, what: str, x, y):
    import keras
    import tensorflow as tf

    if what == "predict":
        fn = tf.function(lambda batch: model(batch, training=False))
        return lambda: fn(x)
    optimizer = keras.optimizers.AdamW(1e-3, weight_decay=0.05)
    loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    return step


def img_per_s(steps_by_kernel: dict, batch: int, steps: int, repeats: int) -> dict[str, float]:
    """Median img/s of each step function, their timings interleaved (a drift in the machine's
    load hits both alike)."""
    for step in steps_by_kernel.values():
        step()  # traced
        for _ in range(5):
            step()
    times: dict[str, list[float]] = {kernel: [] for kernel in steps_by_kernel}
    for _ in range(repeats):
        for kernel, step in steps_by_kernel.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                out = step()
            out.numpy()
            times[kernel].append((time.perf_counter() - t0) / steps)
    return {kernel: batch / statistics.median(t) for kernel, t in times.items()}


def run_row(row, batch: int, steps: int, repeats: int) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from imgrec import models
    from imgrec.config import ModelConfig

    label, name, size, precision, what, extra = row
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    y = tf.one_hot(np.random.default_rng(1).integers(0, 10, batch), 10)
    result, outputs, steps_by_kernel = {"row": label}, {}, {}
    for kernel in ("keras", "fused"):
        keras.utils.set_random_seed(0)
        model = models.build_model(ModelConfig(name=name, precision=precision, **extra), 10, (size, size))
        if kernel == "fused":
            result["layers"] = models.fuse_batch_norm(model)
        outputs[kernel] = model(x, training=False).numpy()
        steps_by_kernel[kernel] = timed_step(model, what, x, y)
    result.update(img_per_s(steps_by_kernel, batch, steps, repeats))
    result["speedup"] = result["fused"] / result["keras"]
    result["max_diff"] = float(np.abs(outputs["keras"] - outputs["fused"]).max())
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="*", help="row labels to run (prefix match); default: all")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=40, help="steps per timing")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    rows = [r for r in ROWS if not args.rows or any(r[0].startswith(w) for w in args.rows)]
    print(f"{'row':24s} {'BN layers':>9s} {'Keras img/s':>12s} {'fused img/s':>12s} {'speed-up':>9s} {'max |diff|':>11s}")
    for row in rows:
        r = run_row(row, args.batch, args.steps, args.repeats)
        print(f"{r['row']:24s} {r['layers']:9d} {r['keras']:12.0f} {r['fused']:12.0f} {r['speedup']:8.2f}x "
              f"{r['max_diff']:11.1e}", flush=True)


if __name__ == "__main__":
    main()
