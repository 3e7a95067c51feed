"""Gradients for Keras variables sharded by `tf.distribute.ParameterServerStrategy`."""

import keras
import tensorflow as tf
from tensorflow.python.distribute.sharded_variable import ShardedVariable


def sharded_gradients(tape, target, variables):
    """`tape.gradient(target, variables)`, also for sharded Keras variables.

    Under `tf.distribute.ParameterServerStrategy` with a
    `variable_partitioner`, a Keras variable is backed by a
    `ShardedVariable`, which `tf.GradientTape` cannot differentiate against
    (it asks for the variable's `handle`). This takes the gradient with
    respect to each shard and joins the pieces into one gradient of the
    whole variable's shape, as `optimizer.apply` expects: a dense tensor, or
    a `tf.IndexedSlices` (an `Embedding`'s gradient) whose indices count
    rows of the whole variable. `tf_adagrad.Adagrad` then updates each shard
    where it lives. Variables that are not sharded are passed through.

    Args:
        tape: The `tf.GradientTape` that recorded `target`.
        target: The tensor to differentiate, usually the loss.
        variables: A list of `keras.Variable`s (or `tf.Variable`s).

    Returns:
        A list with one gradient (or `None`) per variable.
    """
    backing = [v._value if isinstance(v, keras.Variable) else v for v in variables]
    sources = [b.variables if isinstance(b, ShardedVariable) else b for b in backing]
    grads = tape.gradient(target, sources)
    return [
        _join_shard_gradients(g, b) if isinstance(b, ShardedVariable) else g
        for g, b in zip(grads, backing)
    ]


def _join_shard_gradients(shard_grads, variable):
    if all(g is None for g in shard_grads):
        return None
    if not any(isinstance(g, tf.IndexedSlices) for g in shard_grads):
        return tf.concat(
            [tf.zeros_like(shard) if g is None else g for g, shard in zip(shard_grads, variable.variables)],
            axis=0,
        )
    values, indices = [], []
    start = 0
    for g, shard in zip(shard_grads, variable.variables):
        if g is not None:
            g = g if isinstance(g, tf.IndexedSlices) else _as_indexed_slices(g)
            values.append(g.values)
            indices.append(tf.cast(g.indices, tf.int64) + start)
        start += shard.shape[0]
    return tf.IndexedSlices(tf.concat(values, 0), tf.concat(indices, 0), tf.constant(variable.shape.as_list(), tf.int64))


def _as_indexed_slices(dense):
    rows = tf.range(tf.shape(dense, out_type=tf.int64)[0])
    return tf.IndexedSlices(dense, rows)
