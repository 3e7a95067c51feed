"""Every rejection: error class, message text, and var/accum left untouched."""

import re

import numpy as np
import pytest
import tensorflow as tf

import tf_adagrad
from support.adagrad_reference import bits

DENSE = "TfAdagrad>ApplyDense"
SPARSE = "TfAdagrad>ApplySparse"


def raw_ops():
    """The generated op wrappers, bypassing tf_adagrad.ops' Python checks so
    the kernels' own validation is what gets tested."""
    return tf_adagrad.ops.load_library()


def make_state(shape=(5, 3), dtype=np.float32):
    var0 = np.arange(np.prod(shape), dtype=dtype).reshape(shape) / 7
    accum0 = np.full(shape, 0.25, dtype)
    return var0, accum0, tf.Variable(var0), tf.Variable(accum0)


def assert_untouched(v, a, var0, accum0):
    np.testing.assert_array_equal(bits(v.numpy()), bits(var0))
    np.testing.assert_array_equal(bits(a.numpy()), bits(accum0))


def common_inputs(v, a, grad, lr, epsilon, dtype):
    return dict(
        var=v.handle,
        accum=a.handle,
        lr=tf.constant(lr, dtype),
        epsilon=tf.constant(epsilon, dtype),
        grad=tf.constant(grad, dtype),
        rounding_key=[],
    )


def dense(v, a, grad, lr=0.1, epsilon=1e-7, dtype=tf.float32):
    raw_ops().tf_adagrad_apply_dense(**common_inputs(v, a, grad, lr, epsilon, dtype))


def sparse(v, a, grad, indices, lr=0.1, epsilon=1e-7, dtype=tf.float32, index_dtype=tf.int64):
    raw_ops().tf_adagrad_apply_sparse(
        **common_inputs(v, a, grad, lr, epsilon, dtype), indices=tf.constant(indices, index_dtype)
    )


# (name, call, error class, message regex); each call gets a fresh (5, 3)
# float32 var/accum pair, in eager mode (kernel-side validation).
EAGER_REJECTIONS = [
    (
        "dense-lr-not-scalar",
        lambda v, a: dense(v, a, np.ones((5, 3)), lr=[0.1, 0.2]),
        tf.errors.InvalidArgumentError,
        rf"{DENSE}: expected `lr` to be a scalar, got shape \[2\]",
    ),
    (
        "dense-epsilon-not-scalar",
        lambda v, a: dense(v, a, np.ones((5, 3)), epsilon=[[1e-7]]),
        tf.errors.InvalidArgumentError,
        rf"{DENSE}: expected `epsilon` to be a scalar, got shape \[1,1\]",
    ),
    (
        "dense-grad-shape",
        lambda v, a: dense(v, a, np.ones((5, 4))),
        tf.errors.InvalidArgumentError,
        rf"{DENSE}: expected `grad` shape to equal `var` shape \[5,3\], got \[5,4\]",
    ),
    (
        "dense-grad-rank",
        lambda v, a: dense(v, a, np.ones(15)),
        tf.errors.InvalidArgumentError,
        rf"{DENSE}: expected `grad` shape to equal `var` shape \[5,3\], got \[15\]",
    ),
    (
        "dense-grad-dtype",
        lambda v, a: dense(v, a, np.ones((5, 3)), dtype=tf.float64),
        tf.errors.InvalidArgumentError,
        rf"{DENSE}: expected `var` of dtype double \(the dtype of `grad`\), got float",
    ),
    (
        "sparse-lr-not-scalar",
        lambda v, a: sparse(v, a, np.ones((1, 3)), [0], lr=[0.1]),
        tf.errors.InvalidArgumentError,
        rf"{SPARSE}: expected `lr` to be a scalar, got shape \[1\]",
    ),
    (
        "sparse-indices-rank",
        lambda v, a: sparse(v, a, np.ones((2, 3)), [[0, 1]]),
        tf.errors.InvalidArgumentError,
        rf"{SPARSE}: expected `indices` of rank 1, got shape \[1,2\]",
    ),
    (
        "sparse-grad-rows",
        lambda v, a: sparse(v, a, np.ones((3, 3)), [0, 1]),
        tf.errors.InvalidArgumentError,
        rf"{SPARSE}: expected `grad.shape\[0\]` to equal the number of indices \(2\), got `grad` shape \[3,3\]",
    ),
    (
        "sparse-grad-scalar",
        lambda v, a: sparse(v, a, 1.0, [0]),
        tf.errors.InvalidArgumentError,
        rf"{SPARSE}: expected `grad.shape\[0\]` to equal the number of indices \(1\), got `grad` shape \[\]",
    ),
    (
        "sparse-grad-row-shape",
        lambda v, a: sparse(v, a, np.ones((2, 4)), [0, 1]),
        tf.errors.InvalidArgumentError,
        rf"{SPARSE}: expected `grad.shape\[1:\]` to equal `var.shape\[1:\]` \[3\] \(`var` shape \[5,3\]\), "
        rf"got `grad` shape \[2,4\]",
    ),
    (
        "sparse-grad-dtype",
        lambda v, a: sparse(v, a, np.ones((1, 3)), [0], dtype=tf.float16),
        tf.errors.InvalidArgumentError,
        rf"{SPARSE}: expected `var` of dtype half \(the dtype of `grad`\), got float",
    ),
    (
        "same-variable-twice",
        lambda v, a: dense(v, v, np.ones((5, 3))),
        tf.errors.InvalidArgumentError,
        rf"{DENSE}: expected `var` and `accum` to be two distinct variables, got the same variable twice",
    ),
]


@pytest.mark.parametrize("case", EAGER_REJECTIONS, ids=[c[0] for c in EAGER_REJECTIONS])
def test_rejection_leaves_variables_untouched(case):
    _, call, error, message = case
    var0, accum0, v, a = make_state()
    with pytest.raises(error, match=message):
        call(v, a)
    assert_untouched(v, a, var0, accum0)


# Out-of-range indices run in child processes (tests/support/out_of_range_cases.py):
# a kernel without its index check could crash the process, and pytest with it.
# conftest.py's out_of_range_outcomes runs every case once for the session.
OUT_OF_RANGE_REJECTIONS = {
    "sparse-index-too-large": rf"{SPARSE}: expected every index in \[0, 5\) "
    rf"\(the first dimension of `var`\), got indices\[2\] = 5; nothing was updated",
    "sparse-index-negative": rf"{SPARSE}: expected every index in \[0, 5\) "
    rf".*got indices\[0\] = -1; nothing was updated",
    "sparse-index-int64-max": rf"{SPARSE}: expected every index in \[0, 5\) "
    rf".*got indices\[1\] = 9223372036854775807",
    "sparse-index-int64-min": rf"{SPARSE}: .*got indices\[0\] = -9223372036854775808",
}


def assert_rejected_untouched(outcome, message):
    assert "crash" not in outcome, outcome.get("crash")
    assert outcome["error"] == "InvalidArgumentError", outcome
    assert re.search(message, outcome["message"]), outcome["message"]
    assert outcome["untouched"], "var or accum was written"


@pytest.mark.parametrize("case", OUT_OF_RANGE_REJECTIONS)
def test_out_of_range_rejection_leaves_variables_untouched(case, out_of_range_outcomes):
    assert_rejected_untouched(out_of_range_outcomes[case], OUT_OF_RANGE_REJECTIONS[case])


def test_out_of_range_after_valid_indices_writes_nothing(out_of_range_outcomes):
    """The rows before the bad index must not have been updated either."""
    assert_rejected_untouched(
        out_of_range_outcomes["after-valid-indices"], r"got indices\[99\] = 100"
    )


def test_index_into_empty_table_is_rejected(out_of_range_outcomes):
    assert_rejected_untouched(
        out_of_range_outcomes["empty-table"], r"expected every index in \[0, 0\)"
    )


@pytest.mark.parametrize("sparse_op", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize(
    "accum0,message",
    [
        (
            np.ones((4, 3), np.float32),
            r"expected `accum` shape to equal `var` shape \[5,3\], got \[4,3\]",
        ),
        (
            np.ones((5, 3), np.float64),
            r"expected `accum` of dtype float \(the dtype of `grad`\), got double",
        ),
    ],
    ids=["shape", "dtype"],
)
def test_accum_must_match_var(sparse_op, accum0, message):
    var0 = np.ones((5, 3), np.float32)
    v, a = tf.Variable(var0), tf.Variable(accum0)
    op = SPARSE if sparse_op else DENSE
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"{op}: {message}"):
        if sparse_op:
            sparse(v, a, np.ones((1, 3)), [0])
        else:
            dense(v, a, np.ones((5, 3)))
    assert_untouched(v, a, var0, accum0)


def test_sparse_var_must_have_rank_at_least_one():
    v, a = tf.Variable(1.0), tf.Variable(0.1)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=rf"{SPARSE}: expected `var` of rank >= 1, got shape \[\]",
    ):
        sparse(v, a, np.ones((1,)), [0])
    assert v.numpy() == 1.0 and a.numpy() == np.float32(0.1)


def test_uninitialized_variable_is_failed_precondition():
    handle = tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[5, 3], shared_name="never_initialized")
    _, accum0, _, a = make_state()
    with pytest.raises(
        tf.errors.FailedPreconditionError,
        match=rf"{DENSE}: expected `var` to be an initialized resource variable",
    ):
        raw_ops().tf_adagrad_apply_dense(
            var=handle,
            accum=a.handle,
            lr=0.1,
            epsilon=1e-7,
            grad=tf.ones((5, 3)),
            rounding_key=[],
        )
    np.testing.assert_array_equal(bits(a.numpy()), bits(accum0))


def test_uninitialized_accum_is_failed_precondition():
    var0, _, v, _ = make_state()
    handle = tf.raw_ops.VarHandleOp(
        dtype=tf.float32, shape=[5, 3], shared_name="never_initialized_accum"
    )
    with pytest.raises(
        tf.errors.FailedPreconditionError,
        match=rf"{SPARSE}: expected `accum` to be an initialized resource variable",
    ):
        raw_ops().tf_adagrad_apply_sparse(
            var=v.handle,
            accum=handle,
            lr=0.1,
            epsilon=1e-7,
            grad=tf.ones((1, 3)),
            indices=[0],
            rounding_key=[],
        )
    np.testing.assert_array_equal(bits(v.numpy()), bits(var0))


# Graph construction: the shape functions reject what they can see.
SHAPE_FN_REJECTIONS = [
    (
        "dense-grad",
        lambda v, a: tf_adagrad.ops.apply_adagrad(v, a, 0.1, 1e-7, tf.ones((5, 4))),
        rf"{DENSE}: expected `grad` shape to equal `var` shape \[5,3\], got \[5,4\]",
    ),
    (
        "dense-lr",
        lambda v, a: tf_adagrad.ops.apply_adagrad(v, a, [0.1, 0.1], 1e-7, tf.ones((5, 3))),
        rf"{DENSE}: expected `lr` to be a scalar, got \[2\]",
    ),
    (
        "sparse-indices-rank",
        lambda v, a: tf_adagrad.ops.sparse_apply_adagrad(
            v, a, 0.1, 1e-7, tf.ones((2, 3)), [[0, 1]]
        ),
        rf"{SPARSE}: expected `indices` of rank 1, got \[1,2\]",
    ),
    (
        "sparse-grad-rows",
        lambda v, a: tf_adagrad.ops.sparse_apply_adagrad(v, a, 0.1, 1e-7, tf.ones((3, 3)), [0, 1]),
        rf"{SPARSE}: expected `grad.shape\[0\]` to equal the number of indices \[2\], got \[3,3\]",
    ),
    (
        "sparse-grad-row-shape",
        lambda v, a: tf_adagrad.ops.sparse_apply_adagrad(v, a, 0.1, 1e-7, tf.ones((2, 4)), [0, 1]),
        rf"{SPARSE}: expected `grad.shape\[1:\]` to equal `var.shape\[1:\]` \[3\], got \[2,4\]",
    ),
]


@pytest.mark.parametrize("case", SHAPE_FN_REJECTIONS, ids=[c[0] for c in SHAPE_FN_REJECTIONS])
def test_shape_functions_reject_at_graph_construction(case):
    _, call, message = case
    var0, accum0, v, a = make_state()
    with pytest.raises(ValueError, match=message):
        tf.function(lambda: call(v, a)).get_concrete_function()
    assert_untouched(v, a, var0, accum0)


def test_sparse_var_rank_zero_rejected_by_shape_function():
    v, a = tf.Variable(1.0), tf.Variable(0.1)
    with pytest.raises(ValueError, match=rf"{SPARSE}: expected `var` of rank >= 1, got \[\]"):
        tf.function(
            lambda: tf_adagrad.ops.sparse_apply_adagrad(v, a, 0.1, 1e-7, tf.ones((1,)), [0])
        ).get_concrete_function()


def test_python_wrapper_rejects_grad_of_another_dtype():
    _, _, v, a = make_state()
    with pytest.raises(
        TypeError, match=r"`grad` must have the dtype of `var` \(float32\), got float64"
    ):
        tf_adagrad.ops.apply_adagrad(v, a, 0.1, 1e-7, np.ones((5, 3), np.float64))


@pytest.mark.parametrize("op", ["dense", "sparse", "multi"])
def test_python_wrapper_rejects_integer_variables_naming_the_accepted_dtypes(op):
    v, a = (
        tf.Variable(np.arange(3, dtype=np.int32), name="counts"),
        tf.Variable(np.zeros(3, np.int32)),
    )
    grad = tf.ones(3, tf.int32)
    argument = "`variables[0]`" if op == "multi" else "`var`"
    message = f"{argument} (counts:0) must have one of the dtypes float16, bfloat16, float32, float64; got int32."
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        if op == "dense":
            tf_adagrad.ops.apply_adagrad(v, a, 0.1, 1e-7, grad)
        elif op == "sparse":
            tf_adagrad.ops.sparse_apply_adagrad(v, a, 0.1, 1e-7, grad[:1], [0])
        else:
            tf_adagrad.ops.multi_apply_adagrad([v], [a], 0.1, 1e-7, [grad])
    np.testing.assert_array_equal(v.numpy(), [0, 1, 2])


def test_python_wrapper_rejects_non_variables():
    with pytest.raises(
        TypeError, match=r"`var` must be a tf.Variable or a keras.Variable, got EagerTensor"
    ):
        tf_adagrad.ops.apply_adagrad(tf.ones(3), tf.Variable(tf.ones(3)), 0.1, 1e-7, tf.ones(3))


def test_python_wrapper_rejects_float_indices():
    _, _, v, a = make_state()
    with pytest.raises(TypeError, match=r"`indices` must be int32 or int64, got float32"):
        tf_adagrad.ops.sparse_apply_adagrad(v, a, 0.1, 1e-7, tf.ones((1, 3)), [0.0])
