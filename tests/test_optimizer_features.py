"""What tf_adagrad.Adagrad inherits from the Keras base class — learning-rate
schedules, weight decay, clipping, EMA, loss scaling, gradient accumulation —
gives the same numbers as keras.optimizers.Adagrad."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adagrad
from support.adagrad_reference import bits
from support.keras_reference import (
    DensifyingKerasAdagrad,
    apply_steps,
    exact_graph_math,
    make_variables,
)

TABLE_SHAPE, BIAS_SHAPE = (20, 3), (3,)


def mixed_steps(steps, seed=5, scale=1.0, duplicates=True):
    """Per step: an IndexedSlices gradient for a (20, 3) table (duplicate
    indices unless told otherwise) and a dense one for a (3,) bias."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        indices = rng.integers(0, 20, 8) if duplicates else rng.permutation(20)[:8]
        table_grad = tf.IndexedSlices(
            tf.constant(rng.uniform(-scale, scale, (8, 3))),
            tf.constant(indices, tf.int64),
            tf.constant(TABLE_SHAPE, tf.int64),
        )
        out.append([table_grad, tf.constant(rng.uniform(-scale, scale, BIAS_SHAPE))])
    return out


def compare_with_keras(steps, graph=False, **kwargs):
    """Runs both optimizers from the same start, both eagerly or both in a
    tf.function; asserts every variable, model and optimizer alike, is
    bit-identical; returns the optimizers and their model variables.

    In graphs, Grappler's arithmetic rewrites are off for both (see
    exact_graph_math); they would move last bits of Keras' own formula."""
    ours_vars = make_variables([TABLE_SHAPE, BIAS_SHAPE])
    theirs_vars = make_variables([TABLE_SHAPE, BIAS_SHAPE])
    ours = tf_adagrad.Adagrad(**kwargs)
    theirs = DensifyingKerasAdagrad(**kwargs)
    with exact_graph_math():
        apply_steps(ours, ours_vars, steps, graph=graph)
        apply_steps(theirs, theirs_vars, steps, graph=graph)
    for a, b in zip(ours_vars + list(ours.variables), theirs_vars + list(theirs.variables)):
        np.testing.assert_array_equal(bits(a.numpy()), bits(b.numpy()), err_msg=a.path)
    return ours, theirs, ours_vars, theirs_vars


def test_learning_rate_schedule():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.5, decay_steps=2, decay_rate=0.5)
    compare_with_keras(mixed_steps(6), learning_rate=schedule)


def test_learning_rate_schedule_in_tf_function():
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2, 4], [0.5, 0.2, 0.05])
    compare_with_keras(mixed_steps(6), graph=True, learning_rate=schedule)


def test_learning_rate_callable():
    calls = []

    def learning_rate():
        calls.append(None)
        return 0.4 / (1 + len(calls))

    ours_vars = make_variables([TABLE_SHAPE, BIAS_SHAPE])
    theirs_vars = make_variables([TABLE_SHAPE, BIAS_SHAPE])
    steps = mixed_steps(4)
    ours = tf_adagrad.Adagrad(learning_rate=learning_rate)
    apply_steps(ours, ours_vars, steps)
    ours_calls = len(calls)
    calls.clear()
    apply_steps(DensifyingKerasAdagrad(learning_rate=learning_rate), theirs_vars, steps)
    assert ours_calls == len(calls) > 0
    for a, b in zip(ours_vars, theirs_vars):
        np.testing.assert_array_equal(bits(a.numpy()), bits(b.numpy()))


def test_weight_decay_with_exclusions():
    steps = mixed_steps(4)
    ours_vars = make_variables([TABLE_SHAPE, BIAS_SHAPE])
    theirs_vars = make_variables([TABLE_SHAPE, BIAS_SHAPE])
    ours = tf_adagrad.Adagrad(learning_rate=0.3, weight_decay=0.05)
    theirs = DensifyingKerasAdagrad(learning_rate=0.3, weight_decay=0.05)
    ours.exclude_from_weight_decay(var_names=["v1"])  # the bias
    theirs.exclude_from_weight_decay(var_names=["v1"])
    apply_steps(ours, ours_vars, steps)
    apply_steps(theirs, theirs_vars, steps)
    # Run eagerly, Keras computes `(v * wd) * lr`; tf_adagrad computes
    # `v * (wd * lr)`, the order TensorFlow's graph optimizer gives Keras'
    # expression in fit() (tests/test_weight_decay.py checks that bit for
    # bit). The decay term may differ in its last bit each step: 4 steps of
    # float32 stay within a few ulps of the weights.
    for a, b in zip(ours_vars, theirs_vars):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    # The exclusion took effect: the bias never decayed, bit for bit.
    undecayed_keras = make_variables([TABLE_SHAPE, BIAS_SHAPE])
    no_decay = DensifyingKerasAdagrad(learning_rate=0.3)
    apply_steps(no_decay, undecayed_keras, steps)
    np.testing.assert_array_equal(bits(ours_vars[1].numpy()), bits(undecayed_keras[1].numpy()))
    # And without it the bias ends elsewhere.
    undecayed = make_variables([TABLE_SHAPE, BIAS_SHAPE])
    apply_steps(tf_adagrad.Adagrad(learning_rate=0.3, weight_decay=0.05), undecayed, steps)
    assert not np.array_equal(undecayed[1].numpy(), ours_vars[1].numpy())


def test_clipvalue():
    # Keras clips a sparse gradient's values as given, rows of one index
    # apart; so does tf_adagrad.
    steps = mixed_steps(4, scale=3.0)
    compare_with_keras(steps, learning_rate=0.3, clipvalue=0.2)
    unclipped = make_variables([TABLE_SHAPE, BIAS_SHAPE])
    apply_steps(tf_adagrad.Adagrad(learning_rate=0.3), unclipped, steps)
    clipped = make_variables([TABLE_SHAPE, BIAS_SHAPE])
    apply_steps(tf_adagrad.Adagrad(learning_rate=0.3, clipvalue=0.2), clipped, steps)
    assert not np.array_equal(unclipped[1].numpy(), clipped[1].numpy())


def max_ulps(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return int(np.max(np.abs(bits(a).astype(np.int64) - bits(b).astype(np.int64))))


def test_ema_with_overwrite_frequency_and_finalize():
    """The bias (a dense gradient) takes Keras' own average, bit for bit;
    the table's rows are averaged lazily, in closed form
    (`w + m**k * (average - w)` for k steps of `m * average + (1 - m) * w`,
    tests/test_moving_average.py): a few float32 roundings apart, however
    many steps wait (at most 7 here)."""
    steps = mixed_steps(7)
    kwargs = dict(learning_rate=0.3, use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=3)
    ours_vars = make_variables([TABLE_SHAPE, BIAS_SHAPE])
    theirs_vars = make_variables([TABLE_SHAPE, BIAS_SHAPE])
    ours, theirs = tf_adagrad.Adagrad(**kwargs), DensifyingKerasAdagrad(**kwargs)
    with exact_graph_math():
        apply_steps(ours, ours_vars, steps)
        apply_steps(theirs, theirs_vars, steps)
    ours.finalize_variable_values(ours_vars)
    theirs.finalize_variable_values(theirs_vars)
    np.testing.assert_array_equal(bits(ours_vars[1].numpy()), bits(theirs_vars[1].numpy()))
    assert max_ulps(ours_vars[0].numpy(), theirs_vars[0].numpy()) <= 8
    plain = make_variables([TABLE_SHAPE, BIAS_SHAPE])
    apply_steps(tf_adagrad.Adagrad(learning_rate=0.3), plain, steps)
    assert not np.allclose(plain[0].numpy(), ours_vars[0].numpy(), rtol=1e-3)


def test_ema_finalize_writes_the_average():
    ours_vars = make_variables([TABLE_SHAPE, BIAS_SHAPE])
    ours = tf_adagrad.Adagrad(learning_rate=0.3, use_ema=True, ema_momentum=0.5)
    apply_steps(ours, ours_vars, mixed_steps(5))
    weights = [v.numpy() for v in ours_vars]
    ours.finalize_variable_values(ours_vars)
    # The averages, every row brought up to date, are the weights now.
    averages = [v.numpy() for v in ours._model_variables_moving_average]
    for average, var, before in zip(averages, ours_vars, weights):
        np.testing.assert_array_equal(var.numpy(), average)
        assert not np.array_equal(before, average)


def test_loss_scale_factor():
    # Gradients arrive scaled by the factor; the optimizer divides it out.
    steps = [[b * 128.0] for _, b in mixed_steps(4)]
    ours_vars, theirs_vars = make_variables([BIAS_SHAPE]), make_variables([BIAS_SHAPE])
    apply_steps(tf_adagrad.Adagrad(learning_rate=0.3, loss_scale_factor=128.0), ours_vars, steps)
    apply_steps(
        keras.optimizers.Adagrad(learning_rate=0.3, loss_scale_factor=128.0), theirs_vars, steps
    )
    np.testing.assert_array_equal(bits(ours_vars[0].numpy()), bits(theirs_vars[0].numpy()))
    unscaled = make_variables([BIAS_SHAPE])
    apply_steps(
        tf_adagrad.Adagrad(learning_rate=0.3), unscaled, [[b / 128.0 for b in s] for s in steps]
    )
    np.testing.assert_array_equal(bits(ours_vars[0].numpy()), bits(unscaled[0].numpy()))


def test_loss_scale_factor_with_indexed_slices_fails_in_keras_base_class():
    """Keras' base class divides each gradient by `loss_scale_factor` with
    `/`, which tf.IndexedSlices does not support: Keras' own optimizers fail.
    tf_adagrad's divide the slices' values (tests/test_loss_scaling.py)."""
    ((table_grad, _),) = mixed_steps(1)
    optimizer = keras.optimizers.Adagrad(loss_scale_factor=128.0)
    with pytest.raises(TypeError, match="unsupported operand type"):
        optimizer.apply([table_grad], make_variables([TABLE_SHAPE]))


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_gradient_accumulation(graph):
    """Keras sums the period's gradients in table-sized buffers; tf_adagrad
    keeps the table's rows (tests/test_gradient_accumulation.py): the
    weights, the Adagrad accumulators and the pending sum are the same
    bits."""
    ours_vars = make_variables([TABLE_SHAPE, BIAS_SHAPE])
    theirs_vars = make_variables([TABLE_SHAPE, BIAS_SHAPE])
    kwargs = dict(learning_rate=0.3, gradient_accumulation_steps=3)
    ours, theirs = tf_adagrad.Adagrad(**kwargs), DensifyingKerasAdagrad(**kwargs)
    with exact_graph_math():
        apply_steps(ours, ours_vars, mixed_steps(7), graph=graph)
        apply_steps(theirs, theirs_vars, mixed_steps(7), graph=graph)
    pairs = list(zip(ours_vars, theirs_vars)) + list(zip(ours._accumulators, theirs._accumulators))
    # The seventh gradient waits: the table's as rows, the bias' as a sum.
    table_rows = ours._accumulated_gradients[0]
    pending_table = tf.math.unsorted_segment_sum(
        table_rows.values, table_rows.indices, TABLE_SHAPE[0]
    )
    pairs += [
        (pending_table, theirs._accumulated_gradients[0]),
        (ours._accumulated_gradients[1].dense, theirs._accumulated_gradients[1]),
    ]
    for a, b in pairs:
        np.testing.assert_array_equal(bits(a.numpy()), bits(b.numpy()))
    assert int(ours.iterations.numpy()) == int(theirs.iterations.numpy())
    # Keras counts applied updates: after steps 3 and 6.
    assert int(theirs.iterations.numpy()) == 2
    assert np.any(ours._accumulated_gradients[1].dense.numpy() != 0)


def poisonable_train_step(model, optimizer):
    """A loss-scaled step whose first gradient is multiplied by `poison`."""

    @tf.function
    def train_step(x, y, poison):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.cast(model(x), tf.float32) - y))
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        grads = [grads[0] * poison] + grads[1:]
        optimizer.apply(grads, model.trainable_variables)

    return train_step


def test_loss_scale_optimizer_under_mixed_float16():
    """LossScaleOptimizer around each optimizer trains a mixed_float16 model
    the same way, including a step whose gradients overflow: that step is
    skipped (no variable moves) and the loss scale is halved."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (6, 16, 4)).astype(np.float32)
    y = rng.uniform(-1, 1, (6, 16, 1)).astype(np.float32)
    inf_step = 3
    results = []
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        for inner in (tf_adagrad.Adagrad, keras.optimizers.Adagrad):
            keras.utils.set_random_seed(1)
            model = keras.Sequential(
                [keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
            )
            optimizer = keras.optimizers.LossScaleOptimizer(
                inner(learning_rate=0.1), initial_scale=2.0**10
            )

            train_step = poisonable_train_step(model, optimizer)
            scales, skipped = [], None
            for step in range(len(x)):
                before = [v.numpy() for v in model.trainable_variables]
                poison = np.float32(np.inf) if step == inf_step else np.float32(1.0)
                train_step(x[step], y[step], tf.constant(poison))
                scales.append(float(optimizer.dynamic_scale.numpy()))
                if step == inf_step:
                    skipped = all(
                        np.array_equal(b, v.numpy())
                        for b, v in zip(before, model.trainable_variables)
                    )
            assert model.trainable_variables[0].dtype == "float32"
            results.append(([v.numpy() for v in model.trainable_variables], scales, skipped))
    finally:
        keras.config.set_dtype_policy(previous_policy)
    (ours, ours_scales, ours_skipped), (theirs, theirs_scales, theirs_skipped) = results
    assert ours_skipped and theirs_skipped
    assert ours_scales[inf_step] == ours_scales[inf_step - 1] / 2
    assert ours_scales == theirs_scales
    # Same math, but Keras' model here runs in a graph, where Grappler
    # rewrites its x / sqrt(y) as x * rsqrt(y): equal to a few float32 ulps.
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        assert np.all(np.isfinite(a))
