"""Keras' `use_ema` without a pass over every table each step.

Keras' base class updates every average every step:
`average = m * average + (1 - m) * variable` (m = 0 on the first step, then
`ema_momentum`). Between two updates of a row its weights do not change, so
k such steps collapse to `average = w + m**k * (average - w)`. Each variable
of rank >= 1 gets an int64 per row, the EMA step its row's average was last
brought to (8 bytes a row); a step whose gradient is a `tf.IndexedSlices`
brings the rows it names up to date just before their update
(`ops.moving_average_rows`) and takes the step's own average just after;
other rows wait. Every row is brought up to date before the averages are
read as a whole: when they overwrite the weights (`ema_overwrite_frequency`,
`finalize_variable_values`) and before the optimizer's variables are saved.

Dense gradients, weight decay of every row (`weight_decay_rows="all"`,
which changes every row every step), the first step, XLA and the dtypes the
op lacks (complex), and variables without a step per row take Keras'
whole-variable average, and then mark every row current.
"""

import tensorflow as tf

from tf_adagrad import _weight_decay, _xla_fallback, ops
from tf_adagrad._arguments import scalar_as
from tf_adagrad._variables import FLOAT_DTYPES, HALF_DTYPES


def last_step_variable(optimizer, variable, add):
    """The per-row step counter of `variable` (made by `add(shape, name)`),
    or None where Keras' own average is kept: scalars, and variables that
    need none (`overwrite_with_gradient`)."""
    if len(variable.shape) < 1 or getattr(variable, "overwrite_with_gradient", False):
        return None
    return add((variable.shape[0],), "average_last_step")


def steps_done(optimizer, in_apply):
    """The EMA steps taken so far: inside `apply` (before Keras counts the
    step) the current one included."""
    done = tf.cast(optimizer._iterations, tf.int64)
    return done + 1 if in_apply else done


def bring_up_to_date(average, last_step, variable, momentum, step):
    """Every row of `average` brought to `step` (a whole-variable pass),
    rows already there unchanged: the op over every row, in place, or plain
    TensorFlow ops under XLA."""
    if _has_op(variable):
        ops.moving_average_rows(average, last_step, variable, momentum, step, indices=None)
        return
    behind = tf.cast(step, tf.int64) - last_step.read_value()
    dtype = variable.dtype.base_dtype
    compute = tf.float32 if dtype in HALF_DTYPES else dtype
    # Momentum in the variable's dtype, then float64, as the op takes it.
    momentum = tf.cast(scalar_as(momentum, dtype), tf.float64)
    factor = tf.cast(tf.pow(momentum, tf.cast(behind, tf.float64)), compute)
    shape = tf.concat([tf.shape(behind), tf.ones([len(variable.shape) - 1], tf.int32)], 0)
    factor = tf.reshape(factor, shape)
    w = tf.cast(variable.read_value(), compute)
    current = average.read_value()
    caught_up = tf.cast(w + factor * (tf.cast(current, compute) - w), dtype)
    average.assign(tf.where(tf.reshape(behind > 0, shape), caught_up, current))
    last_step.assign(tf.fill(tf.shape(behind), tf.cast(step, tf.int64)))


def stale_rows_up_to_date(average, last_step, variable, momentum, step):
    """`bring_up_to_date` if any row is behind `step` (a variable whose
    gradient was sparse before and is dense, or missing, now)."""
    tf.cond(
        tf.reduce_any(last_step.read_value() < tf.cast(step, tf.int64)),
        lambda: bring_up_to_date(average, last_step, variable, momentum, step),
        lambda: None,
    )


def rows_before_update(average, last_step, variable, momentum, step, indices):
    """The rows `indices` names brought to `step` (EMA steps so far, the
    current one excluded), from the weights they have had since."""
    ops.moving_average_rows(average, last_step, variable, momentum, step, indices)


def _has_op(variable):
    return tf.as_dtype(variable.dtype) in FLOAT_DTYPES and not _xla_fallback.in_xla()


def is_lazy(optimizer, variable, last_step, gradient):
    """Whether only the rows `gradient` names change this step, and so only
    they need their averages: not when weight decay changes every row."""
    return (
        last_step is not None
        and isinstance(gradient, tf.IndexedSlices)
        and not _weight_decay.decays_whole(optimizer, variable, gradient)
        and _has_op(variable)
        and not tf.distribute.has_strategy()
    )
