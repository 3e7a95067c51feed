"""keras.optimizers.Adagrad as the reference for tf_adagrad.Adagrad's tests."""

import keras
import numpy as np
import tensorflow as tf

from support.graph_math import exact_graph_math  # noqa: F401 - the tests import it from here


class DensifyingKerasAdagrad(keras.optimizers.Adagrad):
    """Keras' Adagrad on the densified gradient.

    Keras 3's own sparse path adds the squares of duplicate rows to the
    accumulator (sum of g^2), whereas a dense step with the same gradient
    adds the square of their sum ((sum of g)^2). tf_adagrad follows the dense
    step, so this is its reference for IndexedSlices with duplicates.
    """

    def update_step(self, gradient, variable, learning_rate):
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        super().update_step(gradient, variable, learning_rate)


def make_variables(shapes, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    return [
        keras.Variable(rng.uniform(-1, 1, shape).astype(np.float64), dtype=dtype, name=f"v{i}")
        for i, shape in enumerate(shapes)
    ]


def random_gradients(shapes, steps, seed=1, scale=1.0):
    """`steps` lists of float64 NumPy gradients, one per shape."""
    rng = np.random.default_rng(seed)
    return [[rng.uniform(-scale, scale, shape) for shape in shapes] for _ in range(steps)]


def apply_steps(optimizer, variables, gradient_steps, graph=False):
    """Applies each step's gradients with `optimizer.apply`, eagerly or in a
    tf.function; returns the variables' final values as NumPy arrays."""

    def step(grads):
        optimizer.apply(grads, variables)

    if graph:
        step = tf.function(step)
    for grads in gradient_steps:
        step([_as_tensor(g, v.dtype) for g, v in zip(grads, variables)])
    return [v.numpy() for v in variables]


def _as_tensor(grad, dtype):
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(tf.cast(grad.values, dtype), grad.indices, grad.dense_shape)
    return tf.cast(grad, dtype)
