"""Graph math without Grappler's arithmetic rewrites, for the Keras 3
(keras_reference.py) and tf_keras (keras2_cases.py) reference runs."""

import contextlib

import tensorflow as tf


@contextlib.contextmanager
def exact_graph_math():
    """Turns off Grappler's arithmetic rewrites while in the block.

    Grappler rewrites Keras' `lr * g / sqrt(a + eps)` into
    `lr * g * rsqrt(a + eps)` inside tf.function, which changes the last bit
    of some results, so Keras' graph-mode numbers differ from its eager
    ones. tf_adagrad computes the formula as written in both modes; with the
    rewrite off, Keras' fit() is bit-comparable to it.
    """
    saved = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options(
            {"arithmetic_optimization": saved.get("arithmetic_optimization", True)}
        )
