"""The fused kernels' math as plain TensorFlow ops: for XLA, which cannot
compile custom ops, and for the dtypes the kernels lack (complex). 16-bit
types compute in float32, as the kernels do. lr and epsilon convert as the
op wrappers convert them."""

import tensorflow as tf
from tensorflow.python.ops import control_flow_util

from tf_adagrad import _half_precision
from tf_adagrad._arguments import scalar_as
from tf_adagrad._variables import HALF_DTYPES


def in_xla():
    """Whether ops built now are compiled by XLA, which cannot run custom ops."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _compute_dtype(dtype):
    return tf.float32 if dtype in HALF_DTYPES else dtype


def elementwise_rows(var_rows, accum_rows, lr, epsilon, grad_rows, epsilon_placement):
    """Rows of var (in the compute type, to be stored by `_store`) and
    accum (in its dtype: var's, or float32) after an elementwise step."""
    dtype, accum_dtype = var_rows.dtype, accum_rows.dtype
    compute = _compute_dtype(dtype)
    # Rounded to the variable's dtype first, as the op wrappers round them.
    lr, epsilon = (tf.cast(scalar_as(x, dtype), compute) for x in (lr, epsilon))
    grad_rows = tf.cast(grad_rows, compute)
    accum_rows = tf.cast(accum_rows, compute) + grad_rows * grad_rows
    if epsilon_placement == "inside_sqrt":
        denominator = tf.sqrt(accum_rows + epsilon)
    else:
        denominator = tf.sqrt(accum_rows) + epsilon
    new_var_rows = tf.cast(var_rows, compute) - lr * grad_rows / denominator
    return new_var_rows, tf.cast(accum_rows, accum_dtype)


def rowwise_rows(var_rows, accum_rows, lr, epsilon, grad_rows):
    """Rows of var ([rows, ...], in the accumulator's dtype, to be stored by
    `_store`) and their accumulators ([rows]) after a rowwise step,
    computed in the accumulator's dtype (NumPy's summation order, not the
    kernels')."""
    compute = accum_rows.dtype
    lr, epsilon = scalar_as(lr, compute), scalar_as(epsilon, compute)
    grad_rows = tf.cast(grad_rows, compute)
    row_axes = list(range(1, grad_rows.shape.rank))
    square = grad_rows * grad_rows
    mean_square = tf.reduce_mean(square, axis=row_axes) if row_axes else square
    accum_rows = accum_rows + mean_square
    multiplier = lr / (tf.sqrt(accum_rows) + epsilon)
    # One multiplier per row, broadcast over the row's elements.
    multiplier = tf.reshape(multiplier, tf.concat([tf.shape(multiplier), [1] * len(row_axes)], 0))
    new_var_rows = tf.cast(var_rows, compute) - multiplier * grad_rows
    return new_var_rows, accum_rows


def _store(new_var, dtype, rounding_key, positions):
    """New weights in `dtype`: to nearest, or with the kernels' stochastic
    rounding, element i being table position positions()[i]."""
    if rounding_key is None or dtype not in HALF_DTYPES:
        return tf.cast(new_var, dtype)
    return _half_precision.stochastic_round(
        tf.cast(new_var, tf.float32), dtype, rounding_key, positions()
    )


def dense_update(updated_rows, variable, accumulator, lr, epsilon, gradient, rounding_key=None):
    """The dense op's update, with `updated_rows` one of the functions above."""
    new_var, new_accum = updated_rows(
        variable.read_value(), accumulator.read_value(), lr, epsilon, gradient
    )
    accumulator.assign(new_accum)

    def positions():
        shape = tf.shape(new_var, out_type=tf.int64)
        return tf.reshape(tf.range(tf.reduce_prod(shape)), shape)

    variable.assign(_store(new_var, variable.dtype, rounding_key, positions))


def sparse_update(
    updated_rows, variable, accumulator, lr, epsilon, values, indices, rounding_key=None
):
    """Dense-equivalent sparse update with static shapes (XLA has no tf.unique).

    Rows are sorted stably by index and each run of equal indices is summed
    in position order, like the kernels. Every position then computes its
    row's new value from the run's sum, so positions that share an index
    scatter identical rows and the result does not depend on write order.
    Only the named rows are read and written.
    """
    order = tf.argsort(indices, stable=True)
    sorted_indices = tf.gather(indices, order)
    num_positions = tf.shape(indices)[0]
    starts_run = tf.concat([[True], sorted_indices[1:] != sorted_indices[:-1]], axis=0)
    starts_run = starts_run[:num_positions]  # no positions, no runs
    run_ids = tf.cumsum(tf.cast(starts_run, tf.int32)) - 1
    # Summed in the compute type, as the kernels do (16-bit sums would round).
    summed = tf.math.unsorted_segment_sum(
        tf.cast(tf.gather(values, order), _compute_dtype(values.dtype)),
        run_ids,
        num_segments=num_positions,
    )
    new_var, new_accum = updated_rows(
        tf.gather(variable, sorted_indices),
        tf.gather(accumulator, sorted_indices),
        lr,
        epsilon,
        tf.gather(summed, run_ids),
    )
    accumulator.scatter_update(tf.IndexedSlices(new_accum, sorted_indices))

    def positions():
        # Row r's element j is table position r * row_size + j.
        row_shape = tf.shape(new_var, out_type=tf.int64)[1:]
        row_size = tf.reduce_prod(row_shape)
        rows = tf.reshape(tf.cast(sorted_indices, tf.int64) * row_size, [-1, 1])
        flat = rows + tf.reshape(tf.range(row_size), [1, -1])
        return tf.reshape(flat, tf.shape(new_var, out_type=tf.int64))

    new_var = _store(new_var, variable.dtype, rounding_key, positions)
    variable.scatter_update(tf.IndexedSlices(new_var, sorted_indices))
