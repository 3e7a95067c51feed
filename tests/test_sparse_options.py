"""Keras' optimizer options on sparse gradients: tf_adagrad.Adagrad and
RowwiseAdagrad count a `tf.IndexedSlices` gradient as its densified self
(rows of one index summed first) and keep it sparse, so that a step costs
the rows in the batch, not the table."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adagrad
from support.scenario_model import embedding_regressor

TABLE_SHAPE, BIAS_SHAPE = (20, 3), (3,)
LR, EPSILON, INITIAL = 0.3, 1e-7, 0.1
CLIPPINGS = [dict(clipnorm=0.5), dict(global_clipnorm=0.7)]


def sparse_steps(steps, duplicates=True, seed=5, scale=3.0):
    """Per step, as NumPy: (indices, values) for the (20, 3) table, with
    repeated indices unless told otherwise, and a dense bias gradient. The
    scale puts the norms above the clipping thresholds."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        indices = rng.integers(0, 20, 8) if duplicates else rng.permutation(20)[:8]
        out.append((indices, rng.uniform(-scale, scale, (8, 3)), rng.uniform(-scale, scale, 3)))
    return out


def densified(indices, values):
    dense = np.zeros(TABLE_SHAPE)
    np.add.at(dense, indices, values)
    return dense


def clipped_dense_gradients(steps, clipnorm, global_clipnorm):
    """Per step, the table's densified gradient and the bias', clipped as
    Keras clips dense gradients, in float64."""
    for indices, values, bias in steps:
        grads = [densified(indices, values), bias]
        if clipnorm:
            grads = [g * clipnorm / max(np.linalg.norm(g), clipnorm) for g in grads]
        if global_clipnorm:
            norm = np.sqrt(sum(np.sum(g * g) for g in grads))
            grads = [g * global_clipnorm * min(1 / norm, 1 / global_clipnorm) for g in grads]
        yield grads


def numpy_adagrad_with_clipping(start, steps, clipnorm=None, global_clipnorm=None):
    """Keras' Adagrad on clipped_dense_gradients, in float64."""
    variables = [v.astype(np.float64) for v in start]
    # Keras starts the accumulators from float32's 0.1, and keeps the
    # learning rate in a float32 variable.
    accumulators = [np.full_like(v, np.float32(INITIAL)) for v in variables]
    lr = float(np.float32(LR))
    for grads in clipped_dense_gradients(steps, clipnorm, global_clipnorm):
        for v, a, g in zip(variables, accumulators, grads):
            a += g * g
            v -= lr * g / np.sqrt(a + EPSILON)
    return variables


def start_values():
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, TABLE_SHAPE), rng.uniform(-1, 1, BIAS_SHAPE)]


def run(optimizer, steps, dtype, graph=False, dense=False):
    """The variables after `optimizer.apply` of each step's gradients: the
    table's as `tf.IndexedSlices`, or densified when `dense`."""
    variables = [keras.Variable(v, dtype=dtype) for v in start_values()]

    def apply(grads):
        optimizer.apply(grads, variables)

    apply = tf.function(apply) if graph else apply
    for indices, values, bias in steps:
        table_grad = (
            tf.constant(densified(indices, values), dtype)
            if dense
            else tf.IndexedSlices(
                tf.constant(values, dtype),
                tf.constant(indices, tf.int64),
                tf.constant(TABLE_SHAPE, tf.int64),
            )
        )
        apply([table_grad, tf.constant(bias, dtype)])
    return [v.numpy() for v in variables]


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("clipping", CLIPPINGS, ids=lambda c: next(iter(c)))
def test_norm_clipping_sums_repeated_rows_first(clipping, graph):
    steps = sparse_steps(4)
    ours = run(tf_adagrad.Adagrad(learning_rate=LR, **clipping), steps, "float64", graph)
    expected = numpy_adagrad_with_clipping(start_values(), steps, **clipping)
    for actual, wanted in zip(ours, expected):
        # float64 throughout; only the order of the sums differs.
        np.testing.assert_allclose(actual, wanted, rtol=1e-12, atol=1e-14)
    unclipped = numpy_adagrad_with_clipping(start_values(), steps)
    assert not np.allclose(unclipped[0], expected[0], rtol=1e-3), "clipping must be active"


def numpy_rowwise_with_clipping(start, steps, clipnorm=None, global_clipnorm=None):
    """tf_adagrad.RowwiseAdagrad's rule (one accumulator per row, epsilon
    outside the square root, defaults 0.0 and 1e-8) on
    clipped_dense_gradients, in float64; a 1-D variable is one row per
    element."""
    variables = [v.astype(np.float64) for v in start]
    accumulators = [np.zeros(v.shape[:1]) for v in variables]
    lr = float(np.float32(LR))
    for grads in clipped_dense_gradients(steps, clipnorm, global_clipnorm):
        for v, a, g in zip(variables, accumulators, grads):
            rows = g.reshape(g.shape[0], -1)
            a += np.mean(rows**2, axis=1)
            v -= (lr * rows / (np.sqrt(a)[:, None] + 1e-8)).reshape(v.shape)
    return variables


@pytest.mark.parametrize("clipping", CLIPPINGS, ids=lambda c: next(iter(c)))
def test_rowwise_norm_clipping_sums_repeated_rows_first(clipping):
    steps = sparse_steps(4)
    ours = run(tf_adagrad.RowwiseAdagrad(learning_rate=LR, **clipping), steps, "float64", True)
    expected = numpy_rowwise_with_clipping(start_values(), steps, **clipping)
    for actual, wanted in zip(ours, expected):
        # float64 throughout; only the order of the sums differs.
        np.testing.assert_allclose(actual, wanted, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("duplicates", [True, False], ids=["repeated ids", "unique ids"])
@pytest.mark.parametrize("clipping", CLIPPINGS, ids=lambda c: next(iter(c)))
def test_norm_clipping_equals_keras_on_the_densified_gradient(clipping, duplicates):
    steps = sparse_steps(4, duplicates=duplicates)
    ours = run(tf_adagrad.Adagrad(learning_rate=LR, **clipping), steps, "float32", graph=True)
    keras_dense = run(
        keras.optimizers.Adagrad(learning_rate=LR, **clipping),
        steps,
        "float32",
        graph=True,
        dense=True,
    )
    for actual, wanted in zip(ours, keras_dense):
        # The norms add the same squares in another order (the nonzero rows
        # rather than the whole table): a few float32 ulps in the scale.
        np.testing.assert_allclose(actual, wanted, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("clipping", CLIPPINGS, ids=lambda c: next(iter(c)))
def test_fit_with_clipping_and_unique_ids_matches_keras(clipping):
    """Several fit() steps of an Embedding model, each batch's ids distinct,
    where Keras' own sparse clipping is the dense one too."""
    rng = np.random.default_rng(3)
    ids = np.stack([rng.permutation(64)[:16] for _ in range(6)]).reshape(-1, 1)
    labels = rng.uniform(0, 1, (ids.shape[0], 1)).astype("float32")

    def trained(optimizer):
        keras.utils.set_random_seed(1)
        model = embedding_regressor(keras, 64, 1, 4)
        model.compile(optimizer=optimizer, loss="mse")
        model.fit(ids, labels, batch_size=16, epochs=1, shuffle=False, verbose=0)
        return model.get_weights()

    ours = trained(tf_adagrad.Adagrad(learning_rate=0.5, **clipping))
    theirs = trained(keras.optimizers.Adagrad(learning_rate=0.5, **clipping))
    unclipped = trained(tf_adagrad.Adagrad(learning_rate=0.5))
    for actual, wanted in zip(ours, theirs):
        # As above: the norms' sums in another order.
        np.testing.assert_allclose(actual, wanted, rtol=2e-6, atol=1e-7)
    assert not np.allclose(unclipped[0], ours[0], rtol=1e-3), "clipping must be active"


@pytest.mark.parametrize("optimizer_class", [tf_adagrad.Adagrad, tf_adagrad.RowwiseAdagrad])
@pytest.mark.parametrize("clipping", CLIPPINGS, ids=lambda c: next(iter(c)))
def test_clipping_keeps_a_large_table_s_gradient_sparse(optimizer_class, clipping):
    """No tensor of the table's size: the clipped gradient is still
    `tf.IndexedSlices`, and no op in the traced clipping makes a tensor with
    as many elements as the 1M-row table."""
    rows, width = 1_000_000, 32
    optimizer = optimizer_class(**clipping)
    indices = tf.constant([3, 3, 7, 0, 999_999, 3, 5, 7], tf.int64)

    def clip(values, bias):
        return optimizer._clip_gradients(
            [tf.IndexedSlices(values, indices, tf.constant([rows, width], tf.int64)), bias]
        )

    clipped = clip(tf.ones((8, width)), tf.ones(width))
    assert isinstance(clipped[0], tf.IndexedSlices)
    graph = (
        tf.function(clip)
        .get_concrete_function(tf.TensorSpec((8, width)), tf.TensorSpec((width,)))
        .graph
    )
    sizes = [
        output.shape.num_elements() or 0
        for operation in graph.get_operations()
        for output in operation.outputs
    ]
    assert max(sizes) < rows
    # The rows of index 3 count summed: the table's dense-equivalent norm.
    dense = np.zeros((8, width))
    np.add.at(dense, [0, 0, 1, 2, 3, 0, 4, 1], 1.0)
    norm = np.sqrt(np.sum(dense**2) + (width if "global_clipnorm" in clipping else 0))
    threshold = next(iter(clipping.values()))
    np.testing.assert_allclose(clipped[0].values.numpy(), threshold / norm, rtol=1e-6)


def test_global_norm_clipping_under_mirrored_strategy_matches_keras(mirrored_scenario_results):
    """fit() under MirroredStrategy on two logical CPUs
    (tests/support/distributed_training.py): Keras clips each replica's
    gradients before they are summed, and so does tf_adagrad."""
    result = mirrored_scenario_results
    ours, theirs = result["clipped_fit_ours"], result["clipped_fit_keras"]
    assert len(ours) == len(theirs) == 3
    for actual, wanted in zip(ours, theirs):
        # The norms' sums in another order, as above.
        np.testing.assert_allclose(actual, wanted, rtol=2e-6, atol=1e-7)
    unclipped = result["unclipped_fit"]
    assert not np.allclose(unclipped[0], ours[0], rtol=1e-3), "clipping must be active"


def test_weight_decay_and_ema_under_mirrored_strategy(mirrored_scenario_results):
    """fit() under MirroredStrategy on two logical CPUs: the fused weight
    decay runs on each replica's copy as Keras' does; weight_decay_rows=
    "in_batch" gives what it gives on one device; moving averages (Keras'
    own under a strategy) equal Keras'. (Gradient accumulation is
    not here: Keras 3.15's own fails in fit() under MirroredStrategy, a
    merge_call inside its cond, and tf_adagrad keeps Keras' path there.)"""
    result = mirrored_scenario_results
    pairs = [
        ("decayed_fit_ours", "decayed_fit_keras"),
        ("ema_fit_ours", "ema_fit_keras"),
        ("in_batch_fit_mirrored", "in_batch_fit_one_device"),
    ]
    for ours, reference in pairs:
        assert len(result[ours]) == len(result[reference]) == 3
        for actual, wanted in zip(result[ours], result[reference]):
            # Replicas' gradients summed by the strategy, and Grappler's
            # rewrites of Keras' formula in fit(): float32 ulps.
            np.testing.assert_allclose(actual, wanted, rtol=2e-6, atol=1e-7, err_msg=ours)
    # Each option took effect.
    for option in ("decayed_fit_ours", "ema_fit_ours", "in_batch_fit_mirrored"):
        assert not np.allclose(result[option][0], result["unclipped_fit"][0], rtol=1e-4), option
    assert not np.allclose(
        result["in_batch_fit_mirrored"][0], result["decayed_fit_ours"][0], rtol=1e-4
    )
