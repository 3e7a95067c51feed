"""Trains a dense and a sparse (Embedding) model with tf_adagrad.Adagrad from
step `--start` to `--stop`, restoring from and saving to a
tf.train.CheckpointManager directory, then writes every model and optimizer
variable to an .npz file. Run by tests/test_resume.py, one process per leg.

Each step's batch depends only on the step number, so a run split across
processes sees the same data as an uninterrupted one. With
`--accumulation-steps N` (tests/test_gradient_accumulation.py) the optimizer
accumulates gradients over N steps, and the output holds its accumulated
rows too. With `--ema-momentum M` (tests/test_moving_average.py) the
optimizer keeps moving averages (`use_ema=True`); after its checkpoint is
saved (which brings every average up to date) the output also holds the
weights that `finalize_variable_values` gives, under "finalized/<path>".
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_adagrad  # noqa: E402

NUM_ROWS, FIELDS, BATCH = 2000, 3, 64


def build(kind):
    keras.utils.set_random_seed(0)
    if kind == "sparse":
        inputs = keras.Input((FIELDS,), dtype="int32")
        x = keras.layers.Flatten()(keras.layers.Embedding(NUM_ROWS, 16)(inputs))
    else:
        inputs = keras.Input((FIELDS,))
        x = keras.layers.Dense(32, activation="relu")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(
        keras.layers.Dense(8, activation="relu")(x)
    )
    return keras.Model(inputs, outputs)


def batch(kind, step):
    rng = np.random.default_rng(step)
    if kind == "sparse":
        x = np.minimum(rng.zipf(1.3, (BATCH, FIELDS)) - 1, NUM_ROWS - 1).astype(np.int32)
        y = (x.sum(axis=1) % 2).astype(np.float32)
    else:
        x = rng.standard_normal((BATCH, FIELDS)).astype(np.float32)
        y = (x.sum(axis=1) > 0).astype(np.float32)
    return tf.constant(x), tf.constant(y[:, None])


def make_optimizer(accumulation_steps=None, ema_momentum=None):
    ema = {} if ema_momentum is None else dict(use_ema=True, ema_momentum=ema_momentum)
    return tf_adagrad.Adagrad(
        learning_rate=0.05, gradient_accumulation_steps=accumulation_steps, **ema
    )


def train_steps(kind, model, optimizer, start, stop):
    """Steps [start, stop) of `optimizer.apply` in a tf.function."""
    loss_fn = keras.losses.BinaryCrossentropy()

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)

    for step in range(start, stop):
        train_step(*batch(kind, step))


def train(kind, start, stop, checkpoint_dir, accumulation_steps=None, ema_momentum=None):
    model = build(kind)
    optimizer = make_optimizer(accumulation_steps, ema_momentum)
    optimizer.build(model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(checkpoint_dir, kind), max_to_keep=2
    )
    if start > 0:
        checkpoint.restore(manager.latest_checkpoint).assert_consumed()
    assert int(optimizer._iterations.numpy()) == start
    train_steps(kind, model, optimizer, start, stop)
    manager.save(checkpoint_number=stop)
    arrays = {v.path: v.numpy() for v in model.weights + optimizer.variables}
    if ema_momentum is not None:
        optimizer.finalize_variable_values(model.trainable_variables)
        arrays.update({f"finalized/{v.path}": v.numpy() for v in model.trainable_variables})
    for i, accumulator in enumerate(getattr(optimizer, "_gradient_rows", ())):
        for name, variable in accumulator.state().items():
            arrays[f"gradient_rows_{i}_{name}"] = variable.numpy()
    return arrays


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--stop", type=int, required=True)
    parser.add_argument("--checkpoint-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--accumulation-steps", type=int, default=None)
    parser.add_argument("--ema-momentum", type=float, default=None)
    args = parser.parse_args()
    arrays = {}
    for kind in ("dense", "sparse"):
        for path, value in train(
            kind,
            args.start,
            args.stop,
            args.checkpoint_dir,
            args.accumulation_steps,
            args.ema_momentum,
        ).items():
            arrays[f"{kind}:{path}"] = value
    np.savez(args.out, **arrays)
    print(f"trained steps {args.start}..{args.stop}: {len(arrays)} variables")


if __name__ == "__main__":
    main()
