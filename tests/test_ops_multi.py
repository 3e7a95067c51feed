"""TfAdagrad>MultiApplyDense: equal, bit for bit, to the per-variable op and
to the NumPy reference; every rejection names the list position and leaves
every variable untouched; the optimizer uses it for CPU dense gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adagrad
from support.adagrad_reference import DTYPES, bits, dense_step_exact, np_dtype

MULTI = "TfAdagrad>MultiApplyDense"


def random_state(shapes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    store = np_dtype(dtype)
    var = [rng.standard_normal(s).astype(store) for s in shapes]
    accum = [rng.uniform(0, 2, s).astype(store) for s in shapes]
    grad = [rng.standard_normal(s).astype(store) for s in shapes]
    return var, accum, grad


# Sizes around the 4 KiB shard alignment and the vector widths, empty
# tensors between others, and enough elements that threads split tensors.
SHAPES = [(3, 4), (0,), (1,), (1023,), (0, 5), (4097,), (17, 33), (200_003,), (2,), (64, 64)]


@pytest.mark.parametrize("placement", ["inside_sqrt", "outside_sqrt"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_equals_per_variable_op_and_numpy(dtype, placement):
    var0, accum0, grads = random_state(SHAPES, dtype)
    lr, epsilon = 0.05, 1e-6
    multi_vars = [tf.Variable(v) for v in var0]
    multi_accums = [tf.Variable(a) for a in accum0]
    single_vars = [tf.Variable(v) for v in var0]
    single_accums = [tf.Variable(a) for a in accum0]
    grad_tensors = [tf.constant(g) for g in grads]
    for _ in range(2):
        tf_adagrad.ops.multi_apply_adagrad(
            multi_vars, multi_accums, lr, epsilon, grad_tensors, epsilon_placement=placement
        )
        for v, a, g in zip(single_vars, single_accums, grad_tensors):
            tf_adagrad.ops.apply_adagrad(v, a, lr, epsilon, g, epsilon_placement=placement)
    for i, shape in enumerate(SHAPES):
        want_var, want_accum = var0[i], accum0[i]
        for _ in range(2):
            want_var, want_accum = dense_step_exact(
                want_var, want_accum, lr, epsilon, grads[i], dtype, placement
            )
        for got, single, want in (
            (multi_vars[i], single_vars[i], want_var),
            (multi_accums[i], single_accums[i], want_accum),
        ):
            assert got.shape == shape
            np.testing.assert_array_equal(
                bits(got.numpy()), bits(single.numpy()), err_msg=f"position {i}"
            )
            np.testing.assert_array_equal(bits(got.numpy()), bits(want), err_msg=f"position {i}")


def test_inside_tf_function_and_many_small_variables():
    shapes = [(64, 64)] * 200 + [(5,)] * 37
    var0, accum0, grads = random_state(shapes, tf.float32, seed=1)
    variables = [tf.Variable(v) for v in var0]
    accums = [tf.Variable(a) for a in accum0]
    grad_tensors = [tf.constant(g) for g in grads]
    step = tf.function(
        lambda: tf_adagrad.ops.multi_apply_adagrad(variables, accums, 0.1, 1e-7, grad_tensors)
    )
    step()
    step()
    for i in range(len(shapes)):
        want_var, want_accum = var0[i], accum0[i]
        for _ in range(2):
            want_var, want_accum = dense_step_exact(
                want_var, want_accum, 0.1, 1e-7, grads[i], tf.float32
            )
        np.testing.assert_array_equal(bits(variables[i].numpy()), bits(want_var))
        np.testing.assert_array_equal(bits(accums[i].numpy()), bits(want_accum))


def test_a_reader_keeps_the_old_value():
    """Copy-on-write, as for the per-variable op: a tensor read before the
    update is not changed by it."""
    v, a = tf.Variable(np.ones(10, np.float32)), tf.Variable(np.ones(10, np.float32))
    before = v.read_value()
    tf_adagrad.ops.multi_apply_adagrad([v], [a], 0.1, 1e-7, [tf.ones(10)])
    np.testing.assert_array_equal(before.numpy(), np.ones(10, np.float32))
    assert np.all(v.numpy() < 1)


# Kernel-side validation, through the generated wrapper (no Python checks).
def raw_multi(variables, accums, grads, lr=0.1, epsilon=1e-7, dtype=tf.float32):
    tf_adagrad.ops.load_library().tf_adagrad_multi_apply_dense(
        var=[v.handle for v in variables],
        accum=[a.handle for a in accums],
        lr=tf.constant(lr, dtype),
        epsilon=tf.constant(epsilon, dtype),
        grad=[tf.constant(g, dtype) for g in grads],
    )


def three_pairs(accum_dtype_1=np.float32, accum_shape_1=(4,), var_dtype_2=np.float32):
    var0 = [
        np.full((2, 3), 1.5, np.float32),
        np.full((4,), 2.5, np.float32),
        np.full((5,), 3.5, var_dtype_2),
    ]
    accum0 = [
        np.full((2, 3), 0.5, np.float32),
        np.full(accum_shape_1, 0.25, accum_dtype_1),
        np.full((5,), 0.75, np.float32),
    ]
    return var0, accum0, [tf.Variable(v) for v in var0], [tf.Variable(a) for a in accum0]


GOOD_GRADS = [np.ones((2, 3)), np.ones(4), np.ones(5)]

REJECTIONS = [
    (
        "grad-shape",
        {},
        lambda vs, accs: raw_multi(vs, accs, [np.ones((2, 3)), np.ones(4), np.ones(6)]),
        tf.errors.InvalidArgumentError,
        rf"{MULTI}: expected `grad\[2\]` shape to equal `var\[2\]` shape \[5\], got \[6\]",
    ),
    (
        "accum-shape",
        {"accum_shape_1": (3,)},
        lambda vs, accs: raw_multi(vs, accs, GOOD_GRADS),
        tf.errors.InvalidArgumentError,
        rf"{MULTI}: expected `accum\[1\]` shape to equal `var\[1\]` shape \[4\], got \[3\]",
    ),
    (
        "accum-dtype",
        {"accum_dtype_1": np.float64},
        lambda vs, accs: raw_multi(vs, accs, GOOD_GRADS),
        tf.errors.InvalidArgumentError,
        rf"{MULTI}: expected `accum\[1\]` of dtype float \(the dtype of `grad`\), got double",
    ),
    (
        "var-dtype",
        {"var_dtype_2": np.float64},
        lambda vs, accs: raw_multi(vs, accs, GOOD_GRADS),
        tf.errors.InvalidArgumentError,
        rf"{MULTI}: expected `var\[2\]` of dtype float \(the dtype of `grad`\), got double",
    ),
    (
        "lr-not-scalar",
        {},
        lambda vs, accs: raw_multi(vs, accs, GOOD_GRADS, lr=[0.1, 0.2]),
        tf.errors.InvalidArgumentError,
        rf"{MULTI}: expected `lr` to be a scalar, got shape \[2\]",
    ),
    (
        "epsilon-not-scalar",
        {},
        lambda vs, accs: raw_multi(vs, accs, GOOD_GRADS, epsilon=[[1e-7]]),
        tf.errors.InvalidArgumentError,
        rf"{MULTI}: expected `epsilon` to be a scalar, got shape \[1,1\]",
    ),
    (
        "var-twice",
        {},
        lambda vs, accs: raw_multi(
            [vs[0], vs[1], vs[0]], accs, [np.ones((2, 3)), np.ones(4), np.ones((2, 3))]
        ),
        tf.errors.InvalidArgumentError,
        rf"{MULTI}: expected the 6 variables of `var` and `accum` to be distinct, "
        rf"got the same variable as `var\[0\]` and `var\[2\]`",
    ),
    (
        "var-as-accum",
        {},
        lambda vs, accs: raw_multi(vs, [accs[0], vs[1], accs[2]], GOOD_GRADS),
        tf.errors.InvalidArgumentError,
        rf"{MULTI}: expected the 6 variables of `var` and `accum` to be distinct, "
        rf"got the same variable as `var\[1\]` and `accum\[1\]`",
    ),
]


@pytest.mark.parametrize("case", REJECTIONS, ids=[c[0] for c in REJECTIONS])
def test_rejection_names_the_position_and_writes_nothing(case):
    _, state_args, call, error, message = case
    var0, accum0, variables, accums = three_pairs(**state_args)
    with pytest.raises(error, match=message):
        call(variables, accums)
    for v, want in zip(variables + accums, var0 + accum0):
        np.testing.assert_array_equal(bits(v.numpy()), bits(want))


def test_uninitialized_variable_is_failed_precondition():
    var0, accum0, variables, accums = three_pairs()
    handle = tf.raw_ops.VarHandleOp(
        dtype=tf.float32, shape=[4], shared_name="multi_never_initialized"
    )
    with pytest.raises(
        tf.errors.FailedPreconditionError,
        match=rf"{MULTI}: expected `accum\[1\]` to be an initialized resource variable",
    ):
        tf_adagrad.ops.load_library().tf_adagrad_multi_apply_dense(
            var=[v.handle for v in variables],
            accum=[accums[0].handle, handle, accums[2].handle],
            lr=0.1,
            epsilon=1e-7,
            grad=[tf.ones((2, 3)), tf.ones(4), tf.ones(5)],
        )
    for v, want in zip(variables + [accums[0], accums[2]], var0 + [accum0[0], accum0[2]]):
        np.testing.assert_array_equal(bits(v.numpy()), bits(want))


def test_shape_function_names_the_position():
    _, _, variables, accums = three_pairs()
    grads = [tf.ones((2, 3)), tf.ones((4, 1)), tf.ones(5)]
    with pytest.raises(
        ValueError,
        match=rf"{MULTI}: expected `grad\[1\]` shape to equal `var\[1\]` shape \[4\], got \[4,1\]",
    ):
        tf.function(
            lambda: tf_adagrad.ops.multi_apply_adagrad(variables, accums, 0.1, 1e-7, grads)
        ).get_concrete_function()


def test_python_wrapper_checks_lengths_and_dtypes():
    _, _, variables, accums = three_pairs(var_dtype_2=np.float64)
    with pytest.raises(ValueError, match=r"at least one variable, got an empty list"):
        tf_adagrad.ops.multi_apply_adagrad([], [], 0.1, 1e-7, [])
    with pytest.raises(ValueError, match=r"must have the same length, got 3, 2 and 3"):
        tf_adagrad.ops.multi_apply_adagrad(variables, accums[:2], 0.1, 1e-7, GOOD_GRADS)
    with pytest.raises(
        TypeError, match=r"`variables\[0\]` is float32, `variables\[2\]` is float64"
    ):
        tf_adagrad.ops.multi_apply_adagrad(
            variables, accums, 0.1, 1e-7, [tf.ones((2, 3)), tf.ones(4), tf.ones(5)]
        )
    with pytest.raises(
        TypeError,
        match=r"`grads\[1\]` must have the dtype of `variables\[1\]` \(float32\), got float64",
    ):
        tf_adagrad.ops.multi_apply_adagrad(
            variables[:2], accums[:2], 0.1, 1e-7, [tf.ones((2, 3)), np.ones(4)]
        )


# The optimizer's choice of ops.
def traced_op_types(optimizer, grads, variables, strategy=None):
    step = tf.function(lambda: optimizer.apply(grads, variables))
    if strategy is not None:
        graph = (
            tf.function(lambda: strategy.run(lambda: optimizer.apply(grads, variables)))
            .get_concrete_function()
            .graph
        )
    else:
        graph = step.get_concrete_function().graph
    return sorted(op.type for op in graph.get_operations() if op.type.startswith("TfAdagrad>"))


def mixed_problem():
    variables = [
        tf.Variable(np.ones((3, 2), np.float32)),
        tf.Variable(np.ones(4, np.float64)),
        tf.Variable(np.ones((10, 2), np.float32)),
        tf.Variable(np.ones(5, np.float32)),
    ]
    grads = [
        tf.fill((3, 2), 0.5),
        tf.fill([4], tf.constant(0.25, tf.float64)),
        tf.IndexedSlices(tf.ones((2, 2)), tf.constant([3, 3]), tf.constant([10, 2])),
        tf.fill([5], -1.0),
    ]
    return variables, grads


def test_optimizer_uses_one_multi_op_per_dtype_and_matches_per_variable_ops():
    variables, grads = mixed_problem()
    optimizer = tf_adagrad.Adagrad(learning_rate=0.1)
    optimizer.build(variables)
    initial_accums = [a.numpy() for a in optimizer._accumulators]
    assert traced_op_types(optimizer, grads, variables) == [
        "TfAdagrad>ApplySparse",
        "TfAdagrad>MultiApplyDense",
        "TfAdagrad>MultiApplyDense",
    ]
    tf.function(lambda: optimizer.apply(grads, variables))()

    # The same step through the per-variable ops; Keras keeps the learning
    # rate as a float32 variable, cast to each variable's dtype.
    lr = tf.constant(0.1, tf.float32)
    reference = [tf.Variable(np.ones_like(v.numpy())) for v in variables]
    accums = [tf.Variable(a) for a in initial_accums]
    for v, a, g in zip(reference, accums, grads):
        if isinstance(g, tf.IndexedSlices):
            tf_adagrad.ops.sparse_apply_adagrad(
                v, a, tf.cast(lr, v.dtype), 1e-7, g.values, g.indices
            )
        else:
            tf_adagrad.ops.apply_adagrad(v, a, tf.cast(lr, v.dtype), 1e-7, g)
    for got, want in zip(variables, reference):
        np.testing.assert_array_equal(bits(got.numpy()), bits(want.numpy()))
    for got, want in zip(optimizer._accumulators, accums):
        np.testing.assert_array_equal(bits(got.numpy()), bits(want.numpy()))


def test_optimizer_under_a_strategy_stays_per_variable():
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        variables, grads = mixed_problem()
        variables = [keras.Variable(v.numpy()) for v in variables]
        optimizer = tf_adagrad.Adagrad(learning_rate=0.1)
        optimizer.build(variables)
    assert traced_op_types(optimizer, grads, variables, strategy) == [
        "TfAdagrad>ApplyDense",
        "TfAdagrad>ApplyDense",
        "TfAdagrad>ApplyDense",
        "TfAdagrad>ApplySparse",
    ]
