"""Numerics and errors of TfAdagrad>RowwiseApplyDense / RowwiseApplySparse
against NumPy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adagrad
from support.adagrad_reference import DTYPES, bits, np_dtype
from support.rowwise_reference import (
    accumulator_dtype,
    dense_step_exact,
    dense_step_float64,
    sparse_step_exact,
)

INDEX_DTYPES = [tf.int32, tf.int64]
# How the kernels' messages name dtypes (TensorFlow's DataTypeString).
KERNEL_DTYPE_NAMES = {
    tf.float16: "half",
    tf.bfloat16: "bfloat16",
    tf.float32: "float",
    tf.float64: "double",
}
LR, EPSILON = 0.1, 1e-8
# Against the float64 reference (NumPy's own mean, another summation order):
# a few units in the last place of the storage type, each step rounded.
TOLERANCE = {
    tf.float16: dict(rtol=4e-3, atol=4e-3),
    tf.bfloat16: dict(rtol=3e-2, atol=3e-2),
    tf.float32: dict(rtol=2e-6, atol=1e-6),
    tf.float64: dict(rtol=1e-13, atol=1e-13),
}
# Rows shorter than, equal to and longer than the 32 lanes of the sum, and
# not a multiple of them.
SHAPES = [(), (7,), (3, 5), (2, 3, 4), (4, 32), (3, 100), (2, 65, 3)]


def random_state(rng, shape, dtype):
    var = rng.uniform(-2.0, 2.0, shape).astype(np_dtype(dtype))
    rows = shape[:1]
    accum = rng.uniform(0.1, 1.0, rows).astype(accumulator_dtype(dtype))
    return var, accum


def gradient(rng, shape, dtype):
    return rng.uniform(-1.0, 1.0, shape).astype(np_dtype(dtype))


def variables(var, accum):
    return tf.Variable(var), tf.Variable(accum)


def rowwise_op(name):
    return getattr(tf_adagrad.ops.load_library(), name)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_dense_is_bit_exact_with_the_reference(dtype, shape):
    rng = np.random.default_rng(len(shape))
    var, accum = random_state(rng, shape, dtype)
    v, a = variables(var, accum)
    assert a.dtype == tf_adagrad.ops.rowwise_accumulator_dtype(dtype)
    for _ in range(3):
        grad = gradient(rng, shape, dtype)
        tf_adagrad.ops.rowwise_apply_adagrad(v, a, LR, EPSILON, grad)
        var, accum = dense_step_exact(var, accum, LR, EPSILON, grad, dtype)
    np.testing.assert_array_equal(bits(a.numpy()), bits(accum))
    np.testing.assert_array_equal(bits(v.numpy()), bits(var))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_dense_matches_float64_mean(dtype, shape):
    rng = np.random.default_rng(1)
    var, accum = random_state(rng, shape, dtype)
    v, a = variables(var, accum)
    ref_var, ref_accum = var.astype(np.float64), accum.astype(np.float64)
    for _ in range(3):
        grad = gradient(rng, shape, dtype)
        tf_adagrad.ops.rowwise_apply_adagrad(v, a, LR, EPSILON, grad)
        ref_var, ref_accum = dense_step_float64(ref_var, ref_accum, LR, EPSILON, grad)
        ref_var = ref_var.astype(np_dtype(dtype)).astype(np.float64)
        ref_accum = ref_accum.astype(accumulator_dtype(dtype)).astype(np.float64)
    accum_tolerance = TOLERANCE[tf.float64 if dtype == tf.float64 else tf.float32]
    np.testing.assert_allclose(a.numpy().astype(np.float64), ref_accum, **accum_tolerance)
    np.testing.assert_allclose(v.numpy().astype(np.float64), ref_var, **TOLERANCE[dtype])


def test_a_row_shares_one_accumulator_and_one_step_size():
    # Row 0's mean square is (9 + 16) / 2 = 12.5, row 1's is 0: row 1 keeps
    # its weights and accumulator.
    v = tf.Variable([[1.0, 2.0], [3.0, 4.0]], dtype=tf.float64)
    a = tf.Variable([0.5, 0.25], dtype=tf.float64)
    grad = np.array([[3.0, -4.0], [0.0, 0.0]])
    tf_adagrad.ops.rowwise_apply_adagrad(v, a, 0.1, 0.0, grad)
    np.testing.assert_array_equal(a.numpy(), [13.0, 0.25])
    step = 0.1 / np.sqrt(13.0)
    np.testing.assert_allclose(v.numpy(), [[1.0 - 3 * step, 2.0 + 4 * step], [3.0, 4.0]], 1e-15)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("row_shape", [(), (5,), (40,), (3, 4)], ids=str)
def test_sparse_with_duplicates_is_bit_exact_and_leaves_other_rows(dtype, index_dtype, row_shape):
    rng = np.random.default_rng(2)
    shape = (50, *row_shape)
    var, accum = random_state(rng, shape, dtype)
    v, a = variables(var, accum)
    indices = np.array([3, 7, 3, 49, 0, 7, 3, 12], index_dtype.as_numpy_dtype)
    for _ in range(2):
        grad = gradient(rng, (len(indices), *row_shape), dtype)
        tf_adagrad.ops.sparse_rowwise_apply_adagrad(v, a, LR, EPSILON, grad, indices)
        var, accum = sparse_step_exact(var, accum, LR, EPSILON, grad, indices, dtype)
    np.testing.assert_array_equal(bits(a.numpy()), bits(accum))
    np.testing.assert_array_equal(bits(v.numpy()), bits(var))
    untouched = np.setdiff1d(np.arange(50), indices)
    first = random_state(np.random.default_rng(2), shape, dtype)
    np.testing.assert_array_equal(bits(v.numpy()[untouched]), bits(first[0][untouched]))
    np.testing.assert_array_equal(bits(a.numpy()[untouched]), bits(first[1][untouched]))


def test_sparse_equals_dense_with_the_densified_gradient():
    rng = np.random.default_rng(3)
    var, accum = random_state(rng, (20, 33), tf.float32)
    grad = gradient(rng, (6, 33), tf.float32)
    indices = np.array([4, 19, 4, 0, 11, 19])
    sparse_v, sparse_a = variables(var, accum)
    tf_adagrad.ops.sparse_rowwise_apply_adagrad(sparse_v, sparse_a, LR, EPSILON, grad, indices)
    # Densify, then update only the named rows densely (rows with a zero
    # gradient keep their values in the dense op too).
    dense_grad = tf.convert_to_tensor(tf.IndexedSlices(grad, indices, (20, 33)))
    dense_v, dense_a = variables(var, accum)
    tf_adagrad.ops.rowwise_apply_adagrad(dense_v, dense_a, LR, EPSILON, dense_grad)
    np.testing.assert_array_equal(bits(sparse_v.numpy()), bits(dense_v.numpy()))
    np.testing.assert_array_equal(bits(sparse_a.numpy()), bits(dense_a.numpy()))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_tf_function_and_use_locking_match_eager(sparse):
    rng = np.random.default_rng(4)
    var, accum = random_state(rng, (30, 8), tf.float32)
    grad = gradient(rng, (30, 8), tf.float32)
    indices = np.arange(30)[::-1]

    def update(v, a, use_locking):
        if sparse:
            tf_adagrad.ops.sparse_rowwise_apply_adagrad(
                v, a, LR, EPSILON, grad, indices, use_locking=use_locking
            )
        else:
            tf_adagrad.ops.rowwise_apply_adagrad(v, a, LR, EPSILON, grad, use_locking=use_locking)

    eager = variables(var, accum)
    update(*eager, use_locking=False)
    traced = variables(var, accum)
    tf.function(lambda: update(*traced, use_locking=True))()
    expected = (
        sparse_step_exact(var, accum, LR, EPSILON, grad[::-1], np.arange(30), tf.float32)
        if sparse
        else dense_step_exact(var, accum, LR, EPSILON, grad, tf.float32)
    )
    for v, a in (eager, traced):
        np.testing.assert_array_equal(bits(v.numpy()), bits(expected[0]))
        np.testing.assert_array_equal(bits(a.numpy()), bits(expected[1]))


def test_accepts_keras_variables():
    var = keras.Variable(np.ones((4, 3), np.float32))
    accum = keras.Variable(np.zeros((4,), np.float32))
    tf_adagrad.ops.rowwise_apply_adagrad(var, accum, 0.1, 0.0, np.ones((4, 3), np.float32))
    np.testing.assert_allclose(accum.numpy(), np.ones(4))
    np.testing.assert_allclose(var.numpy(), np.full((4, 3), 0.9), rtol=1e-7)


@pytest.mark.parametrize("shape", [(0,), (0, 3), (4, 0)], ids=str)
def test_dense_empty_is_a_no_op(shape):
    v, a = variables(np.zeros(shape, np.float32), np.ones(shape[:1], np.float32))
    tf_adagrad.ops.rowwise_apply_adagrad(v, a, LR, EPSILON, np.zeros(shape, np.float32))
    np.testing.assert_array_equal(a.numpy(), np.ones(shape[:1]))


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=lambda d: d.name)
def test_sparse_empty_gradient_is_a_no_op(index_dtype):
    var, accum = random_state(np.random.default_rng(5), (6, 4), tf.float32)
    v, a = variables(var, accum)
    tf_adagrad.ops.sparse_rowwise_apply_adagrad(
        v, a, LR, EPSILON, np.zeros((0, 4), np.float32), np.zeros((0,), index_dtype.as_numpy_dtype)
    )
    np.testing.assert_array_equal(v.numpy(), var)
    np.testing.assert_array_equal(a.numpy(), accum)


# Bad input: a clear message naming what was expected and what came, and
# nothing written.

DENSE_OP = "TfAdagrad>RowwiseApplyDense"
SPARSE_OP = "TfAdagrad>RowwiseApplySparse"


def assert_rejected(call, message, v, a):
    before = v.numpy().copy(), a.numpy().copy()
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)) as raised:
        call()
    assert message in str(raised.value)
    np.testing.assert_array_equal(v.numpy(), before[0])
    np.testing.assert_array_equal(a.numpy(), before[1])


@pytest.mark.parametrize("run", ["eager", "tf.function"])
def test_elementwise_accumulator_shape_is_rejected(run):
    v = tf.Variable(np.ones((5, 3), np.float32))
    a = tf.Variable(np.ones((5, 3), np.float32))

    def call():
        update = lambda: tf_adagrad.ops.rowwise_apply_adagrad(  # noqa: E731
            v, a, LR, EPSILON, np.ones((5, 3), np.float32)
        )
        return update() if run == "eager" else tf.function(update)()

    assert_rejected(
        call,
        f"{DENSE_OP}: expected `accum` shape to equal `var.shape[:1]` [5]"
        if run == "eager"
        else "expected `accum` shape to equal `var.shape[:1]` [5]",
        v,
        a,
    )


def test_scalar_variable_needs_a_scalar_accumulator():
    v = tf.Variable(1.0)
    a = tf.Variable([1.0])
    assert_rejected(
        lambda: tf_adagrad.ops.rowwise_apply_adagrad(v, a, LR, EPSILON, 1.0),
        "expected `accum` shape to equal `var.shape[:1]` []",
        v,
        a,
    )


@pytest.mark.parametrize(
    "var_dtype, accum_dtype",
    [
        (tf.float16, tf.float16),
        (tf.bfloat16, tf.float64),
        (tf.float32, tf.float64),
        (tf.float64, tf.float32),
    ],
    ids=str,
)
def test_accumulator_of_the_wrong_dtype_is_rejected(var_dtype, accum_dtype):
    v = tf.Variable(tf.ones((4, 2), var_dtype))
    a = tf.Variable(tf.ones((4,), accum_dtype))
    expected = KERNEL_DTYPE_NAMES[tf_adagrad.ops.rowwise_accumulator_dtype(var_dtype)]
    assert_rejected(
        lambda: tf_adagrad.ops.sparse_rowwise_apply_adagrad(
            v, a, LR, EPSILON, tf.ones((1, 2), var_dtype), [1]
        ),
        f"{SPARSE_OP}: expected `accum` of dtype {expected} (the rowwise accumulator "
        f"dtype of a `var` of dtype {KERNEL_DTYPE_NAMES[var_dtype]}), "
        f"got {KERNEL_DTYPE_NAMES[accum_dtype]}",
        v,
        a,
    )


def test_hyperparameters_of_the_variables_dtype_are_rejected_by_the_raw_op():
    v = tf.Variable(tf.ones((4, 2), tf.float16))
    a = tf.Variable(tf.ones((4,), tf.float32))
    assert_rejected(
        lambda: rowwise_op("tf_adagrad_rowwise_apply_dense")(
            var=v.handle,
            accum=a.handle,
            lr=tf.constant(0.1, tf.float64),
            epsilon=tf.constant(0.0, tf.float64),
            grad=tf.ones((4, 2), tf.float16),
            rounding_key=[],
        ),
        f"{DENSE_OP}: expected `lr` and `epsilon` of dtype float (the rowwise accumulator "
        "dtype of a `var` of dtype half), got double",
        v,
        a,
    )


def test_gradient_of_another_shape_is_rejected():
    v, a = variables(np.ones((5, 3), np.float32), np.ones((5,), np.float32))
    assert_rejected(
        lambda: tf_adagrad.ops.rowwise_apply_adagrad(
            v, a, LR, EPSILON, np.ones((5, 4), np.float32)
        ),
        "`grad`",
        v,
        a,
    )


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("bad", [-1, 5, 2**31 - 1])
def test_out_of_range_index_is_rejected_and_nothing_is_written(index_dtype, bad):
    v, a = variables(np.ones((5, 3), np.float32), np.ones((5,), np.float32))
    indices = np.array([0, 4, bad, 1], index_dtype.as_numpy_dtype)
    assert_rejected(
        lambda: tf_adagrad.ops.sparse_rowwise_apply_adagrad(
            v, a, LR, EPSILON, np.ones((4, 3), np.float32), indices
        ),
        f"{SPARSE_OP}: expected every index in [0, 5) (the first dimension of `var`), "
        f"got indices[2] = {bad}; nothing was updated",
        v,
        a,
    )


def test_sparse_gradient_rows_must_match_the_indices():
    v, a = variables(np.ones((5, 3), np.float32), np.ones((5,), np.float32))
    assert_rejected(
        lambda: tf_adagrad.ops.sparse_rowwise_apply_adagrad(
            v, a, LR, EPSILON, np.ones((3, 3), np.float32), [0, 1]
        ),
        SPARSE_OP,
        v,
        a,
    )


def test_same_variable_twice_is_rejected():
    v = tf.Variable(np.ones((3,), np.float32))
    assert_rejected(
        lambda: tf_adagrad.ops.rowwise_apply_adagrad(v, v, LR, EPSILON, np.ones(3, np.float32)),
        "two distinct variables",
        v,
        v,
    )
