"""Variables sharded by `tf.distribute.ParameterServerStrategy` (with a
`variable_partitioner`): their gradients, their accumulators, and their
updates, one shard at a time where each shard lives."""

import functools

import keras
import tensorflow as tf
from tensorflow.python.distribute.sharded_variable import ShardedVariable

from tf_adagrad._variables import backing_variable


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
    backing = [backing_variable(v) for v in variables]
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
            [
                tf.zeros_like(shard) if g is None else g
                for g, shard in zip(shard_grads, variable.variables)
            ],
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
    return tf.IndexedSlices(
        tf.concat(values, 0), tf.concat(indices, 0), tf.constant(variable.shape.as_list(), tf.int64)
    )


def _as_indexed_slices(dense):
    rows = tf.range(tf.shape(dense, out_type=tf.int64)[0])
    return tf.IndexedSlices(dense, rows)


def is_sharded(variable):
    """Whether `variable` (a Keras or TF variable) is a `ShardedVariable`."""
    return isinstance(backing_variable(variable), ShardedVariable)


def shards(variable):
    """The `tf.Variable` shards of a sharded Keras or TF variable."""
    return backing_variable(variable).variables


def shards_beside(reference_variable, initializer, dtype=None, shard_shape=None):
    """A variable creator scope in which the next variable is made as a
    `ShardedVariable` sharded like `reference_variable`, each shard
    initialized by `initializer` and placed beside its reference shard.

    Keras would make an optimizer variable of a sharded variable as one
    unsharded variable on one parameter server; sharded like the variable,
    each shard's update is local to one parameter server.

    Args:
        reference_variable: The sharded variable (Keras or TF).
        initializer: A Keras initializer (or its name).
        dtype: The new shards' dtype; defaults to the reference's.
        shard_shape: A function from a reference shard's shape to the new
            shard's (a rowwise accumulator holds one value per row); by
            default the same shape.
    """
    initializer = keras.initializers.get(initializer)
    dtype = dtype or reference_variable.dtype

    def create_shards_beside_reference_shards(next_creator, **kwargs):
        created = []
        for i, reference_shard in enumerate(shards(reference_variable)):
            shape = shard_shape(reference_shard.shape) if shard_shape else reference_shard.shape
            shard_kwargs = dict(kwargs)
            shard_kwargs.update(
                name=f"{kwargs['name']}/part_{i}",
                shape=shape,
                initial_value=functools.partial(initializer, shape, dtype),
                colocate_with=reference_shard,
            )
            created.append(next_creator(**shard_kwargs))
        return ShardedVariable(created)

    return tf.variable_creator_scope(create_shards_beside_reference_shards)


class ShardedUpdates:
    """Optimizer mixin: sharded variables updated shard by shard.

    Keras hands every variable to `strategy.extended.update`, which cannot
    colocate with a ShardedVariable (ParameterServerStrategy with a
    `variable_partitioner`). Such variables go to `update_step` instead,
    which updates each shard where it lives.
    """

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        sharded_pairs = [(g, v) for g, v in grads_and_vars if is_sharded(v)]
        unsharded_pairs = [(g, v) for g, v in grads_and_vars if not is_sharded(v)]
        super()._distributed_tf_update_step(distribution, unsharded_pairs, learning_rate)
        for gradient, variable in sharded_pairs:
            if gradient is not None:
                self.update_step(gradient, variable, learning_rate)


def split_by_shard(gradient, variable):
    """`gradient` of a ShardedVariable (sharded on axis 0), one piece per shard.

    A dense gradient is sliced. An IndexedSlices gradient is partitioned by
    row, keeping position order within each shard (so duplicates are summed
    in the same order as unsharded), after a check that every index lies in
    the whole variable: an out-of-range index fails before any shard is
    written.
    """
    shard_rows = [shard.shape[0] for shard in variable.variables]
    if not isinstance(gradient, tf.IndexedSlices):
        return tf.split(gradient, shard_rows, axis=0)
    indices = gradient.indices
    num_rows = sum(shard_rows)
    in_range = tf.logical_and(indices >= 0, indices < num_rows)
    first_bad = tf.where(tf.logical_not(in_range))[:1, 0]
    name = variable.variables[0].name.split("/part_0")[0]
    check = tf.debugging.Assert(
        tf.reduce_all(in_range),
        [
            tf.strings.format(
                f"Expected every index of the gradient of the sharded variable {name} in "
                f"[0, {num_rows}); received indices{{}} = {{}}",
                (first_bad, tf.gather(indices, first_bad)),
            )
        ],
    )
    with tf.control_dependencies([check]):
        shard_starts = tf.constant(
            [sum(shard_rows[:i]) for i in range(len(shard_rows))], dtype=indices.dtype
        )
        shard_ids = tf.searchsorted(shard_starts[1:], indices, side="right", out_type=tf.int32)
        local_indices = indices - tf.gather(shard_starts, shard_ids)
    num_shards = len(shard_rows)
    return [
        tf.IndexedSlices(values, shard_indices)
        for values, shard_indices in zip(
            tf.dynamic_partition(gradient.values, shard_ids, num_shards),
            tf.dynamic_partition(local_indices, shard_ids, num_shards),
        )
    ]
