"""Weight decay for the Keras 3 and tf_keras adapters.

Keras' rule, `variable.assign_sub(variable * wd * lr)` before the update,
decays every element every step; here it is one fused in-place pass per
variable (`ops.decay_weights`: in a `tf.function`, the same bits for
float32 and float64) instead of table-sized temporaries. With `weight_decay_rows="in_batch"`,
a variable whose gradient is a `tf.IndexedSlices` decays only the rows that
gradient names, each once (`ops.decay_rows`), before their update.
"""

import contextlib

import tensorflow as tf

from tf_adagrad import _xla_fallback, ops, sharded
from tf_adagrad._variables import FLOAT_DTYPES, backing_variable

# The values of the optimizers' `weight_decay_rows` argument.
ROW_MODES = ("all", "in_batch")

ARGUMENT_DOC = """weight_decay_rows: Which rows of a variable whose gradient
    is a `tf.IndexedSlices` (an `Embedding`'s) `weight_decay` decays each
    step: `"all"` (the default, Keras' rule: every row, every step) or
    `"in_batch"` (only the rows the step's gradient names, each once, as
    FBGEMM's and the TPU embedding API's optimizers do). Dense gradients'
    variables decay whole either way."""


def checked_rows_mode(value):
    if value not in ROW_MODES:
        raise ValueError(
            f"weight_decay_rows must be one of {', '.join(map(repr, ROW_MODES))}, "
            f"received: {value!r}"
        )
    return value


def _fused(variable):
    return variable.dtype.base_dtype in FLOAT_DTYPES and not _xla_fallback.in_xla()


def _rates(variable, learning_rate, weight_decay):
    # Cast as Keras casts them (a Python float goes through float32).
    dtype = variable.dtype.base_dtype
    return tf.cast(learning_rate, dtype), tf.cast(weight_decay, dtype)


def decay(variable, learning_rate, weight_decay):
    """Keras' decay of every element of a `tf.Variable`."""
    lr, wd = _rates(variable, learning_rate, weight_decay)
    if _fused(variable):
        ops.decay_weights(variable, lr, wd)
    else:
        variable.assign_sub(variable * wd * lr)


def decay_rows(variable, learning_rate, weight_decay, indices):
    """The same decay of the distinct rows `indices` names, only (call it
    under `after(gradient)`)."""
    lr, wd = _rates(variable, learning_rate, weight_decay)
    if _fused(variable):
        ops.decay_rows(variable, lr, wd, indices)
        return
    # Repeated indices scatter identical rows.
    rows = tf.gather(variable, indices)
    variable.scatter_update(tf.IndexedSlices(rows - rows * wd * lr, indices))


def decays_rows(optimizer, gradient):
    """Whether `gradient`'s variable decays its rows in the update step
    (weight_decay_rows="in_batch" and a `tf.IndexedSlices` gradient)."""
    return (
        optimizer.weight_decay is not None
        and optimizer.weight_decay_rows == "in_batch"
        and isinstance(gradient, tf.IndexedSlices)
    )


def decays_whole(optimizer, variable, gradient):
    """Whether weight decay changes every row of `variable` this step."""
    return (
        optimizer.weight_decay is not None
        and optimizer._use_weight_decay(variable)
        and not decays_rows(optimizer, gradient)
    )


def after(gradient):
    """A control dependency on `gradient`'s values, outside `tf.distribute`.

    A decay has no data input from the step's gradient, so without it the
    decay may run while the forward pass still holds a read of the table
    (an `Embedding`'s), and the write would copy the whole table first
    (copy-on-write). Once the gradient exists, that read is done. (Under a
    strategy the gradients are per replica and the decay runs in a merge
    call: no dependency there.)"""
    if gradient is None or tf.distribute.has_strategy():
        return contextlib.nullcontext()
    values = gradient.values if isinstance(gradient, tf.IndexedSlices) else gradient
    return tf.control_dependencies([values])


def apply(optimizer, variables, gradients_by_key):
    """The adapters' `_apply_weight_decay`: decays each variable that
    `optimizer._use_weight_decay` chooses, after its gradient
    (`gradients_by_key`, by `optimizer._var_key`), except those whose rows
    decay in the update step (`decays_rows`), on every replica through the
    strategy as Keras does, each shard of a sharded variable where it
    lives."""
    if optimizer.weight_decay is None:
        return
    chosen = []
    for variable in variables:
        gradient = gradients_by_key.get(optimizer._var_key(variable))
        if optimizer._use_weight_decay(variable) and not decays_rows(optimizer, gradient):
            chosen.append((variable, gradient))

    def decay_all(distribution, chosen):
        for variable, gradient in chosen:
            backing = backing_variable(variable)
            for part in sharded.shards(variable) if sharded.is_sharded(variable) else [backing]:
                with after(gradient):
                    distribution.extended.update(
                        part,
                        lambda v: decay(v, optimizer.learning_rate, optimizer.weight_decay),
                        group=False,
                    )

    tf.__internal__.distribute.interim.maybe_merge_call(
        decay_all, optimizer._distribution_strategy, chosen
    )


def in_update_step(optimizer, variable, part, gradient, step_gradient):
    """The decay that `apply` left to the update step of `variable` (its
    `part`, a shard or the variable, with `gradient` for that part):
    the rows of a sparse gradient, or the whole part where the step's
    gradient was sparse but the update's is dense (accumulated under XLA)."""
    if not (decays_rows(optimizer, step_gradient) and optimizer._use_weight_decay(variable)):
        return
    with after(gradient):
        if isinstance(gradient, tf.IndexedSlices):
            decay_rows(part, optimizer.learning_rate, optimizer.weight_decay, gradient.indices)
        else:
            decay(part, optimizer.learning_rate, optimizer.weight_decay)
