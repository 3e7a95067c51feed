"""`gradient_accumulation_steps` with sparse gradients: tf_adagrad.Adagrad
and RowwiseAdagrad keep a `tf.IndexedSlices` gradient's rows through the
period instead of a buffer of the table's size, and update with the mean
of the period's gradients as Keras does (tf_adagrad/_gradient_accumulation.py)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_sparse_options import TABLE_SHAPE, densified, sparse_steps, start_values

import tf_adagrad
from support.processes import run_to_completion
from support.scenario_model import embedding_regressor

LR, INITIAL = 0.3, 0.1
CLIPPINGS = [dict(clipnorm=0.5), dict(global_clipnorm=0.7)]
RESUME_SCRIPT = os.path.join(os.path.dirname(__file__), "support", "resume_training.py")


def run(optimizer, steps, dtype="float64", graph=True, start=None, restored=None, jit=False):
    """The variables (from `start`, by default start_values()) after
    `optimizer.apply` of each step's gradients, the table's as
    `tf.IndexedSlices` (test_sparse_options.sparse_steps); `restored`, a
    checkpoint's status, is checked once the optimizer is built."""
    start = start_values() if start is None else start
    variables = [keras.Variable(v, dtype=dtype) for v in start]
    optimizer.build(variables)
    if restored is not None:
        restored.expect_partial()  # the rows checked here, the results below
        # 1 step's rows, those of one index summed.
        assert int(tf.size(optimizer._gradient_rows[0].indices)) == len(np.unique(steps[0][0]))

    def apply(grads):
        optimizer.apply(grads, variables)

    apply = tf.function(apply, jit_compile=jit) if graph else apply
    for indices, values, bias in steps:
        table_grad = tf.IndexedSlices(
            tf.constant(values, dtype),
            tf.constant(indices, tf.int64),
            tf.constant(TABLE_SHAPE, tf.int64),
        )
        apply([table_grad, tf.constant(bias, dtype)])
    return [v.numpy() for v in variables]


def mean_gradients(steps, n, clipnorm=None, global_clipnorm=None):
    """Per update step (every n-th), the mean of the period's densified
    gradients, clipped as Keras clips dense gradients, in float64."""
    period = []
    for indices, values, bias in steps:
        period.append([densified(indices, values), bias])
        if len(period) < n:
            continue
        grads = [sum(g[i] for g in period) / n for i in range(2)]
        period = []
        if clipnorm:
            grads = [g * clipnorm / max(np.linalg.norm(g), clipnorm) for g in grads]
        if global_clipnorm:
            norm = np.sqrt(sum(np.sum(g * g) for g in grads))
            grads = [g * global_clipnorm * min(1 / norm, 1 / global_clipnorm) for g in grads]
        yield grads


def numpy_adagrad(steps, n, epsilon=1e-7, **clipping):
    """Keras 3's Adagrad (epsilon inside the square root) on mean_gradients."""
    variables = start_values()
    # Keras starts the accumulators from float32's 0.1, and keeps the
    # learning rate in a float32 variable.
    accumulators = [np.full_like(v, np.float32(INITIAL)) for v in variables]
    lr = float(np.float32(LR))
    for grads in mean_gradients(steps, n, **clipping):
        for v, a, g in zip(variables, accumulators, grads):
            a += g * g
            v -= lr * g / np.sqrt(a + epsilon)
    return variables


def numpy_rowwise(steps, n, epsilon=1e-8, **clipping):
    """RowwiseAdagrad's rule (one accumulator per row, from 0.0; epsilon
    outside the square root) on mean_gradients; a 1-D variable is one row
    per element."""
    variables = start_values()
    accumulators = [np.zeros(v.shape[:1]) for v in variables]
    lr = float(np.float32(LR))
    for grads in mean_gradients(steps, n, **clipping):
        for v, a, g in zip(variables, accumulators, grads):
            rows = g.reshape(g.shape[0], -1)
            a += np.mean(rows**2, axis=1)
            v -= (lr * rows / (np.sqrt(a)[:, None] + epsilon)).reshape(v.shape)
    return variables


def assert_float64_close(actual, expected):
    for a, e in zip(actual, expected):
        # float64 throughout; the sums run in another order and the rows
        # are divided by n before the kernel sums them, not after: ulps.
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-14)


def fit_weights(optimizer, ids, labels, batch_size):
    keras.utils.set_random_seed(1)
    model = embedding_regressor(keras, 64, 1, 4)
    model.compile(optimizer=optimizer, loss="mse", jit_compile=False)
    model.fit(ids, labels, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    return model.get_weights()


@pytest.mark.parametrize("n", [2, 3])
def test_fit_with_unique_ids_matches_keras(n):
    """Several fit() steps of an Embedding model, each batch's ids distinct
    (ids repeat across the steps of a period): Keras sums the period's
    gradients in a dense buffer, tf_adagrad keeps the rows."""
    rng = np.random.default_rng(3)
    ids = np.stack([rng.permutation(64)[:16] for _ in range(7)]).reshape(-1, 1)
    labels = rng.uniform(0, 1, (ids.shape[0], 1)).astype("float32")
    ours = fit_weights(tf_adagrad.Adagrad(0.5, gradient_accumulation_steps=n), ids, labels, 16)
    theirs = fit_weights(
        keras.optimizers.Adagrad(0.5, gradient_accumulation_steps=n), ids, labels, 16
    )
    plain = fit_weights(tf_adagrad.Adagrad(0.5), ids, labels, 16)
    for actual, wanted in zip(ours, theirs):
        # Inside fit() Grappler turns Keras' g / sqrt(a + eps) into a multiply
        # by rsqrt (an ulp or so; docs/optimizer.md); the sums themselves are
        # Keras' bits (test_optimizer_features.py::test_gradient_accumulation
        # compares with Grappler's rewrites off).
        np.testing.assert_allclose(actual, wanted, rtol=2e-6, atol=1e-7)
    assert not np.allclose(plain[0], ours[0], rtol=1e-3), "accumulation must change the steps"


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_repeated_ids_equal_the_dense_rule_on_the_mean_gradient(n, graph):
    steps = sparse_steps(7)  # repeated ids within and across steps
    ours = run(tf_adagrad.Adagrad(LR, gradient_accumulation_steps=n), steps, graph=graph)
    assert_float64_close(ours, numpy_adagrad(steps, n))


@pytest.mark.parametrize("n", [2, 3])
def test_rowwise_repeated_ids_equal_the_rowwise_rule_on_the_mean_gradient(n):
    steps = sparse_steps(7)
    ours = run(tf_adagrad.RowwiseAdagrad(LR, gradient_accumulation_steps=n), steps)
    assert_float64_close(ours, numpy_rowwise(steps, n))


@pytest.mark.parametrize(
    "optimizer_class, reference",
    [(tf_adagrad.Adagrad, numpy_adagrad), (tf_adagrad.RowwiseAdagrad, numpy_rowwise)],
    ids=["Adagrad", "RowwiseAdagrad"],
)
@pytest.mark.parametrize("clipping", CLIPPINGS, ids=lambda c: next(iter(c)))
def test_clipping_applies_to_the_mean_gradient(optimizer_class, reference, clipping):
    steps = sparse_steps(6)
    optimizer = optimizer_class(LR, gradient_accumulation_steps=3, **clipping)
    ours = run(optimizer, steps)
    assert_float64_close(ours, reference(steps, 3, **clipping))
    unclipped = reference(steps, 3)
    assert not np.allclose(unclipped[0], ours[0], rtol=1e-3), "clipping must be active"


def test_under_xla_the_sum_is_dense_and_equal():
    """XLA cannot change a variable's shape while it runs: the table's rows
    are summed in its dense buffer there, with the same results."""
    steps = sparse_steps(7)
    optimizer = tf_adagrad.Adagrad(LR, gradient_accumulation_steps=3)
    ours = run(optimizer, steps, jit=True)
    # XLA's plain-op update (rsqrt, fused multiply-adds): float64 ulps.
    assert_float64_close(ours, numpy_adagrad(steps, 3))
    table_rows = optimizer._gradient_rows[0]
    assert int(tf.size(table_rows.indices)) == 0
    assert table_rows.dense.shape.rank is None and table_rows.dense.numpy().shape == TABLE_SHAPE


def test_dense_gradients_equal_keras_bit_for_bit():
    """A dense gradient sums in a dense buffer as Keras' (eagerly, where
    Grappler rewrites nothing)."""
    rng = np.random.default_rng(2)
    grads = [[rng.normal(size=s) for s in (TABLE_SHAPE, (3,))] for _ in range(5)]

    def trained(optimizer):
        variables = [keras.Variable(v, dtype="float32") for v in start_values()]
        for g in grads:
            optimizer.apply([tf.constant(x, tf.float32) for x in g], variables)
        return [v.numpy() for v in variables]

    ours = trained(tf_adagrad.Adagrad(LR, gradient_accumulation_steps=3))
    theirs = trained(keras.optimizers.Adagrad(LR, gradient_accumulation_steps=3))
    for a, b in zip(ours, theirs):
        assert a.tobytes() == b.tobytes()


def test_a_large_table_gets_no_table_sized_accumulator():
    rows, width = 1_000_000, 8
    table = keras.Variable(tf.zeros((rows, width)), name="table")
    bias = keras.Variable(tf.zeros(width), name="bias")
    optimizer = tf_adagrad.Adagrad(gradient_accumulation_steps=4)
    optimizer.build([table, bias])

    def sizes():
        keras_variables = [int(np.prod(v.shape)) for v in optimizer.variables]
        rows_state = [int(tf.size(v)) for a in optimizer._gradient_rows for v in a.state().values()]
        return keras_variables, rows_state

    keras_variables, rows_state = sizes()
    # The table's own Adagrad accumulator is the only table-sized variable.
    assert sorted(keras_variables)[-2:] == [width, rows * width]
    assert rows_state == [0] * 6

    @tf.function
    def apply(indices):
        grad = tf.IndexedSlices(tf.ones((5, width)), indices, tf.constant([rows, width], tf.int64))
        optimizer.apply([grad, tf.ones(width)], [table, bias])

    for step in range(3):  # inside the first period
        apply(tf.constant([step, 7, 7, 999_999, 5], tf.int64))
    keras_variables, rows_state = sizes()
    assert sorted(keras_variables)[-2:] == [width, rows * width]
    # Table: each step's 4 distinct rows kept (indices, values; 7 twice a
    # step is summed first); the bias' dense sum.
    assert rows_state == [12, 12 * width, 0, 0, 0, width]
    apply(tf.constant([1, 2, 3, 4, 5], tf.int64))  # the update step
    keras_variables, rows_state = sizes()
    assert rows_state == [0, 0, 0, 0, 0, width]
    assert float(table[7, 0]) < 0 and float(table[6, 0]) == 0


def test_checkpoint_mid_period_restores_the_rows(tmp_path):
    """In process: a tf.train.Checkpoint after 1 of 3 steps restored into a
    fresh optimizer, then 5 more steps, equals 6 steps straight."""
    steps = sparse_steps(6)
    straight = run(tf_adagrad.Adagrad(LR, gradient_accumulation_steps=3), steps)

    optimizer = tf_adagrad.Adagrad(LR, gradient_accumulation_steps=3)
    first = run(optimizer, steps[:1])
    path = tf.train.Checkpoint(optimizer=optimizer).write(str(tmp_path / "ckpt"))
    assert any("gradient_rows" in name for name, _ in tf.train.list_variables(path))

    fresh = tf_adagrad.Adagrad(LR, gradient_accumulation_steps=3)
    restore = tf.train.Checkpoint(optimizer=fresh).read(path)  # deferred to build
    resumed = run(fresh, steps[1:], start=first, restored=restore)
    for a, b in zip(straight, resumed):
        assert a.tobytes() == b.tobytes()


@pytest.mark.slow
def test_resume_mid_period_in_a_fresh_process_is_bit_identical(tmp_path):
    """tests/support/resume_training.py with 3 accumulation steps: stopped
    after 1 step (mid-period), restored in a fresh process and run to step
    7, equals 7 steps straight, weights, accumulators and rows alike."""
    args = ["--accumulation-steps", "3", "--checkpoint-dir"]
    run_to_completion(
        tmp_path, "straight", RESUME_SCRIPT, "--start", "0", "--stop", "7",
        *args, str(tmp_path / "straight"), "--out", str(tmp_path / "straight.npz"),
    )  # fmt: skip
    for start, stop, out in [(0, 1, "first.npz"), (1, 7, "resumed.npz")]:
        run_to_completion(
            tmp_path, out, RESUME_SCRIPT, "--start", str(start), "--stop", str(stop),
            *args, str(tmp_path / "split"), "--out", str(tmp_path / out),
        )  # fmt: skip
    straight, resumed = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
    first = np.load(tmp_path / "first.npz")
    assert sorted(straight.files) == sorted(resumed.files)
    # The sparse model's table kept 1 step's rows at the save.
    assert first["sparse:gradient_rows_0_indices"].size > 0
    assert straight["sparse:gradient_rows_0_indices"].size > 0  # 7 = 2 * 3 + 1
    for name in straight.files:
        assert straight[name].tobytes() == resumed[name].tobytes(), name


def test_keras_file_mid_period_gives_the_same_next_steps(tmp_path):
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 64, (16 * 5, 1))
    labels = rng.uniform(0, 1, (ids.shape[0], 1)).astype("float32")
    keras.utils.set_random_seed(1)
    model = embedding_regressor(keras, 64, 1, 4)
    model.compile(
        optimizer=tf_adagrad.Adagrad(0.5, gradient_accumulation_steps=3),
        loss="mse",
        jit_compile=False,
    )
    model.fit(ids[:16], labels[:16], batch_size=16, shuffle=False, verbose=0)  # 1 of 3
    distinct = len(np.unique(ids[:16]))  # the step's rows, those of one id summed
    assert int(tf.size(model.optimizer._gradient_rows[0].indices)) == distinct
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert int(tf.size(loaded.optimizer._gradient_rows[0].indices)) == distinct
    for m in (model, loaded):
        m.fit(ids[16:], labels[16:], batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(
        model.get_weights() + model.optimizer.variables,
        loaded.get_weights() + loaded.optimizer.variables,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mirrored_strategy_falls_back_to_keras_dense_accumulation():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        variables = [keras.Variable(v, dtype="float64") for v in start_values()]
        optimizer = tf_adagrad.Adagrad(LR, gradient_accumulation_steps=2)
        optimizer.build(variables)
    assert not optimizer._accumulates_rows
    assert any("gradient_accumulator" in v.path for v in optimizer.variables)


def test_keras_argument_validation_is_kept():
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        tf_adagrad.Adagrad(gradient_accumulation_steps=1)
