"""Independent NumPy references for the Adagrad update, used by the tests.

Every step takes `epsilon_placement`, as the ops do:
    accum += g * g
    var -= lr * g / sqrt(accum + epsilon)       "inside_sqrt" (Keras 3)
    var -= lr * g / (sqrt(accum) + epsilon)     "outside_sqrt" (ApplyAdagradV2)
"""

import numpy as np
import tensorflow as tf

DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
SIXTEEN_BIT = (tf.float16, tf.bfloat16)


def np_dtype(dtype):
    return tf.as_dtype(dtype).as_numpy_dtype


def compute_dtype(dtype):
    """The type the kernels compute in: float32 for 16-bit types."""
    return np.float32 if tf.as_dtype(dtype) in SIXTEEN_BIT else np_dtype(dtype)


def _denominator(accum, epsilon, epsilon_placement):
    if epsilon_placement == "inside_sqrt":
        return np.sqrt(accum + epsilon)
    assert epsilon_placement == "outside_sqrt", epsilon_placement
    return np.sqrt(accum) + epsilon


def dense_step_float64(var, accum, lr, epsilon, grad, epsilon_placement="inside_sqrt"):
    """One step in float64, whatever the inputs' dtype (for tolerance checks)."""
    var, accum, grad = (np.asarray(x, np.float64) for x in (var, accum, grad))
    accum = accum + grad * grad
    var = var - lr * grad / _denominator(accum, epsilon, epsilon_placement)
    return var, accum


def dense_step_exact(var, accum, lr, epsilon, grad, dtype, epsilon_placement="inside_sqrt"):
    """One step exactly as the kernels compute it: widen to the compute type
    (float32 for 16-bit types), same operation order, round once on store
    (the accumulator to its own dtype: `dtype`, or float32)."""
    c = compute_dtype(dtype)
    store = np_dtype(dtype)
    accum_store = np.asarray(accum).dtype
    lr = store(lr).astype(c)
    epsilon = store(epsilon).astype(c)
    v, a, g = (np.asarray(x).astype(c) for x in (var, accum, grad))
    a = a + g * g
    v = v - lr * g / _denominator(a, epsilon, epsilon_placement)
    return v.astype(store), a.astype(accum_store)


def densify(grad, indices, num_rows, dtype):
    """Sums duplicate rows in position order, in the compute type; returns
    (unique sorted indices, summed rows)."""
    c = compute_dtype(dtype)
    grad = np.asarray(grad).astype(c)
    unique = sorted(set(int(i) for i in indices))
    summed = {}
    for position, index in enumerate(indices):
        index = int(index)
        summed[index] = grad[position] if index not in summed else summed[index] + grad[position]
    return unique, [summed[i] for i in unique]


def sparse_step_exact(
    var, accum, lr, epsilon, grad, indices, dtype, epsilon_placement="inside_sqrt"
):
    """The sparse update as the kernels compute it: duplicates summed in
    position order in the compute type, each touched row updated once."""
    var = np.array(var, copy=True)
    accum = np.array(accum, copy=True)
    c = compute_dtype(dtype)
    store = np_dtype(dtype)
    lr_c = store(lr).astype(c)
    eps_c = store(epsilon).astype(c)
    unique, rows = densify(grad, indices, var.shape[0], dtype)
    for index, g in zip(unique, rows):
        a = accum[index].astype(c) + g * g
        v = var[index].astype(c) - lr_c * g / _denominator(a, eps_c, epsilon_placement)
        accum[index] = a.astype(accum.dtype)
        var[index] = v.astype(store)
    return var, accum


def sparse_step_float64(var, accum, lr, epsilon, grad, indices, epsilon_placement="inside_sqrt"):
    """The dense update with the densified gradient, in float64."""
    var = np.asarray(var, np.float64)
    dense_grad = np.zeros_like(var)
    np.add.at(dense_grad, np.asarray(indices, np.int64), np.asarray(grad, np.float64))
    return dense_step_float64(var, accum, lr, epsilon, dense_grad, epsilon_placement)


def bits(x):
    """The raw bytes of an array, for bit-identical comparisons."""
    x = np.ascontiguousarray(x)
    return x.view(np.dtype(f"u{x.dtype.itemsize}"))
