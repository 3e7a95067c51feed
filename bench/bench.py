"""Times one Adagrad step of tf_adagrad's ops against keras.optimizers.Adagrad
and TensorFlow's raw fused ops, in the same process. Prints a line per case.

Run with `make bench`. Medians of repeated steps, each inside tf.function,
after a warm-up.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_adagrad  # noqa: E402

REPEATS, WARMUP = 30, 5
LR, EPSILON = 0.01, 1e-7


def graph_step(update):
    """`update` traced once into a tf.function (its return value dropped)."""

    @tf.function
    def step():
        update()

    return step


def median_ms(step):
    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def dense_case(n):
    rng = np.random.default_rng(0)
    var = tf.Variable(rng.standard_normal(n).astype(np.float32))
    accum = tf.Variable(tf.fill([n], 0.1))
    grad = tf.constant(rng.standard_normal(n).astype(np.float32))
    optimizer = keras.optimizers.Adagrad(LR, epsilon=EPSILON)
    keras_var = tf.Variable(var)
    optimizer.build([keras_var])
    lr, eps = tf.constant(LR), tf.constant(EPSILON)
    return {
        "tf_adagrad": graph_step(lambda: tf_adagrad.ops.apply_adagrad(var, accum, lr, eps, grad)),
        "keras": graph_step(lambda: optimizer.apply([grad], [keras_var])),
        "tf_raw": graph_step(
            lambda: tf.raw_ops.ResourceApplyAdagradV2(var=var.handle, accum=accum.handle, lr=lr, epsilon=eps, grad=grad)
        ),
    }


def sparse_case(num_rows, row, nnz, zipf):
    rng = np.random.default_rng(0)
    var = tf.Variable(rng.standard_normal((num_rows, row)).astype(np.float32))
    accum = tf.Variable(tf.fill([num_rows, row], 0.1))
    if zipf:
        indices = (rng.zipf(1.1, nnz) - 1) % num_rows
    else:
        indices = rng.integers(0, num_rows, nnz)
    indices = tf.constant(indices, tf.int64)
    grad = tf.constant(rng.standard_normal((nnz, row)).astype(np.float32))
    slices = tf.IndexedSlices(grad, indices, tf.constant([num_rows, row], tf.int64))
    optimizer = keras.optimizers.Adagrad(LR, epsilon=EPSILON)
    keras_var = tf.Variable(var)
    optimizer.build([keras_var])
    lr, eps = tf.constant(LR), tf.constant(EPSILON)
    # TF's raw op applies duplicates one by one: give it unique indices (and
    # summed rows, computed outside the timed step) to be fair to it.
    unique, position = tf.unique(indices)
    summed = tf.math.unsorted_segment_sum(grad, position, tf.size(unique))
    return {
        "tf_adagrad": graph_step(lambda: tf_adagrad.ops.sparse_apply_adagrad(var, accum, lr, eps, grad, indices)),
        "keras": graph_step(lambda: optimizer.apply([slices], [keras_var])),
        "tf_raw": graph_step(
            lambda: tf.raw_ops.ResourceSparseApplyAdagradV2(
                var=var.handle, accum=accum.handle, lr=lr, epsilon=eps, grad=summed, indices=unique
            )
        ),
    }


CASES = [
    ("dense 16M float32", lambda: dense_case(16 * 2**20)),
    ("dense 1M float32", lambda: dense_case(2**20)),
    ("sparse 1Mx64, 8192 zipf indices", lambda: sparse_case(2**20, 64, 8192, zipf=True)),
    ("sparse 100kx128, 4096 uniform indices", lambda: sparse_case(100_000, 128, 4096, zipf=False)),
]


def main():
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs; median ms per step", flush=True)
    for name, make in CASES:
        steps = make()
        ms = {impl: median_ms(step) for impl, step in steps.items()}
        print(
            f"{name:40s} tf_adagrad {ms['tf_adagrad']:8.3f}  keras {ms['keras']:8.3f} "
            f"({ms['keras'] / ms['tf_adagrad']:6.1f}x)  tf_raw {ms['tf_raw']:8.3f} "
            f"({ms['tf_raw'] / ms['tf_adagrad']:5.2f}x)",
            flush=True,
        )


if __name__ == "__main__":
    main()
