"""Moving averages (`use_ema`): the op `TfAdagrad>MovingAverageRows` against
NumPy loops of Keras' single steps, and the optimizers' lazy averages
against Keras' Adagrad, a float64 NumPy reference of Keras' rule, a
checkpoint resumed in another process and a `.keras` round trip; the rows of
no batch are never read per step."""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adagrad
from support import resume_training
from support.adagrad_reference import DTYPES, SIXTEEN_BIT, bits, compute_dtype, np_dtype
from support.graph_math import big_table_step_graph, exact_graph_math, is_table_sized, ops_in
from support.processes import run_to_completion
from support.repeated_ids import (
    OPTIMIZERS,
    TABLE_SHAPE,
    repeated_id_steps,
    start_values,
)
from support.scenario_model import embedding_regressor

OP = "TfAdagrad>MovingAverageRows"
MOMENTUM = 0.9
# float32's unit roundoff.
U32 = 2.0**-24


def random_values(shape, dtype, seed=0):
    return np.random.default_rng(seed).uniform(-2, 2, shape).astype(np_dtype(dtype))


def keras_steps(average, weight, momentum, k):
    """k of Keras' steps `a = m * a + (1 - m) * w` in float64 (w fixed)."""
    a = np.asarray(average, np.float64)
    w = np.asarray(weight, np.float64)
    for _ in range(k):
        a = momentum * a + (1 - momentum) * w
    return a


def closed_form_as_kernel(average, weight, momentum, k, dtype):
    """`w + m**k * (a - w)` as the kernel computes it: m in the variable's
    dtype, m**k in float64 (C's pow), the rest in the compute type
    (float32 for 16-bit types), rounded once on store."""
    store, c = np_dtype(dtype), compute_dtype(dtype)
    factor = c(np.power(np.float64(store(momentum)), np.float64(k)))
    a, w = np.asarray(average).astype(c), np.asarray(weight).astype(c)
    return (w + factor * (a - w)).astype(store)


# The rows of a 12-row table, each `step - last_step` steps behind STEP:
# rows 2 and 9 are current (k = 0), row 5 ahead of STEP (k < 0).
STEP = 40
LAST_STEP = np.array([39, 0, 40, 31, 33, 44, 1, 20, 38, 40, 10, 25], np.int64)
INDICES = [3, 0, 3, 11, 3, 7, 0, 2, 5, 9, 6, 6]


def op_inputs(dtype, row_shape=(5,)):
    average = random_values((12, *row_shape), dtype, seed=1)
    weight = random_values((12, *row_shape), dtype, seed=2)
    return average, weight


def run_op(average, weight, indices, index_dtype, momentum=MOMENTUM, step=STEP):
    average_var = tf.Variable(average)
    last_step = tf.Variable(LAST_STEP)
    var = tf.Variable(weight)
    tf_adagrad.ops.moving_average_rows(
        average_var, last_step, var, momentum, step, tf.constant(indices, index_dtype)
    )
    # var is only read.
    np.testing.assert_array_equal(bits(var.numpy()), bits(weight))
    return average_var.numpy(), last_step.numpy()


def check_untouched_and_steps(got, got_steps, average, indices):
    named = sorted(set(indices))
    other = [r for r in range(12) if r not in named]
    np.testing.assert_array_equal(bits(got[other]), bits(average[other]))
    # Rows named with k <= 0 are not changed either, bit for bit.
    current = [r for r in named if STEP - LAST_STEP[r] <= 0]
    assert current == [2, 5, 9]
    np.testing.assert_array_equal(bits(got[current]), bits(average[current]))
    # Every named row's last step is STEP (row 5's went back from 44).
    wanted_steps = LAST_STEP.copy()
    wanted_steps[named] = STEP
    np.testing.assert_array_equal(got_steps, wanted_steps)
    return [r for r in named if STEP - LAST_STEP[r] > 0]


@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64], ids=lambda d: d.name)
@pytest.mark.parametrize("row_shape", [(5,), (2, 3)], ids=["2d", "3d"])
def test_op_float64_equals_k_single_steps(index_dtype, row_shape):
    average, weight = op_inputs(tf.float64, row_shape)
    got, got_steps = run_op(average, weight, INDICES, index_dtype)
    behind = check_untouched_and_steps(got, got_steps, average, INDICES)
    assert behind == [0, 3, 6, 7, 11]
    for r in behind:
        k = STEP - LAST_STEP[r]
        wanted = keras_steps(average[r], weight[r], MOMENTUM, k)
        np.testing.assert_allclose(got[r], wanted, rtol=1e-12, atol=0, err_msg=f"row {r}")
        # And moved: k steps of decay of (a - w) by 0.9 do show.
        assert not np.allclose(got[r], average[r], rtol=1e-3)


@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64], ids=lambda d: d.name)
def test_op_float32_within_four_roundings_of_k_single_steps(index_dtype):
    """float32: m rounded to float32 (momentum takes the variable's dtype,
    as Keras' `cast(not_first, dtype) * ema_momentum` does), then
    `w + f * (a - w)` with f = m**k rounded to float32, a - w, the product
    and the sum each rounded: the error is at most u * (|r| + 3 * |r - w|)
    (u = 2**-24, r the exact result, |f (a - w)| = |r - w|), to first
    order. The float64 loop's own error is ~1e-15 and ignored (bound
    scaled by 1.01)."""
    average, weight = op_inputs(tf.float32, (64,))
    got, got_steps = run_op(average, weight, INDICES, index_dtype)
    behind = check_untouched_and_steps(got, got_steps, average, INDICES)
    m32 = float(np.float32(MOMENTUM))
    for r in behind:
        k = STEP - LAST_STEP[r]
        wanted = keras_steps(average[r], weight[r], m32, k)
        bound = 1.01 * U32 * (np.abs(wanted) + 3 * np.abs(wanted - weight[r].astype(np.float64)))
        error = np.abs(got[r].astype(np.float64) - wanted)
        assert np.all(error <= bound), (r, (error / bound).max())
        # The closed form exactly as the kernel computes it, bit for bit.
        np.testing.assert_array_equal(
            bits(got[r]),
            bits(closed_form_as_kernel(average[r], weight[r], MOMENTUM, k, tf.float32)),
        )
    # 0.9 itself, not its float32 rounding, in 31 steps would differ by
    # more than the bound: the momentum's dtype matters.
    r = 11
    exact_m = keras_steps(average[r], weight[r], MOMENTUM, STEP - LAST_STEP[r])
    assert np.any(np.abs(got[r] - exact_m) > 2 * U32 * np.abs(exact_m))


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=lambda d: d.name)
@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64], ids=lambda d: d.name)
def test_op_16_bit_is_float32_math_rounded_once(dtype, index_dtype):
    average, weight = op_inputs(dtype, (512,))
    got, got_steps = run_op(average, weight, INDICES, index_dtype)
    behind = check_untouched_and_steps(got, got_steps, average, INDICES)
    for r in behind:
        k = STEP - LAST_STEP[r]
        np.testing.assert_array_equal(
            bits(got[r]), bits(closed_form_as_kernel(average[r], weight[r], MOMENTUM, k, dtype))
        )
    # Computed in the 16-bit type (each operation rounded), some elements
    # would differ.
    store = np_dtype(dtype)
    twice = []
    for r in behind:
        factor = store(np.power(np.float64(store(MOMENTUM)), STEP - LAST_STEP[r]))
        a, w = tf.constant(average[r]), tf.constant(weight[r])
        twice.append((w + tf.constant(factor, dtype) * (a - w)).numpy())
    assert not np.array_equal(bits(np.stack(twice)), bits(got[behind]))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_op_in_tf_function_two_calls(dtype):
    """A row named in two calls: the second brings it from the first's step."""
    average, weight = op_inputs(dtype)
    average_var, last_step, var = (
        tf.Variable(average),
        tf.Variable(np.zeros(12, np.int64)),
        tf.Variable(weight),
    )
    call = tf.function(
        lambda step, i: tf_adagrad.ops.moving_average_rows(
            average_var, last_step, var, MOMENTUM, step, i
        )
    )
    call(tf.constant(3, tf.int64), tf.constant([4, 1, 4]))
    call(tf.constant(7, tf.int64), tf.constant([4]))
    wanted = average.copy()
    wanted[1] = closed_form_as_kernel(average[1], weight[1], MOMENTUM, 3, dtype)
    wanted[4] = closed_form_as_kernel(
        closed_form_as_kernel(average[4], weight[4], MOMENTUM, 3, dtype),
        weight[4],
        MOMENTUM,
        4,
        dtype,
    )
    np.testing.assert_array_equal(bits(average_var.numpy()), bits(wanted))
    wanted_steps = np.zeros(12, np.int64)
    wanted_steps[1], wanted_steps[4] = 3, 7
    np.testing.assert_array_equal(last_step.numpy(), wanted_steps)


@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64], ids=lambda d: d.name)
@pytest.mark.parametrize(
    "indices, position, value", [([0, 2, 12, 1], 2, 12), ([3, -1], 1, -1)], ids=["past", "neg"]
)
def test_op_rejects_an_index_out_of_range_and_writes_nothing(indices, position, value, index_dtype):
    average, weight = op_inputs(tf.float32)
    average_var, last_step, var = (
        tf.Variable(average),
        tf.Variable(LAST_STEP),
        tf.Variable(weight),
    )
    message = (
        rf"{OP}: expected every index in \[0, 12\) \(the first dimension of `var`\), "
        rf"got indices\[{position}\] = {value}; nothing was updated"
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        tf_adagrad.ops.moving_average_rows(
            average_var, last_step, var, MOMENTUM, STEP, tf.constant(indices, index_dtype)
        )
    # Rows 0 and 3 (behind, named before the bad index) were not written.
    np.testing.assert_array_equal(bits(average_var.numpy()), bits(average))
    np.testing.assert_array_equal(last_step.numpy(), LAST_STEP)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(momentum=[MOMENTUM, MOMENTUM]),
            r"expected `momentum` to be a scalar, got shape \[2\]",
        ),
        (dict(step=[STEP]), r"expected `step` to be a scalar, got shape \[1\]"),
    ],
    ids=["momentum", "step"],
)
def test_op_rejects_a_non_scalar_momentum_or_step(kwargs, message):
    average, weight = op_inputs(tf.float32)
    average_var, last_step, var = (
        tf.Variable(average),
        tf.Variable(LAST_STEP),
        tf.Variable(weight),
    )
    arguments = {"momentum": MOMENTUM, "step": STEP, "indices": [0, 3], **kwargs}
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"{OP}: {message}"):
        tf_adagrad.ops.moving_average_rows(average_var, last_step, var, **arguments)
    np.testing.assert_array_equal(bits(average_var.numpy()), bits(average))
    np.testing.assert_array_equal(last_step.numpy(), LAST_STEP)


@pytest.mark.parametrize(
    "last_step, message",
    [
        (
            np.zeros(11, np.int64),
            r"expected `last_step` shape to equal `var.shape\[:1\]` shape \[12\], got \[11\]",
        ),
        (
            np.zeros(12, np.int32),
            r"expected `last_step` of dtype int64 \(a step count\), got int32",
        ),
    ],
    ids=["shape", "dtype"],
)
def test_op_rejects_a_wrong_last_step(last_step, message):
    average, weight = op_inputs(tf.float32)
    average_var, var = tf.Variable(average), tf.Variable(weight)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"{OP}: {message}"):
        tf_adagrad.ops.moving_average_rows(
            average_var, tf.Variable(last_step), var, MOMENTUM, STEP, [0, 3]
        )
    np.testing.assert_array_equal(bits(average_var.numpy()), bits(average))


# --- fit() against Keras' Adagrad -----------------------------------------


def fit_weights(optimizer, ids, labels, epochs):
    keras.utils.set_random_seed(1)
    model = embedding_regressor(keras, 64, 2, 4)
    model.compile(optimizer=optimizer, loss="mse", jit_compile=False)
    with exact_graph_math():
        model.fit(ids, labels, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    return {
        re.sub(r"_\d+/", "/", "/".join(w.path.split("/")[-2:])): w.numpy() for w in model.weights
    }


@pytest.mark.parametrize("overwrite", [None, 5], ids=["finalize", "overwrite5"])
def test_fit_with_ema_equals_keras(overwrite):
    """fit() of an Embedding model over 3 epochs of 6 batches, each batch's
    ids distinct (where the sparse update is Keras' dense one bit for bit,
    tests/test_weight_decay.py), ids 0..47 of 64: fit() ends with
    finalize_variable_values, so the weights are the averages.

    Without overwrites the weights train as Keras' do, bit for bit, and the
    Dense layer's averages (dense gradients: Keras' formula) are Keras'
    bits; the table's averages differ by rounding only: the closed form
    rounds ~4 times where Keras' k steps round ~3 k times, errors damped by
    0.9 a step, at most ~3 u |w| / (1 - 0.9) = 30 u |w| ~ 2e-7 |w|. With
    overwrites (after steps 5, 10 and 15 of 18) those differences feed back
    into training, so the bound is atol 1e-6 on weights of order 0.1
    (measured: ~3e-8), 5x the damped rounding bound; the EMA itself
    moves the weights by > 1e-3."""
    rng = np.random.default_rng(11)
    ids = np.stack([rng.permutation(48)[:32].reshape(16, 2) for _ in range(6)]).reshape(-1, 2)
    labels = rng.uniform(-1, 1, (ids.shape[0], 1)).astype("float32")
    ema = dict(use_ema=True, ema_momentum=MOMENTUM, ema_overwrite_frequency=overwrite)
    ours = fit_weights(tf_adagrad.Adagrad(learning_rate=0.5, **ema), ids, labels, 3)
    theirs = fit_weights(keras.optimizers.Adagrad(learning_rate=0.5, **ema), ids, labels, 3)
    plain = fit_weights(tf_adagrad.Adagrad(learning_rate=0.5), ids, labels, 3)
    assert list(ours) == list(theirs) == ["embedding/embeddings", "dense/kernel", "dense/bias"]
    for path in ours:
        np.testing.assert_allclose(ours[path], theirs[path], rtol=0, atol=1e-6, err_msg=path)
        assert np.abs(ours[path] - plain[path]).max() > 1e-3, path
    if overwrite is None:
        for path in ("dense/kernel", "dense/bias"):
            np.testing.assert_array_equal(bits(ours[path]), bits(theirs[path]), err_msg=path)
    # The rows of no batch (48..63) keep their initial values in both.
    np.testing.assert_array_equal(
        bits(ours["embedding/embeddings"][48:]), bits(plain["embedding/embeddings"][48:])
    )


# --- apply() with repeated ids against a float64 reference ----------------


def numpy_keras_rule(steps, name, lr=0.3, momentum=MOMENTUM, overwrite=None):
    """Keras' rule in float64: per step the dense Adagrad update with the
    densified gradient, then every average `m * a + (1 - m) * w` (m = 0 on
    the first step), then the weights overwritten by the averages where
    `step % overwrite == 0`. Returns the weights and averages after each
    step."""
    _, initial, epsilon, rowwise = OPTIMIZERS[name]
    lr = float(np.float32(lr))
    variables = start_values()
    accumulators = [
        np.full(v.shape[:1] if rowwise else v.shape, float(np.float32(initial))) for v in variables
    ]
    averages = [np.zeros_like(v) for v in variables]
    history = []
    for step, (indices, values, bias_grad) in enumerate(steps, 1):
        dense = np.zeros(TABLE_SHAPE)
        np.add.at(dense, indices, values)
        for v, a, g in zip(variables, accumulators, (dense, bias_grad)):
            if rowwise:
                g2 = g.reshape(g.shape[0], -1)
                a += np.mean(g2**2, axis=1)
                v -= (lr * g2 / (np.sqrt(a)[:, None] + epsilon)).reshape(v.shape)
            else:
                a += g * g
                v -= lr * g / np.sqrt(a + epsilon)
        m = 0.0 if step == 1 else momentum
        for v, average in zip(variables, averages):
            average[...] = m * average + (1 - m) * v
        if overwrite and step % overwrite == 0:
            for v, average in zip(variables, averages):
                v[...] = average
        history.append(([v.copy() for v in variables], [a.copy() for a in averages]))
    return history


def applier(optimizer, variables):
    @tf.function
    def apply(values, indices, bias_grad):
        table_grad = tf.IndexedSlices(values, indices, tf.constant(TABLE_SHAPE, tf.int64))
        optimizer.apply([table_grad, bias_grad], variables)

    def step(indices, values, bias_grad):
        apply(
            tf.constant(values, tf.float64),
            tf.constant(indices, tf.int64),
            tf.constant(bias_grad, tf.float64),
        )

    return step


def ema_state(optimizer, variable):
    index = optimizer._get_variable_index(variable)
    return (
        optimizer._model_variables_moving_average[index].numpy(),
        optimizer._ema_last_steps[index].numpy(),
    )


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_apply_with_repeated_ids_finalizes_to_the_float64_rule(name):
    cls = OPTIMIZERS[name][0]
    steps = repeated_id_steps(6)
    optimizer = cls(learning_rate=0.3, use_ema=True, ema_momentum=MOMENTUM)
    variables = [keras.Variable(v, dtype="float64") for v in start_values()]
    optimizer.build(variables)
    step = applier(optimizer, variables)
    for s in steps:
        step(*s)
    weights, averages = numpy_keras_rule(steps, name)[-1]
    # The weights train as the rule says (float64: rounding only).
    for actual, wanted in zip(variables, weights):
        np.testing.assert_allclose(actual.numpy(), wanted, rtol=1e-12, atol=1e-14)
    optimizer.finalize_variable_values(variables)
    for actual, wanted in zip(variables, averages):
        np.testing.assert_allclose(actual.numpy(), wanted, rtol=1e-10, atol=0)
    # The averages moved the weights: a clear difference from the rule's.
    assert not np.allclose(averages[0][:15], weights[0][:15], rtol=1e-3)
    # Every row current now.
    np.testing.assert_array_equal(ema_state(optimizer, variables[0])[1], np.full(20, 6))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_rows_wait_until_they_change(name):
    """After 6 steps, before anything brings the averages up to date: a row
    last named at step t > 1 has its average at step t - 1 (brought there
    just before that step's update, the rule's average of that step), a
    row never named after step 1 (rows 15..19 of no batch included) its
    first step's average, and its last step 1; the bias (dense) is current."""
    cls = OPTIMIZERS[name][0]
    steps = repeated_id_steps(6, seed=8)
    optimizer = cls(learning_rate=0.3, use_ema=True, ema_momentum=MOMENTUM)
    variables = [keras.Variable(v, dtype="float64") for v in start_values()]
    optimizer.build(variables)
    step = applier(optimizer, variables)
    for s in steps:
        step(*s)
    history = numpy_keras_rule(steps, name)
    average, last_step = ema_state(optimizer, variables[0])
    last_named = np.zeros(20, np.int64)
    for t, (indices, _, _) in enumerate(steps, 1):
        last_named[indices] = t
    wanted_steps = np.maximum(last_named - 1, 1)
    np.testing.assert_array_equal(last_step, wanted_steps)
    assert set(wanted_steps.tolist()) > {1}
    for r in range(20):
        wanted = history[wanted_steps[r] - 1][1][0][r]
        np.testing.assert_allclose(average[r], wanted, rtol=1e-10, err_msg=f"row {r}")
    # Rows 15..19: the first step's average is the initial weights, exactly.
    np.testing.assert_array_equal(bits(average[15:]), bits(start_values()[0][15:]))
    bias_average, bias_last = ema_state(optimizer, variables[1])
    np.testing.assert_array_equal(bias_last, np.full(3, 6))
    np.testing.assert_allclose(bias_average, history[-1][1][1], rtol=1e-12)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_overwrite_frequency_writes_every_row_caught_up(name):
    """ema_overwrite_frequency=3: after step 3 (and 6) the weights are the
    averages of every row, rows not in that step's batch, and rows 15..19
    of no batch, included; then training goes on from them as the rule's."""
    cls = OPTIMIZERS[name][0]
    steps = repeated_id_steps(7, seed=12)
    optimizer = cls(
        learning_rate=0.3, use_ema=True, ema_momentum=MOMENTUM, ema_overwrite_frequency=3
    )
    variables = [keras.Variable(v, dtype="float64") for v in start_values()]
    optimizer.build(variables)
    step = applier(optimizer, variables)
    history = numpy_keras_rule(steps, name, overwrite=3)
    plain = numpy_keras_rule(steps, name)
    for t, s in enumerate(steps, 1):
        step(*s)
        weights, averages = history[t - 1]
        table, bias = (v.numpy() for v in variables)
        np.testing.assert_allclose(table, weights[0], rtol=1e-10, err_msg=f"step {t}")
        np.testing.assert_allclose(bias, weights[1], rtol=1e-10, err_msg=f"step {t}")
        if t % 3 == 0:
            # The weights are the averages: bit for bit those the optimizer
            # holds (every row current now), and the rule's.
            average, last_step = ema_state(optimizer, variables[0])
            np.testing.assert_array_equal(bits(table), bits(average))
            np.testing.assert_array_equal(last_step, np.full(20, t))
            np.testing.assert_allclose(table, averages[0], rtol=1e-10)
            not_in_batch = sorted(set(range(20)) - set(s[0].tolist()))
            assert {15, 19} < set(not_in_batch) and len(not_in_batch) > 5
            # Those rows did change: a row behind was caught up.
            assert not np.allclose(table[:15], plain[t - 1][0][0][:15], rtol=1e-3)
    # The last step (7) is no overwrite step.
    assert not np.allclose(variables[0].numpy(), history[-1][1][0], rtol=1e-3)


# --- no table-sized tensor per step ---------------------------------------


def is_first_step_cond(op, iterations):
    """An If (in the step's own graph) whose predicate is `iterations != 0`
    (Keras' first-step test): a NotEqual of a read of the captured handle
    `iterations` and a constant 0."""
    if op.type not in ("If", "StatelessIf"):
        return False
    predicate = op.inputs[0].op
    if predicate.type != "NotEqual":
        return False
    read, zero = (t.op for t in predicate.inputs)
    while zero.type in ("Cast", "Identity"):
        zero = zero.inputs[0].op
    return (
        zero.type == "Const"
        and tf.make_ndarray(zero.get_attr("value")) == 0
        and read.type == "ReadVariableOp"
        and read.inputs[0] is iterations
    )


def table_sized_outside_first_step(graph, found, optimizer, path=""):
    """Each table-sized (or unknown-sized) output of an op of `graph` and of
    the functions its ops call, except inside the else branch of a
    first-step cond; and the number of such branches skipped."""
    internal = {id(e): i for e, i in graph.captures}
    iterations = internal.get(id(optimizer.iterations.value.handle))
    skipped = 0
    for op in graph.get_operations():
        found.extend(
            f"{path}{op.type} {op.name}: {t.shape}" for t in op.outputs if is_table_sized(t)
        )
        first = iterations is not None and is_first_step_cond(op, iterations)
        for attr in ("then_branch", "else_branch", "body", "cond", "f"):
            try:
                function_name = op.get_attr(attr).name
            except (ValueError, AttributeError):
                continue
            if first and attr == "else_branch":
                skipped += 1
                continue
            skipped += table_sized_outside_first_step(
                graph._get_function(function_name).graph,
                found,
                optimizer,
                f"{path}{function_name}/",
            )
    return skipped


@pytest.mark.parametrize("cls", [tf_adagrad.Adagrad, tf_adagrad.RowwiseAdagrad])
def test_a_step_makes_no_table_sized_tensor_outside_the_first_step(cls):
    """In the graph of one `apply` with a (200_000, 8) table's IndexedSlices,
    the only table-sized tensors are in the branch that runs on the first
    step only (Keras' whole-table first average, m = 0); that branch is
    there, and does hold them (the search can see into it)."""
    optimizer = cls(use_ema=True, ema_momentum=MOMENTUM)
    graph = big_table_step_graph(optimizer)
    found = []
    assert table_sized_outside_first_step(graph, found, optimizer) == 1
    assert found == []
    assert any(op.type == OP for op in ops_in(graph))
    everywhere = [op.name for op in ops_in(graph) for t in op.outputs if is_table_sized(t)]
    assert everywhere


def test_keras_ema_makes_table_sized_tensors_every_step():
    """The check above can fail: Keras' Adagrad averages the whole table
    every step, outside any first-step branch."""
    optimizer = keras.optimizers.Adagrad(use_ema=True, ema_momentum=MOMENTUM)
    found = []
    assert table_sized_outside_first_step(big_table_step_graph(optimizer), found, optimizer) == 0
    assert any(entry.startswith("Mul") for entry in found), found


# --- checkpoints and .keras files -----------------------------------------

RESUME = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support", "resume_training.py")


def resume_leg(tmp_path, name, start, stop, checkpoint_dir):
    out = tmp_path / f"{name}.npz"
    run_to_completion(
        tmp_path,
        name,
        RESUME,
        "--start",
        str(start),
        "--stop",
        str(stop),
        "--checkpoint-dir",
        str(checkpoint_dir),
        "--out",
        str(out),
        "--ema-momentum",
        str(MOMENTUM),
    )
    return dict(np.load(out))


def closed_form_bound(wanted, weight):
    """The float32 caught-up average's error bound, as in
    test_op_float32_within_four_roundings_of_k_single_steps."""
    return 1.01 * U32 * (np.abs(wanted) + 3 * np.abs(wanted - weight)) + 1e-12


@pytest.mark.slow
def test_checkpoint_mid_training_resumes_in_another_process(tmp_path):
    """tests/support/resume_training.py with use_ema (m = 0.9), 6 steps of
    an Embedding (2000 rows, zipf ids: repeats, most rows in no batch) and
    a Dense model: uninterrupted, and split at step 3 by a
    tf.train.Checkpoint into two processes.

    The checkpoint at step 3 holds every average brought up to date: the
    averages that this process's own 3 steps left lazy, caught up in
    float64 NumPy (`w + m**k (a - w)`), within the closed form's float32
    bound. The weights train alike (bit for bit); the averages are caught
    up at step 3 in the split run only, so the finalized weights differ by
    rounding: each of two closed forms (k1, then k2 steps) against one (k1 +
    k2) errs by at most 4 u max(|a|, |w|), and later ones only damp it:
    atol 16 u max|w| on the table (measured: a few ulps)."""
    whole = resume_leg(tmp_path, "whole", 0, 6, tmp_path / "whole")
    first = resume_leg(tmp_path, "first", 0, 3, tmp_path / "split")
    second = resume_leg(tmp_path, "second", 3, 6, tmp_path / "split")

    # This process's 3 steps, left lazy (the same seeds, batches and model).
    model = resume_training.build("sparse")
    optimizer = resume_training.make_optimizer(ema_momentum=MOMENTUM)
    optimizer.build(model.trainable_variables)
    resume_training.train_steps("sparse", model, optimizer, 0, 3)
    table = model.trainable_variables[0]
    assert table.shape == (resume_training.NUM_ROWS, 16)
    average, last_step = (v.numpy() for v in _ema_of(optimizer, table))
    assert last_step.min() == 1 and last_step.max() == 2  # lazy rows
    # The child's first model is "embedding"; this process's may count up.
    child_path = re.sub(r"_\d+/", "/", table.path)
    np.testing.assert_array_equal(bits(table.numpy()), bits(first[f"sparse:{child_path}"]))
    w = table.numpy().astype(np.float64)
    k = (3 - last_step)[:, None].astype(np.float64)
    wanted = w + MOMENTUM**k * (average.astype(np.float64) - w)
    # The checkpoint of step 3 (the directory's latest is step 6's).
    reader = tf.train.load_checkpoint(str(tmp_path / "split" / "sparse" / "ckpt-3"))

    def saved(variable):
        # The checkpoint's key of one of this (identical) optimizer's variables.
        (i,) = [i for i, v in enumerate(optimizer.variables) if v is variable]
        return reader.get_tensor(f"optimizer/_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE")

    average_variable, last_step_variable = _ema_of(optimizer, table)
    saved_average = [saved(average_variable)]
    error = np.abs(saved_average[0] - wanted)
    bound = closed_form_bound(wanted, w)
    assert np.all(error <= bound), (error / bound).max()
    np.testing.assert_array_equal(saved(last_step_variable), np.full(2000, 3))
    # The rows caught up there moved (k = 1 or 2 steps toward w).
    assert np.abs(saved_average[0] - average).max() > 1e-4

    for key in whole:
        if "finalized/" in key or "average" in key:
            continue
        np.testing.assert_array_equal(bits(second[key]), bits(whole[key]), err_msg=key)
    finalized = [key for key in whole if "finalized/" in key]
    assert len(finalized) == 6 + 5  # 3 Dense layers; an Embedding and 2 Dense
    for key in finalized:
        if key.startswith("dense:"):
            np.testing.assert_array_equal(bits(second[key]), bits(whole[key]), err_msg=key)
            continue
        scale = np.abs(whole[key]).max()
        np.testing.assert_allclose(
            second[key], whole[key], rtol=0, atol=16 * U32 * scale, err_msg=key
        )
        raw = whole[key.replace("finalized/", "")]
        assert np.abs(whole[key] - raw).max() > 1e-4, key


def _ema_of(optimizer, variable):
    index = optimizer._get_variable_index(variable)
    return (
        optimizer._model_variables_moving_average[index],
        optimizer._ema_last_steps[index],
    )


def test_keras_file_round_trip_mid_training(tmp_path):
    """An Embedding model trained by `optimizer.apply` for 4 steps (repeated
    ids), saved to .keras (which brings every average up to date, in the
    saved model's optimizer too) and loaded: 4 more steps on each, then
    finalize_variable_values, give the same bits. A run never saved
    catches its rows up later, so it differs by rounding only: the bound of
    test_checkpoint_mid_training_resumes_in_another_process."""
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 48, (8, 16, 2)).astype("int32")
    labels = rng.uniform(-1, 1, (8, 16, 1)).astype("float32")

    def model_and_step(model=None):
        if model is None:
            keras.utils.set_random_seed(1)
            model = embedding_regressor(keras, 64, 2, 4)
            model.compile(
                optimizer=tf_adagrad.Adagrad(
                    learning_rate=0.3, use_ema=True, ema_momentum=MOMENTUM
                ),
                loss="mse",
                jit_compile=False,
            )
            model.optimizer.build(model.trainable_variables)

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                loss = keras.ops.mean((model(x, training=True) - y) ** 2)
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply(grads, model.trainable_variables)

        return model, step

    model, step = model_and_step()
    never_saved, never_saved_step = model_and_step()
    for i in range(4):
        step(ids[i], labels[i])
        never_saved_step(ids[i], labels[i])
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded, loaded_step = model_and_step(keras.models.load_model(path))
    assert type(loaded.optimizer) is tf_adagrad.Adagrad
    assert loaded.optimizer.use_ema and loaded.optimizer.ema_momentum == pytest.approx(MOMENTUM)
    assert int(loaded.optimizer.iterations.numpy()) == 4
    for i in range(4, 8):
        for s in (step, loaded_step, never_saved_step):
            s(ids[i], labels[i])
    results = []
    for m in (model, loaded, never_saved):
        m.optimizer.finalize_variable_values(m.trainable_variables)
        results.append([w.numpy() for w in m.weights])
    assert len(results[0]) == 3
    for a, b in zip(results[1], results[0]):
        np.testing.assert_array_equal(bits(a), bits(b))
    for a, b in zip(results[2], results[0]):
        np.testing.assert_allclose(a, b, rtol=0, atol=16 * U32 * np.abs(b).max())
    # The finalized weights are averages: a run without EMA ends elsewhere.
    keras.utils.set_random_seed(1)
    plain = embedding_regressor(keras, 64, 2, 4)
    plain.compile(optimizer=tf_adagrad.Adagrad(learning_rate=0.3), loss="mse", jit_compile=False)
    _, plain_step = model_and_step(plain)
    for i in range(8):
        plain_step(ids[i], labels[i])
    assert np.abs(plain.weights[0].numpy() - results[0][0]).max() > 1e-3
