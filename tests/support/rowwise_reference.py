"""Independent NumPy references for rowwise Adagrad (FBGEMM's exact rowwise).

Rows are the first axis (a scalar is one row); each row r has one
accumulator value:
    accum[r] += mean(g[r] * g[r])
    var[r]   -= lr * g[r] / (sqrt(accum[r]) + epsilon)
in the accumulator's dtype: float32 for 16-bit and float32 variables,
float64 for float64 ones.
"""

import numpy as np
import tensorflow as tf

# The sum of squares runs over 32 lanes: lane l adds elements l, l + 32, ...
# in order, then the lanes are added pairwise (l += l + s for s = 16 .. 1).
LANES = 32


def np_dtype(dtype):
    return tf.as_dtype(dtype).as_numpy_dtype


def accumulator_dtype(dtype):
    return np.float64 if tf.as_dtype(dtype) == tf.float64 else np.float32


def as_rows(x):
    """x as a [rows, row_size] array (a scalar is one row of one element)."""
    x = np.asarray(x)
    if x.ndim == 0:
        return x.reshape(1, 1)
    return x.reshape(x.shape[0], -1)


def sum_of_squares_in_lane_order(rows):
    """Each row's sum of squares, in the kernels' order and in rows' dtype."""
    num_rows, row_size = rows.shape
    partial = np.zeros((num_rows, LANES), rows.dtype)
    for start in range(0, row_size, LANES):
        chunk = rows[:, start : start + LANES]
        partial[:, : chunk.shape[1]] += chunk * chunk
    step = LANES // 2
    while step:
        partial[:, :step] += partial[:, step : 2 * step]
        step //= 2
    return partial[:, 0]


def _update_rows(var_rows, accum, grad_rows, lr, epsilon):
    """Updates [rows, row_size] var_rows (in the accumulator's dtype) and
    accum ([rows]) with grad_rows (in the accumulator's dtype)."""
    c = accum.dtype.type
    row_size = c(var_rows.shape[1])
    accum = accum + sum_of_squares_in_lane_order(grad_rows) / row_size
    multiplier = c(lr) / (np.sqrt(accum) + c(epsilon))
    return var_rows - multiplier[:, None] * grad_rows, accum


def dense_step_exact(var, accum, lr, epsilon, grad, dtype):
    """One dense step exactly as the kernels compute it."""
    store = np_dtype(dtype)
    c = accumulator_dtype(dtype)
    var = np.asarray(var)
    if var.size == 0:
        return var.copy(), np.array(accum, copy=True)
    v, a = _update_rows(
        as_rows(var).astype(c),
        np.asarray(accum, c).reshape(-1),
        as_rows(grad).astype(c),
        lr,
        epsilon,
    )
    return v.astype(store).reshape(var.shape), a.reshape(np.shape(accum))


def sparse_step_exact(var, accum, lr, epsilon, grad, indices, dtype):
    """The sparse step as the kernels compute it: duplicate rows summed in
    position order in the accumulator's dtype, each named row updated once,
    the other rows untouched."""
    store = np_dtype(dtype)
    c = accumulator_dtype(dtype)
    var = np.array(var, copy=True)
    accum = np.array(accum, c, copy=True)
    grad_rows = as_rows(grad).astype(c) if len(indices) else None
    if var.size == 0 or grad_rows is None:
        return var, accum
    var_rows = var.reshape(var.shape[0], -1)
    summed = {}
    for position, index in enumerate(int(i) for i in indices):
        row = grad_rows[position]
        summed[index] = row.copy() if index not in summed else summed[index] + row
    unique = sorted(summed)
    v, a = _update_rows(
        var_rows[unique].astype(c),
        accum[unique],
        np.stack([summed[i] for i in unique]),
        lr,
        epsilon,
    )
    var_rows[unique] = v.astype(store)
    accum[unique] = a
    return var, accum


def dense_step_float64(var, accum, lr, epsilon, grad):
    """One dense step in float64 with NumPy's own mean (for tolerance checks)."""
    var64 = np.asarray(var, np.float64)
    g = np.asarray(grad, np.float64)
    if var64.ndim == 0:
        accum = np.asarray(accum, np.float64) + g * g
        return var64 - lr * g / (np.sqrt(accum) + epsilon), accum
    axes = tuple(range(1, var64.ndim))
    accum = np.asarray(accum, np.float64) + np.mean(g * g, axis=axes)
    scale = lr / (np.sqrt(accum) + epsilon)
    return var64 - scale.reshape((-1,) + (1,) * len(axes)) * g, accum
