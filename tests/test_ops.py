"""Numerics of TfAdagrad>ApplyDense / TfAdagrad>ApplySparse against NumPy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adagrad
from support.adagrad_reference import (
    DTYPES,
    bits,
    dense_step_exact,
    dense_step_float64,
    np_dtype,
    sparse_step_exact,
    sparse_step_float64,
)

# Tolerances against the float64 reference: a few units in the last place of
# each storage type (16-bit types are rounded once per step).
TOLERANCE = {
    tf.float16: dict(rtol=4e-3, atol=4e-3),
    tf.bfloat16: dict(rtol=3e-2, atol=3e-2),
    tf.float32: dict(rtol=2e-6, atol=1e-6),
    tf.float64: dict(rtol=1e-13, atol=1e-13),
}
INDEX_DTYPES = [tf.int32, tf.int64]
PLACEMENTS = ["inside_sqrt", "outside_sqrt"]


def random_state(rng, shape, dtype):
    """Variable, accumulator (positive) and gradient values, stored in dtype."""
    t = np_dtype(dtype)
    var = rng.uniform(-2.0, 2.0, shape).astype(t)
    accum = rng.uniform(0.1, 1.0, shape).astype(t)
    grad = rng.uniform(-1.0, 1.0, shape).astype(t)
    return var, accum, grad


def variables(var, accum):
    return tf.Variable(var), tf.Variable(accum)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 4), (70001,)], ids=str)
def test_dense_matches_float64_reference(dtype, shape, placement):
    rng = np.random.default_rng(0)
    var0, accum0, _ = random_state(rng, shape, dtype)
    v, a = variables(var0, accum0)
    ref_var, ref_accum = var0.astype(np.float64), accum0.astype(np.float64)
    for _ in range(3):
        grad = rng.uniform(-1, 1, shape).astype(np_dtype(dtype))
        tf_adagrad.ops.apply_adagrad(v, a, 0.1, 1e-7, grad, epsilon_placement=placement)
        ref_var, ref_accum = dense_step_float64(ref_var, ref_accum, 0.1, 1e-7, grad, placement)
        # Storage rounds the state each step; the reference does the same.
        ref_var = ref_var.astype(np_dtype(dtype)).astype(np.float64)
        ref_accum = ref_accum.astype(np_dtype(dtype)).astype(np.float64)
    np.testing.assert_allclose(a.numpy().astype(np.float64), ref_accum, **TOLERANCE[dtype])
    np.testing.assert_allclose(v.numpy().astype(np.float64), ref_var, **TOLERANCE[dtype])


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_dense_is_bit_exact_with_compute_type_reference(dtype, placement):
    """float32 math for 16-bit types, the reference's operation order, one rounding."""
    rng = np.random.default_rng(1)
    var0, accum0, grad = random_state(rng, (1000,), dtype)
    v, a = variables(var0, accum0)
    tf_adagrad.ops.apply_adagrad(v, a, 0.05, 1e-3, grad, epsilon_placement=placement)
    want_var, want_accum = dense_step_exact(var0, accum0, 0.05, 1e-3, grad, dtype, placement)
    np.testing.assert_array_equal(bits(a.numpy()), bits(want_accum))
    np.testing.assert_array_equal(bits(v.numpy()), bits(want_var))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_epsilon_placement_selects_the_formula(sparse):
    """Inside by default; the two formulas are far apart with epsilon = 1."""
    var0 = np.array([[1.0], [-2.0], [0.5]], np.float32)
    accum0 = np.array([[0.5], [1.0], [2.0]], np.float32)
    grad = np.array([[1.0], [2.0], [-3.0]], np.float32)
    accum1 = accum0.astype(np.float64) + grad.astype(np.float64) ** 2
    want = {
        "inside_sqrt": var0 - grad / np.sqrt(accum1 + 1.0),
        "outside_sqrt": var0 - grad / (np.sqrt(accum1) + 1.0),
    }
    assert np.all(np.abs(want["inside_sqrt"] - want["outside_sqrt"]) > 0.05)
    for placement in [None, *PLACEMENTS]:
        v, a = variables(var0, accum0)
        kwargs = {} if placement is None else {"epsilon_placement": placement}
        if sparse:
            tf_adagrad.ops.sparse_apply_adagrad(v, a, 1.0, 1.0, grad, [0, 1, 2], **kwargs)
        else:
            tf_adagrad.ops.apply_adagrad(v, a, 1.0, 1.0, grad, **kwargs)
        np.testing.assert_allclose(v.numpy(), want[placement or "inside_sqrt"], rtol=1e-6)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_outside_sqrt_is_bit_identical_to_tensorflows_adagrad_v2(sparse):
    """float32, several steps: TensorFlow's ResourceApplyAdagradV2, and for
    sparse gradients its legacy optimizer's path (duplicates summed by
    unique + unsorted_segment_sum, then ResourceSparseApplyAdagradV2)."""
    rng = np.random.default_rng(8)
    var0, accum0, _ = random_state(rng, (64, 9), tf.float32)
    ours, theirs = variables(var0, accum0), variables(var0, accum0)
    lr, epsilon = np.float32(0.07), np.float32(1e-3)
    for _ in range(4):
        if sparse:
            indices = rng.integers(0, 64, 100).astype(np.int32)
            grad = rng.uniform(-1, 1, (100, 9)).astype(np.float32)
            tf_adagrad.ops.sparse_apply_adagrad(
                *ours, lr, epsilon, grad, indices, epsilon_placement="outside_sqrt"
            )
            unique, positions = tf.unique(indices)
            summed = tf.math.unsorted_segment_sum(grad, positions, tf.size(unique))
            tf.raw_ops.ResourceSparseApplyAdagradV2(
                var=theirs[0].handle,
                accum=theirs[1].handle,
                lr=lr,
                epsilon=epsilon,
                grad=summed,
                indices=unique,
            )
        else:
            grad = rng.uniform(-1, 1, (64, 9)).astype(np.float32)
            tf_adagrad.ops.apply_adagrad(*ours, lr, epsilon, grad, epsilon_placement="outside_sqrt")
            tf.raw_ops.ResourceApplyAdagradV2(
                var=theirs[0].handle, accum=theirs[1].handle, lr=lr, epsilon=epsilon, grad=grad
            )
    np.testing.assert_array_equal(bits(ours[1].numpy()), bits(theirs[1].numpy()))
    np.testing.assert_array_equal(bits(ours[0].numpy()), bits(theirs[0].numpy()))


def test_unknown_epsilon_placement_is_rejected_before_anything_runs():
    v, a = variables(np.ones(3, np.float32), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="`epsilon_placement` must be one of 'inside_sqrt', "):
        tf_adagrad.ops.apply_adagrad(
            v, a, 0.1, 1e-7, np.ones(3, np.float32), epsilon_placement="outside"
        )
    np.testing.assert_array_equal(v.numpy(), np.ones(3, np.float32))


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=lambda d: d.name)
def test_sparse_with_duplicates_matches_references(dtype, index_dtype, placement):
    rng = np.random.default_rng(2)
    num_rows, row = 50, 6
    var0, accum0, _ = random_state(rng, (num_rows, row), dtype)
    indices = rng.integers(0, 20, size=40)  # many duplicates, rows 20+ untouched
    grad = rng.uniform(-1, 1, (40, row)).astype(np_dtype(dtype))
    v, a = variables(var0, accum0)
    tf_adagrad.ops.sparse_apply_adagrad(
        v, a, 0.1, 1e-7, grad, tf.constant(indices, index_dtype), epsilon_placement=placement
    )

    want_var, want_accum = sparse_step_exact(
        var0, accum0, 0.1, 1e-7, grad, indices, dtype, placement
    )
    np.testing.assert_array_equal(bits(a.numpy()), bits(want_accum))
    np.testing.assert_array_equal(bits(v.numpy()), bits(want_var))
    ref_var, ref_accum = sparse_step_float64(var0, accum0, 0.1, 1e-7, grad, indices, placement)
    np.testing.assert_allclose(v.numpy().astype(np.float64), ref_var, **TOLERANCE[dtype])
    np.testing.assert_allclose(a.numpy().astype(np.float64), ref_accum, **TOLERANCE[dtype])
    untouched = np.setdiff1d(np.arange(num_rows), indices)
    np.testing.assert_array_equal(bits(v.numpy()[untouched]), bits(var0[untouched]))
    np.testing.assert_array_equal(bits(a.numpy()[untouched]), bits(accum0[untouched]))


@pytest.mark.parametrize(
    "var_shape,indices",
    [
        ((10, 4), [3] * 25),  # all equal
        ((10, 4), list(range(9, -1, -1))),  # reversed order, unique
        ((10, 4), [9, 9, 7, 7, 5, 5, 0, 0]),  # reversed with duplicates
        ((6, 3, 2), [5, 0, 5, 2]),  # rank-3 variable
        ((1000, 1), [7, 999, 0, 7, 7, 500]),  # row size 1
        ((20, 300), [19, 0, 19, 4, 4, 4]),  # row size > 128
        ((5000, 1), list(np.random.default_rng(3).integers(0, 5000, 20000))),
        ((300, 257), list(np.random.default_rng(4).integers(0, 300, 1000))),
    ],
    ids=[
        "all-equal",
        "reversed",
        "reversed-dups",
        "rank3",
        "row1",
        "row300",
        "row1-many",
        "row257-many",
    ],
)
def test_sparse_shapes_and_orders(var_shape, indices):
    rng = np.random.default_rng(5)
    var0, accum0, _ = random_state(rng, var_shape, tf.float32)
    grad = rng.uniform(-1, 1, (len(indices),) + var_shape[1:]).astype(np.float32)
    v, a = variables(var0, accum0)
    tf_adagrad.ops.sparse_apply_adagrad(v, a, 0.3, 1e-7, grad, np.asarray(indices, np.int64))
    want_var, want_accum = sparse_step_exact(var0, accum0, 0.3, 1e-7, grad, indices, tf.float32)
    np.testing.assert_array_equal(bits(a.numpy()), bits(want_accum))
    np.testing.assert_array_equal(bits(v.numpy()), bits(want_var))


def test_sparse_equals_dense_with_densified_gradient():
    rng = np.random.default_rng(6)
    var0, accum0, _ = random_state(rng, (30, 5), tf.float64)
    indices = tf.constant(rng.integers(0, 30, 64), tf.int64)
    grad = tf.constant(rng.uniform(-1, 1, (64, 5)))
    dense_grad = tf.convert_to_tensor(
        tf.IndexedSlices(grad, indices, tf.constant([30, 5], tf.int64))
    )
    v_sparse, a_sparse = variables(var0, accum0)
    v_dense, a_dense = variables(var0, accum0)
    tf_adagrad.ops.sparse_apply_adagrad(v_sparse, a_sparse, 0.2, 1e-7, grad, indices)
    tf_adagrad.ops.apply_adagrad(v_dense, a_dense, 0.2, 1e-7, dense_grad)
    np.testing.assert_allclose(v_sparse.numpy(), v_dense.numpy(), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(a_sparse.numpy(), a_dense.numpy(), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("shape", [(0,), (0, 3), (4, 0)], ids=str)
def test_dense_empty_is_noop(shape):
    v, a = variables(np.ones(shape, np.float32), np.ones(shape, np.float32))
    tf_adagrad.ops.apply_adagrad(v, a, 0.1, 1e-7, np.zeros(shape, np.float32))
    assert v.shape == shape and a.shape == shape


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=lambda d: d.name)
def test_sparse_empty_gradient_is_noop(index_dtype):
    rng = np.random.default_rng(7)
    var0, accum0, _ = random_state(rng, (8, 3), tf.float32)
    v, a = variables(var0, accum0)
    tf_adagrad.ops.sparse_apply_adagrad(
        v, a, 0.1, 1e-7, np.zeros((0, 3), np.float32), tf.zeros([0], index_dtype)
    )
    np.testing.assert_array_equal(bits(v.numpy()), bits(var0))
    np.testing.assert_array_equal(bits(a.numpy()), bits(accum0))


def test_sparse_on_empty_table_with_no_indices_is_noop():
    v, a = variables(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32))
    tf_adagrad.ops.sparse_apply_adagrad(
        v, a, 0.1, 1e-7, np.zeros((0, 4), np.float32), tf.zeros([0], tf.int32)
    )
    assert v.shape == (0, 4)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_tf_function_matches_eager(sparse):
    rng = np.random.default_rng(8)
    var0, accum0, _ = random_state(rng, (12, 4), tf.float32)
    grads = [rng.uniform(-1, 1, (5, 4) if sparse else (12, 4)).astype(np.float32) for _ in range(3)]
    indices = tf.constant([11, 0, 3, 0, 11], tf.int32)

    def step(v, a, g):
        if sparse:
            tf_adagrad.ops.sparse_apply_adagrad(v, a, 0.1, 1e-7, g, indices)
        else:
            tf_adagrad.ops.apply_adagrad(v, a, 0.1, 1e-7, g)

    v_eager, a_eager = variables(var0, accum0)
    v_graph, a_graph = variables(var0, accum0)
    graph_step = tf.function(step)
    for g in grads:
        step(v_eager, a_eager, g)
        graph_step(v_graph, a_graph, tf.constant(g))
    np.testing.assert_array_equal(bits(v_graph.numpy()), bits(v_eager.numpy()))
    np.testing.assert_array_equal(bits(a_graph.numpy()), bits(a_eager.numpy()))


def test_tf_function_with_unknown_shapes():
    rng = np.random.default_rng(9)
    var0, accum0, grad = random_state(rng, (6, 2), tf.float32)
    v, a = variables(var0, accum0)

    @tf.function(
        input_signature=[tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([None], tf.int64)]
    )
    def step(g, i):
        tf_adagrad.ops.sparse_apply_adagrad(v, a, 0.1, 1e-7, g, i)

    step(tf.constant(grad[:3]), tf.constant([5, 1, 5], tf.int64))
    want_var, want_accum = sparse_step_exact(
        var0, accum0, 0.1, 1e-7, grad[:3], [5, 1, 5], tf.float32
    )
    np.testing.assert_array_equal(bits(v.numpy()), bits(want_var))
    np.testing.assert_array_equal(bits(a.numpy()), bits(want_accum))


def test_accepts_keras_variables():
    rng = np.random.default_rng(10)
    var0, accum0, grad = random_state(rng, (4, 3), tf.float32)
    v = keras.Variable(var0)
    a = keras.Variable(accum0)
    tf_adagrad.ops.apply_adagrad(v, a, 0.1, 1e-7, grad)
    want_var, want_accum = dense_step_exact(var0, accum0, 0.1, 1e-7, grad, tf.float32)
    np.testing.assert_array_equal(bits(v.numpy()), bits(want_var))
    np.testing.assert_array_equal(bits(a.numpy()), bits(want_accum))
    tf_adagrad.ops.sparse_apply_adagrad(v, a, 0.1, 1e-7, grad[:1], [2])
    want_var, want_accum = sparse_step_exact(
        want_var, want_accum, 0.1, 1e-7, grad[:1], [2], tf.float32
    )
    np.testing.assert_array_equal(bits(v.numpy()), bits(want_var))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_earlier_reads_keep_their_value(sparse):
    """Copy-on-write: a tensor read before the update is not changed by it."""
    var0 = np.arange(12, dtype=np.float32).reshape(4, 3)
    v, a = variables(var0, np.ones((4, 3), np.float32))
    before = v.read_value()
    accum_before = a.value()
    if sparse:
        tf_adagrad.ops.sparse_apply_adagrad(v, a, 1.0, 1e-7, np.ones((2, 3), np.float32), [0, 3])
    else:
        tf_adagrad.ops.apply_adagrad(v, a, 1.0, 1e-7, np.ones((4, 3), np.float32))
    np.testing.assert_array_equal(before.numpy(), var0)
    np.testing.assert_array_equal(accum_before.numpy(), np.ones((4, 3), np.float32))
    assert not np.array_equal(v.numpy(), var0)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16], ids=lambda d: d.name)
def test_16bit_storage_round_trips_every_bit_pattern(dtype):
    """With a zero gradient every stored value must come back unchanged:
    subnormals, infinities, signed zeros (NaNs stay NaN)."""
    patterns = np.arange(2**16, dtype=np.uint16).view(np_dtype(dtype))
    v, a = variables(patterns, np.ones(2**16, np_dtype(dtype)))
    tf_adagrad.ops.apply_adagrad(v, a, 0.5, 1e-7, np.zeros(2**16, np_dtype(dtype)))
    got = v.numpy()
    as_float = patterns.astype(np.float32)
    is_nan = np.isnan(as_float)
    # bfloat16 subnormals are float32 subnormals, and TensorFlow runs CPU
    # kernels with denormals flushed to zero: they may come back as zeros
    # of the same sign. (float16 subnormals are float32 normals.)
    flushable = (as_float != 0) & (np.abs(as_float) < np.finfo(np.float32).tiny)
    exact = ~is_nan & ~flushable
    np.testing.assert_array_equal(bits(got)[exact], bits(patterns)[exact])
    assert np.all(np.isnan(got.astype(np.float32))[is_nan])
    flushed_ok = (bits(got) == bits(patterns)) | (bits(got) == (bits(patterns) & 0x8000))
    assert np.all(flushed_ok[flushable])


@pytest.mark.parametrize(
    "dtype,log10_range,lr",
    [
        (tf.float16, (-9, 5), 1.0),  # results reach half subnormals and zero
        (tf.float16, (-3, 3), 3e4),  # results overflow to inf
        (tf.bfloat16, (-15, 15), 1.0),
        (tf.bfloat16, (-3, 3), 1e38),
    ],
    ids=["half-small", "half-overflow", "bf16-wide", "bf16-overflow"],
)
def test_16bit_rounding_across_the_range(dtype, log10_range, lr):
    rng = np.random.default_rng(11)
    n = 20000
    magnitude = 10.0 ** rng.uniform(*log10_range, n)
    with np.errstate(over="ignore"):  # overflow to inf is part of the test
        grad = (magnitude * rng.choice([-1.0, 1.0], n)).astype(np_dtype(dtype))
    var0 = np.zeros(n, np_dtype(dtype))
    accum0 = np.zeros(n, np_dtype(dtype))
    v, a = variables(var0, accum0)
    tf_adagrad.ops.apply_adagrad(v, a, lr, 1.0, grad)
    with np.errstate(over="ignore", invalid="ignore"):
        want_var, want_accum = dense_step_exact(var0, accum0, lr, 1.0, grad, dtype)
    np.testing.assert_array_equal(bits(a.numpy()), bits(want_accum))
    np.testing.assert_array_equal(bits(v.numpy()), bits(want_var))


def test_ops_in_tf_function_raise_no_autograph_warning(caplog):
    v, a = tf.Variable([1.0, 2.0]), tf.Variable([0.1, 0.1])

    @tf.function
    def step(grad, indices):
        tf_adagrad.ops.apply_adagrad(v, a, 0.1, 1e-7, grad)
        tf_adagrad.ops.sparse_apply_adagrad(v, a, 0.1, 1e-7, grad[:1], indices)

    with caplog.at_level("WARNING", logger="tensorflow"):
        step(tf.constant([1.0, 1.0]), tf.constant([1]))
    assert not [r for r in caplog.records if "AutoGraph" in r.getMessage()]
    assert "dense Adagrad step" in tf_adagrad.ops.apply_adagrad.__doc__  # the decorator keeps it
