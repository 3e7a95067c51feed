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


def ops_in(graph):
    """Every op of a traced graph, and of the functions its ops call (the
    branches of a cond, the body of a loop)."""
    for op in graph.get_operations():
        yield op
        for attr in ("then_branch", "else_branch", "body", "cond", "f"):
            try:
                function_name = op.get_attr(attr).name
            except (ValueError, AttributeError):
                continue
            yield from ops_in(graph._get_function(function_name).graph)
