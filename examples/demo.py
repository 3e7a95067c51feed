"""A small demo of the fused ops: an embedding model trained with a custom
loop, the table updated sparsely by TfAdagrad>ApplySparse, side by side with
keras.optimizers.Adagrad on the same data.

Run with `make demo`.
"""

import os
import time

# Hide TF start-up logs (such as cuInit failing on a machine without a GPU).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_adagrad  # noqa: E402

NUM_ITEMS, DIM, BATCH, STEPS = 200_000, 32, 512, 60
LR, EPSILON, INITIAL_ACCUMULATOR = 0.5, 1e-7, 0.1


def make_data(rng):
    """Click labels from hidden item vectors: a learnable signal."""
    hidden = rng.standard_normal((NUM_ITEMS, DIM)).astype(np.float32)
    user = rng.standard_normal(DIM).astype(np.float32)
    items = (rng.zipf(1.3, STEPS * BATCH) % NUM_ITEMS).astype(np.int64)
    labels = (hidden[items] @ user > 0).astype(np.float32)
    return items.reshape(STEPS, BATCH), labels.reshape(STEPS, BATCH), user


def loss_fn(table, user, items, labels):
    logits = tf.linalg.matvec(tf.gather(table, items), user)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits))


def train(apply_step, table, items, labels, user):
    losses = []
    start = time.perf_counter()
    for step in range(STEPS):
        with tf.GradientTape() as tape:
            loss = loss_fn(table, user, items[step], labels[step])
        grad = tape.gradient(loss, table)  # tf.IndexedSlices
        apply_step(grad)
        losses.append(float(loss))
        if step % 10 == 0 or step == STEPS - 1:
            print(f"  step {step:3d}  loss {losses[-1]:.4f}")
    return losses, (time.perf_counter() - start) / STEPS


def main():
    rng = np.random.default_rng(0)
    items, labels, user = make_data(rng)
    init = (0.01 * rng.standard_normal((NUM_ITEMS, DIM))).astype(np.float32)

    print(f"tf_adagrad.ops.sparse_apply_adagrad on a {NUM_ITEMS}x{DIM} table:")
    table = tf.Variable(init)
    accum = tf.Variable(tf.fill(init.shape, INITIAL_ACCUMULATOR))
    fused_losses, fused_time = train(
        lambda g: tf_adagrad.ops.sparse_apply_adagrad(table, accum, LR, EPSILON, g.values, g.indices),
        table, items, labels, user,
    )

    print("keras.optimizers.Adagrad on the same data:")
    keras_table = tf.Variable(init)
    optimizer = keras.optimizers.Adagrad(LR, initial_accumulator_value=INITIAL_ACCUMULATOR, epsilon=EPSILON)
    # Keras 3 applies the sum of squares for duplicate rows, not the square
    # of their sum; densifying keeps the two updates the same math.
    keras_losses, keras_time = train(
        lambda g: optimizer.apply([tf.convert_to_tensor(g)], [keras_table]),
        keras_table, items, labels, user,
    )

    gap = float(np.max(np.abs(table.numpy() - keras_table.numpy())))
    print()
    print(f"{'':24}{'tf_adagrad':>12}{'keras':>12}")
    print(f"{'time per step (ms)':24}{1e3 * fused_time:12.2f}{1e3 * keras_time:12.2f}")
    print(f"{'final loss':24}{fused_losses[-1]:12.4f}{keras_losses[-1]:12.4f}")
    print(f"speed-up {keras_time / fused_time:.1f}x; largest weight difference {gap:.2e}")
    if not fused_losses[-1] < fused_losses[0] - 0.05:
        raise SystemExit("demo failed: the loss did not fall")
    if gap > 1e-4:
        raise SystemExit(f"demo failed: weights differ from Keras by {gap}")


if __name__ == "__main__":
    main()
