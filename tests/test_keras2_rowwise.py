"""tf_adagrad.keras2.RowwiseAdagrad and tf_adagrad.keras2.legacy.RowwiseAdagrad
against the NumPy rowwise reference, through fit(), XLA, saving and
checkpoints. tf.keras is tf_keras only with TF_USE_LEGACY_KERAS=1 set before
TensorFlow is imported, so the tf_keras work runs in a child process."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from support.adagrad_reference import bits
from support.rowwise_reference import dense_step_exact, sparse_step_exact

KINDS = ["keras2", "legacy"]
DTYPES = ["float16", "bfloat16", "float32", "float64"]
# Exact in float32 and float64 (the learning rate is a float32 variable, the
# initial value goes through float32 in tf_keras' Constant initializer).
LR, EPSILON, INITIAL = 0.5, 1e-8, 0.25
ROWS, WIDTH, STEPS = 30, 40, 3

_CHILD = r"""
import os, pickle, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np
import tensorflow as tf
import tf_adagrad

LR, EPSILON, INITIAL = {LR}, {EPSILON}, {INITIAL}
ROWS, WIDTH, STEPS = {ROWS}, {WIDTH}, {STEPS}
work_dir, out = sys.argv[1], sys.argv[2]
CLASSES = {{
    "keras2": tf_adagrad.keras2.RowwiseAdagrad,
    "legacy": tf_adagrad.keras2.legacy.RowwiseAdagrad,
}}
results = {{}}


def slot(optimizer, variable):
    if isinstance(optimizer, tf.keras.optimizers.legacy.Optimizer):
        return optimizer.get_slot(variable, "rowwise_accumulator")
    return optimizer._rowwise_accumulators[optimizer._index_dict[optimizer._var_key(variable)]]


# Steps of dense and sparse gradients, eagerly and in a tf.function.
for kind, cls in CLASSES.items():
    for dtype in {DTYPES}:
        for graph in (False, True):
            rng = np.random.default_rng(0)
            table0 = rng.uniform(-1, 1, (ROWS, WIDTH))
            kernel0 = rng.uniform(-1, 1, (6, 3))
            table = tf.Variable(tf.cast(table0, dtype))
            kernel = tf.Variable(tf.cast(kernel0, dtype))
            optimizer = cls(learning_rate=LR, initial_accumulator_value=INITIAL, epsilon=EPSILON)
            steps = []
            for _ in range(STEPS):
                indices = rng.integers(0, 12, 16)
                steps.append((indices, rng.uniform(-1, 1, (16, WIDTH)), rng.uniform(-1, 1, (6, 3))))

            def apply(indices, values, dense):
                optimizer.apply_gradients([
                    (tf.IndexedSlices(values, indices, tf.constant([ROWS, WIDTH], tf.int64)), table),
                    (dense, kernel),
                ])

            if graph:
                apply = tf.function(apply)
            for indices, values, dense in steps:
                apply(tf.constant(indices), tf.cast(values, dtype), tf.cast(dense, dtype))
            results[("steps", kind, dtype, graph)] = dict(
                table0=tf.cast(table0, dtype).numpy(),
                kernel0=tf.cast(kernel0, dtype).numpy(),
                steps=[(i, tf.cast(v, dtype).numpy(), tf.cast(d, dtype).numpy()) for i, v, d in steps],
                table=table.numpy(),
                kernel=kernel.numpy(),
                table_accum=slot(optimizer, table).numpy(),
                kernel_accum=slot(optimizer, kernel).numpy(),
                accum_dtype=slot(optimizer, table).dtype.name,
            )

rng = np.random.default_rng(1)
ids = rng.integers(0, 200, (1024, 3)).astype("int32")
labels = (ids.sum(axis=1, keepdims=True) % 3 == 0).astype("float32")


def model(seed=0):
    tf.keras.utils.set_random_seed(seed)
    return tf.keras.Sequential([
        tf.keras.Input((3,), dtype="int32"),
        tf.keras.layers.Embedding(200, 8),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(4, activation="relu"),
        tf.keras.layers.Dense(1),
    ])


for kind, cls in CLASSES.items():
    # fit(), with the fused ops and under XLA.
    weights = {{}}
    for jit_compile in (False, True):
        m = model()
        m.compile(optimizer=cls(0.1), loss="mse", jit_compile=jit_compile)
        history = m.fit(ids, labels, batch_size=64, epochs=2, shuffle=False, verbose=0)
        weights[jit_compile] = m.get_weights()
        results[("fit", kind, jit_compile)] = history.history["loss"]
    results[("xla", kind)] = (weights[False], weights[True], model().get_weights())

    # Save, load with nothing but tf_adagrad imported, continue: equal to
    # training without the interruption.
    uninterrupted = model()
    uninterrupted.compile(optimizer=cls(0.1), loss="mse")
    uninterrupted.fit(ids[:512], labels[:512], batch_size=64, shuffle=False, verbose=0)
    uninterrupted.fit(ids[512:], labels[512:], batch_size=64, shuffle=False, verbose=0)
    saved = model()
    saved.compile(optimizer=cls(0.1), loss="mse")
    saved.fit(ids[:512], labels[:512], batch_size=64, shuffle=False, verbose=0)
    path = os.path.join(work_dir, f"{{kind}}.keras")
    saved.save(path)
    loaded = tf.keras.models.load_model(path)
    loaded_type = type(loaded.optimizer).__module__ + "." + type(loaded.optimizer).__name__
    loaded.fit(ids[512:], labels[512:], batch_size=64, shuffle=False, verbose=0)
    results[("resume", kind)] = (loaded_type, loaded.get_weights(), uninterrupted.get_weights())

    # A checkpoint restores the accumulators into a new model and optimizer.
    checkpoint_path = tf.train.Checkpoint(model=saved, optimizer=saved.optimizer).save(
        os.path.join(work_dir, f"{{kind}}-ckpt")
    )
    restored = model(seed=7)
    restored.compile(optimizer=cls(0.1), loss="mse")
    tf.train.Checkpoint(model=restored, optimizer=restored.optimizer).restore(checkpoint_path)
    restored.fit(ids[512:], labels[512:], batch_size=64, shuffle=False, verbose=0)
    results[("checkpoint", kind)] = (restored.get_weights(), uninterrupted.get_weights())

    config = cls(0.2, initial_accumulator_value=0.5, epsilon=1e-6).get_config()
    results[("config", kind)] = (config, cls.from_config(config).get_config())

with open(out, "wb") as f:
    pickle.dump(results, f)
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("keras2_rowwise")
    script = _CHILD.format(
        LR=LR, EPSILON=EPSILON, INITIAL=INITIAL, ROWS=ROWS, WIDTH=WIDTH, STEPS=STEPS, DTYPES=DTYPES
    )
    out = work_dir / "results.pkl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    completed = subprocess.run(
        [sys.executable, "-c", script, str(work_dir), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-6000:]
    with open(out, "rb") as f:
        return pickle.load(f)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_steps_are_bit_exact_with_the_reference(results, kind, dtype, graph):
    run = results[("steps", kind, dtype, graph)]
    tf_dtype = tf.as_dtype(dtype)
    assert run["accum_dtype"] == ("float64" if dtype == "float64" else "float32")
    table, kernel = run["table0"], run["kernel0"]
    accum_type = np.float64 if dtype == "float64" else np.float32
    table_accum = np.full(ROWS, INITIAL, accum_type)
    kernel_accum = np.full(6, INITIAL, accum_type)
    for indices, values, dense in run["steps"]:
        table, table_accum = sparse_step_exact(
            table, table_accum, LR, EPSILON, values, indices, tf_dtype
        )
        kernel, kernel_accum = dense_step_exact(kernel, kernel_accum, LR, EPSILON, dense, tf_dtype)
    np.testing.assert_array_equal(bits(run["table"]), bits(table))
    np.testing.assert_array_equal(bits(run["kernel"]), bits(kernel))
    np.testing.assert_array_equal(bits(run["table_accum"]), bits(table_accum))
    np.testing.assert_array_equal(bits(run["kernel_accum"]), bits(kernel_accum))
    np.testing.assert_array_equal(run["table"][12:], run["table0"][12:])  # not named


@pytest.mark.parametrize("kind", KINDS)
def test_fit_trains(results, kind):
    losses = results[("fit", kind, False)]
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("kind", KINDS)
def test_xla_fallback_matches_the_kernels(results, kind):
    fused, xla, initial = results[("xla", kind)]
    for a, b in zip(xla, fused):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not np.array_equal(fused[0], initial[0])


@pytest.mark.parametrize("kind", KINDS)
def test_keras_file_loads_and_resumes_exactly(results, kind):
    loaded_type, resumed, uninterrupted = results[("resume", kind)]
    module = "tf_adagrad.keras2.legacy" if kind == "legacy" else "tf_adagrad.keras2"
    assert loaded_type == f"{module}.rowwise_adagrad.RowwiseAdagrad"
    if kind == "legacy":
        # tf_keras' load_model starts a legacy optimizer afresh from a .keras
        # file (its iteration count at 0), for its own legacy Adagrad too;
        # test_checkpoint_restores_and_resumes_exactly covers the state.
        return
    for a, b in zip(resumed, uninterrupted):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_restores_and_resumes_exactly(results, kind):
    restored, uninterrupted = results[("checkpoint", kind)]
    for a, b in zip(restored, uninterrupted):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trip(results, kind):
    config, again = results[("config", kind)]
    assert config["initial_accumulator_value"] == 0.5 and config["epsilon"] == 1e-6
    assert config["learning_rate"] == pytest.approx(0.2)
    assert again == config
