"""Graph math without Grappler's arithmetic rewrites, for the Keras 3
(keras_reference.py) and tf_keras (keras2_cases.py) reference runs; and the
traced graph of one optimizer step on a large table, for the tests that no
step makes a tensor of the table's size."""

import contextlib

import keras
import numpy as np
import tensorflow as tf

BIG_TABLE = (200_000, 8)


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


def big_table_step_graph(optimizer):
    """The graph of one `optimizer.apply` on a BIG_TABLE table's
    tf.IndexedSlices gradient (64 rows) and a dense bias's."""
    table = keras.Variable(np.zeros(BIG_TABLE, np.float32), name="table")
    bias = keras.Variable(np.zeros(BIG_TABLE[1:], np.float32), name="bias")
    optimizer.build([table, bias])

    @tf.function
    def step(values, indices, bias_gradient):
        table_gradient = tf.IndexedSlices(values, indices, tf.constant(BIG_TABLE))
        optimizer.apply([table_gradient, bias_gradient], [table, bias])

    return step.get_concrete_function(
        tf.TensorSpec([64, 8]), tf.TensorSpec([64], tf.int32), tf.TensorSpec([8])
    ).graph


def is_table_sized(tensor):
    """Whether `tensor` has as many elements as BIG_TABLE, or a shape not
    known when traced (resource handles aside)."""
    size = int(np.prod(BIG_TABLE))
    return tensor.dtype != tf.resource and not (
        tensor.shape.is_fully_defined() and tensor.shape.num_elements() < size
    )
