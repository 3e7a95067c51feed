"""Weight decay for the Keras 3 and tf_keras adapters.

Keras' rule, `variable.assign_sub(variable * wd * lr)` before the update,
decays every element every step; here it is one fused in-place pass per
variable (`ops.decay_weights`: in a `tf.function`, the same bits for
float32 and float64) instead of table-sized temporaries. With `weight_decay_rows="in_batch"`,
a variable whose gradient is a `tf.IndexedSlices` decays only the rows that
gradient names, each once (`ops.decay_rows`), before their update.
"""

import textwrap

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


def documented_with(base_arguments):
    """A framework's text of its optimizers' shared arguments, with
    `weight_decay_rows` after them, at their indentation."""
    lines = base_arguments.rstrip().split("\n")
    indent = min(len(line) - len(line.lstrip()) for line in lines[1:] if line.strip())
    return "\n".join(lines + [textwrap.indent(ARGUMENT_DOC, " " * indent)])


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
    """The same decay of the distinct rows `indices` names, only."""
    lr, wd = _rates(variable, learning_rate, weight_decay)
    if _fused(variable):
        ops.decay_rows(variable, lr, wd, indices)
        return
    # Repeated indices scatter identical rows.
    rows = tf.gather(variable, indices)
    variable.scatter_update(tf.IndexedSlices(rows - rows * wd * lr, indices))


def apply(optimizer, variables, skip=()):
    """The adapters' `_apply_weight_decay`: decays each variable that
    `optimizer._use_weight_decay` chooses, except those whose key
    (`optimizer._var_key`) is in `skip`, on every replica through the
    strategy as Keras does, each shard of a sharded variable where it
    lives."""
    if optimizer.weight_decay is None:
        return
    chosen = [
        v for v in variables if optimizer._use_weight_decay(v) and optimizer._var_key(v) not in skip
    ]

    def decay_all(distribution, chosen):
        for variable in chosen:
            backing = backing_variable(variable)
            for part in sharded.shards(variable) if sharded.is_sharded(variable) else [backing]:
                distribution.extended.update(
                    part,
                    lambda v: decay(v, optimizer.learning_rate, optimizer.weight_decay),
                    group=False,
                )

    tf.__internal__.distribute.interim.maybe_merge_call(
        decay_all, optimizer._distribution_strategy, chosen
    )
