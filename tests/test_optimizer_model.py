"""tf_adagrad.Adagrad in real training: fit() with an Embedding table, XLA,
the sparse path's cost, .keras files and checkpoints shared with Keras."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adagrad
import tf_adagrad._xla_fallback
import tf_adagrad.optimizer
from support.adagrad_reference import bits, dense_step_float64, sparse_step_float64
from support.click_model import click_data as shared_click_data
from support.click_model import click_model
from support.graph_math import ops_in
from support.keras_reference import DensifyingKerasAdagrad, exact_graph_math, make_variables

NUM_ROWS = 500


def embedding_model(seed=7):
    keras.utils.set_random_seed(seed)
    return click_model(NUM_ROWS)


def click_data(num_examples=512, seed=0):
    return shared_click_data(NUM_ROWS, num_examples, seed)


def fit(optimizer, epochs=2, jit_compile=False, data=None):
    model = embedding_model()
    model.compile(optimizer=optimizer, loss="binary_crossentropy", jit_compile=jit_compile)
    ids, labels = data or click_data()
    history = model.fit(ids, labels, batch_size=32, epochs=epochs, shuffle=False, verbose=0)
    return model, history.history["loss"]


class CallCounter:
    """Counts the calls (at trace time) of a function it replaces."""

    def __init__(self, monkeypatch, owner, name):
        self.calls = 0
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def test_fit_is_bit_identical_to_keras_on_the_densified_gradient(monkeypatch):
    fused_sparse = CallCounter(monkeypatch, tf_adagrad.ops, "sparse_apply_adagrad")
    with exact_graph_math():
        ours, ours_loss = fit(tf_adagrad.Adagrad(learning_rate=0.1))
        theirs, theirs_loss = fit(DensifyingKerasAdagrad(learning_rate=0.1))
    # fit() gave the Embedding's gradient as IndexedSlices to the fused op.
    assert fused_sparse.calls >= 1
    assert ours_loss == theirs_loss
    for a, b in zip(
        ours.weights + ours.optimizer.variables, theirs.weights + theirs.optimizer.variables
    ):
        np.testing.assert_array_equal(bits(a.numpy()), bits(b.numpy()), err_msg=a.path)
    # Learning happened.
    assert ours_loss[-1] < ours_loss[0]


def test_fit_loss_matches_keras_with_default_graph_rewrites():
    """With Grappler's rewrites on (the default), Keras' own Adagrad moves by
    float32 rounding only; the loss trajectories agree closely."""
    _, ours_loss = fit(tf_adagrad.Adagrad(learning_rate=0.1))
    _, theirs_loss = fit(DensifyingKerasAdagrad(learning_rate=0.1))
    np.testing.assert_allclose(ours_loss, theirs_loss, rtol=1e-5)


def test_fit_with_jit_compile_uses_plain_ops_and_matches(monkeypatch):
    fused_sparse = CallCounter(monkeypatch, tf_adagrad.ops, "sparse_apply_adagrad")
    fused_dense = CallCounter(monkeypatch, tf_adagrad.ops, "apply_adagrad")
    xla_sparse = CallCounter(monkeypatch, tf_adagrad._xla_fallback, "sparse_update")
    xla_dense = CallCounter(monkeypatch, tf_adagrad._xla_fallback, "dense_update")
    xla_model, xla_loss = fit(tf_adagrad.Adagrad(learning_rate=0.1), jit_compile=True)
    assert (fused_sparse.calls, fused_dense.calls) == (0, 0)
    assert xla_sparse.calls >= 1 and xla_dense.calls >= 1
    model, loss = fit(tf_adagrad.Adagrad(learning_rate=0.1))
    assert fused_sparse.calls >= 1
    # XLA compiles the whole step (model included) with its own fusions,
    # FMA contraction and x/sqrt(y) -> x*rsqrt(y): float32 rounding apart.
    np.testing.assert_allclose(xla_loss, loss, rtol=1e-5)
    for a, b in zip(xla_model.weights, model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


def apply_step(optimizer, variables, jit_compile):
    return tf.function(lambda grads: optimizer.apply(grads, variables), jit_compile=jit_compile)


MACHINE_EPSILON = {
    "float16": 2.0**-10,
    "bfloat16": 2.0**-7,
    "float32": 2.0**-23,
    "float64": 2.0**-52,
}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_xla_update_equals_fused_kernels(dtype):
    """The plain-op math used under XLA against the kernels, dense and
    sparse with duplicates: equal up to the ulp of a step (lr * g / sqrt(a))
    that XLA's FMA contraction and rsqrt rewrite may move. 16-bit sums stay
    in float32, as in the kernel."""
    rng = np.random.default_rng(4)
    steps = []
    for _ in range(4):
        indices = tf.constant(rng.integers(0, 10, 12), tf.int64)
        values = tf.constant(rng.uniform(-1, 1, (12, 3)), dtype)
        steps.append(
            [
                tf.IndexedSlices(values, indices, tf.constant([40, 3], tf.int64)),
                tf.constant(rng.uniform(-1, 1, (5,)), dtype),
            ]
        )
    results = []
    for jit_compile in (False, True):
        variables = make_variables([(40, 3), (5,)], dtype)
        optimizer = tf_adagrad.Adagrad(learning_rate=0.3)
        step = apply_step(optimizer, variables, jit_compile)
        for grads in steps:
            step(grads)
        results.append([v.numpy() for v in variables + optimizer.variables[2:]])
    epsilon = MACHINE_EPSILON[dtype]
    for xla, fused in zip(*results):
        np.testing.assert_allclose(
            xla.astype(np.float64),
            fused.astype(np.float64),
            rtol=2 * epsilon,
            atol=2 * epsilon * 0.3,
        )


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_xla_update_puts_epsilon_inside_the_square_root(sparse):
    """A large epsilon and a small accumulator, in float32: the update under
    XLA against NumPy, so that `sqrt(a) + epsilon` (or `sqrt(a + epsilon)`
    computed anywhere else) shows, which the float32 comparison with the
    kernels above cannot resolve when epsilon is tiny."""
    epsilon, initial_accumulator, lr = 0.5, 0.01, 0.3
    rng = np.random.default_rng(9)
    variables = make_variables([(8, 3)])
    optimizer = tf_adagrad.Adagrad(
        learning_rate=lr, initial_accumulator_value=initial_accumulator, epsilon=epsilon
    )
    optimizer.build(variables)
    var = variables[0].numpy().astype(np.float64)
    accum = np.full(var.shape, initial_accumulator)
    step = tf.function(lambda grads: optimizer.apply(grads, variables), jit_compile=True)
    for _ in range(3):
        if sparse:
            indices = np.array([6, 1, 6, 3], np.int64)  # a duplicate
            values = rng.uniform(-0.2, 0.2, (4, 3)).astype(np.float32)
            step(
                [
                    tf.IndexedSlices(
                        tf.constant(values), tf.constant(indices), tf.constant([8, 3], tf.int64)
                    )
                ]
            )
            var, accum = sparse_step_float64(var, accum, lr, epsilon, values, indices)
        else:
            grad = rng.uniform(-0.2, 0.2, (8, 3)).astype(np.float32)
            step([tf.constant(grad)])
            var, accum = dense_step_float64(var, accum, lr, epsilon, grad)
    np.testing.assert_allclose(optimizer.variables[-1].numpy(), accum, rtol=1e-6)
    np.testing.assert_allclose(variables[0].numpy(), var, rtol=1e-5, atol=1e-6)
    assert (
        np.abs(variables[0].numpy() - make_variables([(8, 3)])[0].numpy()).max() > 0.05
    )  # it moved


def test_xla_sparse_update_with_no_rows():
    variables = make_variables([(10, 2)])
    before = variables[0].numpy()
    optimizer = tf_adagrad.Adagrad(learning_rate=0.3)
    empty = tf.IndexedSlices(tf.zeros((0, 2)), tf.zeros((0,), tf.int32), tf.constant([10, 2]))
    tf.function(lambda g: optimizer.apply([g], variables), jit_compile=True)(empty)
    np.testing.assert_array_equal(variables[0].numpy(), before)


TABLE_ROWS = 100_000


def traced_sparse_step(jit_compile):
    """The graph of one optimizer step on a 100k-row table's IndexedSlices."""
    table = keras.Variable(np.zeros((TABLE_ROWS, 16), np.float32))
    optimizer = tf_adagrad.Adagrad()
    optimizer.build([table])

    @tf.function(jit_compile=jit_compile)
    def step(values, indices):
        optimizer.apply([tf.IndexedSlices(values, indices, tf.constant([TABLE_ROWS, 16]))], [table])

    return step.get_concrete_function(
        tf.TensorSpec([256, 16], tf.float32), tf.TensorSpec([256], tf.int32)
    ).graph


@pytest.mark.parametrize("jit_compile", [False, True], ids=["fused", "xla"])
def test_sparse_step_runs_no_full_table_op(jit_compile):
    """No op of the traced step reads, writes or builds a tensor the size of
    the table: only the 256 named rows move."""
    graph = traced_sparse_step(jit_compile)
    op_types = {op.type for op in ops_in(graph)}
    assert ("TfAdagrad>ApplySparse" in op_types) is not jit_compile
    for op in ops_in(graph):
        assert op.type != "ReadVariableOp" or op.outputs[0].shape.num_elements() in (0, 1), op
        for tensor in op.outputs:
            if (
                tensor.dtype != tf.resource
                and tensor.shape.rank is not None
                and tensor.shape.rank > 0
            ):
                assert tensor.shape[0] != TABLE_ROWS, f"{op.type} {op.name} makes {tensor.shape}"


def test_keras_save_load_then_continue_equals_uninterrupted(tmp_path):
    ids, labels = click_data()
    first, second = (ids[:256], labels[:256]), (ids[256:], labels[256:])

    uninterrupted = embedding_model()
    uninterrupted.compile(
        optimizer=tf_adagrad.Adagrad(learning_rate=0.1), loss="binary_crossentropy"
    )
    uninterrupted.fit(*first, batch_size=32, shuffle=False, verbose=0)
    uninterrupted.fit(*second, batch_size=32, shuffle=False, verbose=0)

    model = embedding_model()
    model.compile(optimizer=tf_adagrad.Adagrad(learning_rate=0.1), loss="binary_crossentropy")
    model.fit(*first, batch_size=32, shuffle=False, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is tf_adagrad.Adagrad
    assert int(loaded.optimizer.iterations.numpy()) == 8
    loaded.fit(*second, batch_size=32, shuffle=False, verbose=0)
    for a, b in zip(
        loaded.weights + loaded.optimizer.variables,
        uninterrupted.weights + uninterrupted.optimizer.variables,
    ):
        np.testing.assert_array_equal(bits(a.numpy()), bits(b.numpy()), err_msg=a.path)


@pytest.mark.parametrize(
    "writer, reader",
    [
        (keras.optimizers.Adagrad, tf_adagrad.Adagrad),
        (tf_adagrad.Adagrad, keras.optimizers.Adagrad),
    ],
    ids=["keras-to-tf_adagrad", "tf_adagrad-to-keras"],
)
def test_checkpoint_interop(tmp_path, writer, reader):
    ids, labels = click_data()
    model = embedding_model()
    model.compile(
        optimizer=writer(learning_rate=0.1, initial_accumulator_value=0.2),
        loss="binary_crossentropy",
    )
    model.fit(ids[:256], labels[:256], batch_size=32, shuffle=False, verbose=0)
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(str(tmp_path / "ckpt"))

    restored = embedding_model(seed=123)  # different initial weights
    optimizer = reader(learning_rate=0.1, initial_accumulator_value=0.2)
    optimizer.build(restored.trainable_variables)
    tf.train.Checkpoint(model=restored, optimizer=optimizer).restore(path).assert_consumed()
    assert int(optimizer.iterations.numpy()) == 8
    for a, b in zip(
        restored.weights + optimizer.variables, model.weights + model.optimizer.variables
    ):
        np.testing.assert_array_equal(bits(a.numpy()), bits(b.numpy()), err_msg=a.path)
    accumulator = optimizer.variables[2].numpy()
    assert np.any(accumulator > 0.2) and np.any(accumulator == np.float32(0.2))  # some rows trained


def out_of_range_step(jit_compile):
    variables = make_variables([(10, 2)])
    optimizer = tf_adagrad.Adagrad(learning_rate=1.0)
    optimizer.build(variables)
    before = [v.numpy() for v in variables + optimizer.variables]
    grad = tf.IndexedSlices(tf.ones((3, 2)), tf.constant([1, 10, 4]), tf.constant([10, 2]))
    step = tf.function(lambda g: optimizer.apply([g], variables), jit_compile=jit_compile)
    return step, grad, variables + optimizer.variables, before


def test_out_of_range_index_raises_and_writes_nothing(out_of_range_outcomes):
    """In a child process (tests/support/out_of_range_cases.py, run by
    conftest.py's out_of_range_outcomes), which a kernel without its index
    check could crash."""
    outcome = out_of_range_outcomes["optimizer-step"]
    assert "crash" not in outcome, outcome.get("crash")
    assert outcome["error"] == "InvalidArgumentError", outcome
    assert re.search(r"got indices\[1\] = 10; nothing was updated", outcome["message"]), outcome[
        "message"
    ]
    assert outcome["untouched"], "a variable other than the step counter was written"


def test_out_of_range_index_under_xla_is_dropped():
    """The limit README states: XLA has no run-time errors, and its scatter
    drops rows outside the table; the other rows are updated."""
    step, grad, variables, before = out_of_range_step(jit_compile=True)
    step(grad)
    table = variables[0].numpy()
    changed_rows = sorted(set(np.nonzero(table != before[0])[0]))
    assert changed_rows == [1, 4]
