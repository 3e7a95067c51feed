"""The smoke suite of an installed tf_adagrad wheel, which `make compat`
(build_tools/compat.py) runs with pytest in each environment of its matrix:
one TensorFlow minor version, one Python, the Keras and tf_keras that pip
chose. Not part of `make test` (the name keeps pytest from collecting it
there); it imports the installed wheel, never the source tree.

Every check is against NumPy written here or against the peer optimizer
(Keras' or tf_keras' Adagrad) run side by side.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tf_adagrad
from tf_adagrad import keras2, ops

TF_MINOR = ".".join(tf.__version__.split(".")[:2])
LR, EPS = 0.1, 1e-7


def test_the_wheel_is_imported_and_its_library_for_this_tensorflow_loaded():
    site_packages = sysconfig.get_paths()["platlib"]
    package = os.path.dirname(tf_adagrad.__file__)
    assert package == os.path.join(site_packages, "tf_adagrad")
    assert tf_adagrad._loader._library is not None
    assert tf_adagrad._loader.LIBRARY_PATH == os.path.join(
        package, f"_tf_adagrad_ops_tf{TF_MINOR.replace('.', '_')}.so"
    )
    from tf_adagrad import _build_info

    assert _build_info.TF_VERSIONS[TF_MINOR].startswith(TF_MINOR + ".")
    for minor in _build_info.TF_VERSIONS:
        assert os.path.exists(tf_adagrad._loader.library_path(minor)), minor


# Every op against NumPy, float32; sparse gradients with duplicate indices.


def rng_arrays(*shapes, seed=0, positive=False):
    rng = np.random.default_rng(seed)
    out = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    return [np.abs(a) + 0.1 for a in out] if positive else out


def densify(values, indices, rows):
    dense = np.zeros((rows,) + values.shape[1:], np.float32)
    np.add.at(dense, indices, values)
    return dense


def adagrad_reference(var, accum, grad, eps_inside=True):
    accum = accum + grad * grad
    denominator = np.sqrt(accum + EPS) if eps_inside else np.sqrt(accum) + EPS
    return var - LR * grad / denominator, accum


def rowwise_reference(var, accum, grad, touched=None):
    new_accum = accum + np.mean(grad * grad, axis=1)
    if touched is not None:  # a sparse update leaves the other rows alone
        new_accum = np.where(touched, new_accum, accum)
    multiplier = LR / (np.sqrt(new_accum) + EPS)
    return var - multiplier[:, None] * grad, new_accum


def test_dense_and_sparse_elementwise_ops():
    var0, grad = rng_arrays((6, 3), (6, 3))
    (accum0,) = rng_arrays((6, 3), seed=1, positive=True)
    for placement, inside in (("inside_sqrt", True), ("outside_sqrt", False)):
        var, accum = tf.Variable(var0), tf.Variable(accum0)
        ops.apply_adagrad(var, accum, LR, EPS, grad, epsilon_placement=placement)
        expected_var, expected_accum = adagrad_reference(var0, accum0, grad, inside)
        np.testing.assert_allclose(var.numpy(), expected_var, rtol=1e-6)
        np.testing.assert_allclose(accum.numpy(), expected_accum, rtol=1e-6)

    indices = np.array([4, 1, 4, 0, 4], np.int32)
    (values,) = rng_arrays((5, 3), seed=2)
    var, accum = tf.Variable(var0), tf.Variable(accum0)
    ops.sparse_apply_adagrad(var, accum, LR, EPS, values, indices)
    dense = densify(values, indices, 6)
    touched = np.isin(np.arange(6), indices)[:, None]
    expected_var, expected_accum = adagrad_reference(var0, accum0, dense)
    np.testing.assert_allclose(var.numpy(), np.where(touched, expected_var, var0), rtol=1e-6)
    np.testing.assert_allclose(accum.numpy(), np.where(touched, expected_accum, accum0), rtol=1e-6)


def test_multi_apply_updates_each_variable():
    shapes = [(4, 2), (7,), (3, 3)]
    variables = [tf.Variable(a) for a in rng_arrays(*shapes, seed=3)]
    accumulators = [tf.Variable(a) for a in rng_arrays(*shapes, seed=4, positive=True)]
    grads = rng_arrays(*shapes, seed=5)
    expected = [
        adagrad_reference(v.numpy(), a.numpy(), g)
        for v, a, g in zip(variables, accumulators, grads)
    ]
    ops.multi_apply_adagrad(variables, accumulators, LR, EPS, grads)
    for variable, accumulator, (expected_var, expected_accum) in zip(
        variables, accumulators, expected
    ):
        np.testing.assert_allclose(variable.numpy(), expected_var, rtol=1e-6)
        np.testing.assert_allclose(accumulator.numpy(), expected_accum, rtol=1e-6)


def test_dense_and_sparse_rowwise_ops():
    var0, grad = rng_arrays((5, 4), (5, 4), seed=6)
    (accum0,) = rng_arrays((5,), seed=7, positive=True)
    var, accum = tf.Variable(var0), tf.Variable(accum0)
    ops.rowwise_apply_adagrad(var, accum, LR, EPS, grad)
    expected_var, expected_accum = rowwise_reference(var0, accum0, grad)
    np.testing.assert_allclose(var.numpy(), expected_var, rtol=1e-6)
    np.testing.assert_allclose(accum.numpy(), expected_accum, rtol=1e-6)

    indices = np.array([3, 3, 0, 3], np.int64)
    (values,) = rng_arrays((4, 4), seed=8)
    var, accum = tf.Variable(var0), tf.Variable(accum0)
    ops.sparse_rowwise_apply_adagrad(var, accum, LR, EPS, values, indices)
    touched = np.isin(np.arange(5), indices)
    expected_var, expected_accum = rowwise_reference(
        var0, accum0, densify(values, indices, 5), touched
    )
    np.testing.assert_allclose(var.numpy(), expected_var, rtol=1e-6)
    np.testing.assert_allclose(accum.numpy(), expected_accum, rtol=1e-6)


def test_weight_decay_and_moving_average_ops():
    var0, average0 = rng_arrays((5, 2), (5, 2), seed=9)
    factor = np.float32(0.01) * np.float32(LR)
    var = tf.Variable(var0)
    ops.decay_weights(var, LR, 0.01)
    np.testing.assert_allclose(var.numpy(), var0 - var0 * factor, rtol=1e-6)

    indices = np.array([2, 0, 2], np.int32)
    var = tf.Variable(var0)
    ops.decay_rows(var, LR, 0.01, indices)
    once = np.isin(np.arange(5), indices)[:, None]  # each distinct row once
    np.testing.assert_allclose(var.numpy(), np.where(once, var0 - var0 * factor, var0), rtol=1e-6)

    average, last_step = tf.Variable(average0), tf.Variable(np.array([1, 3, 0, 2, 2], np.int64))
    ops.moving_average_rows(average, last_step, tf.Variable(var0), 0.9, 4, indices)
    k = 4 - np.array([1, 3, 0, 2, 2])
    caught_up = var0 + (0.9**k)[:, None] * (average0 - var0)
    np.testing.assert_allclose(average.numpy(), np.where(once, caught_up, average0), rtol=1e-5)
    np.testing.assert_array_equal(last_step.numpy(), np.where(once[:, 0], 4, [1, 3, 0, 2, 2]))


def test_an_out_of_range_index_raises_and_writes_nothing():
    var0, values = rng_arrays((4, 2), (2, 2), seed=10)
    var, accum = tf.Variable(var0), tf.Variable(np.ones((4, 2), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="indices"):
        ops.sparse_apply_adagrad(var, accum, LR, EPS, values, np.array([1, 4], np.int32))
    np.testing.assert_array_equal(var.numpy(), var0)
    np.testing.assert_array_equal(accum.numpy(), np.ones((4, 2), np.float32))


# fit() with Keras 3 and with tf_keras, against their own Adagrad.

IDS = np.array([[1, 2], [3, 1], [5, 6], [7, 1], [2, 9], [1, 1]], np.int32)  # duplicates
# Keras 3's own Adagrad squares each row of a sparse gradient before it sums
# duplicates (not the dense update), so it is compared on batches without.
DISTINCT_IDS = np.array([[1, 2], [3, 4], [5, 6], [7, 8], [2, 9], [0, 5]], np.int32)
LABELS = np.linspace(-1, 1, len(IDS)).astype(np.float32)


def build_model(framework):
    """Embedding(10, 4), Flatten, Dense(1), from seeded initializers: the
    same weights each time. (Not `set_random_seed`: under Python 3.12,
    tf_keras 2.18's layers then fail to draw their seeds, a tf_keras bug
    that 2.19 fixed.)"""
    initializers = framework.initializers
    return framework.Sequential(
        [
            framework.Input((2,), dtype="int32"),
            framework.layers.Embedding(
                10, 4, embeddings_initializer=initializers.RandomUniform(-0.1, 0.1, seed=1)
            ),
            framework.layers.Flatten(),
            framework.layers.Dense(1, kernel_initializer=initializers.GlorotUniform(seed=2)),
        ]
    )


def fit_weights(framework, optimizer, epochs=3, ids=IDS):
    model = build_model(framework)
    model.compile(optimizer=optimizer, loss="mse")
    history = model.fit(ids, LABELS, batch_size=3, epochs=epochs, shuffle=False, verbose=0)
    return [w.numpy() for w in model.weights], history.history["loss"]


def full_batch_step(framework, optimizer):
    """The trainable weights after one full-batch fit step of `optimizer`."""
    model = build_model(framework)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(IDS, LABELS, batch_size=len(IDS), epochs=1, verbose=0)
    return [w.numpy() for w in model.trainable_weights]


def rowwise_fit_reference(framework):
    """One full-batch fit step of RowwiseAdagrad in NumPy, from the
    gradients of the same model (GradientTape)."""
    model = build_model(framework)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(IDS)[:, 0] - LABELS))
    grads = tape.gradient(loss, model.trainable_weights)
    expected = []
    for weight, grad in zip(model.trainable_weights, grads):
        grad = tf.convert_to_tensor(grad).numpy()
        value = weight.numpy()
        rows = value.reshape(value.shape[0], -1)
        # A row without gradient keeps its weights and accumulator either way.
        accum = np.full(rows.shape[0], 0.1, np.float32)
        new_rows, _ = rowwise_reference(rows, accum, grad.reshape(rows.shape))
        expected.append(new_rows.reshape(value.shape))
    return expected


def test_keras3_fit_adagrad_matches_keras_adagrad():
    ours, losses = fit_weights(keras, tf_adagrad.Adagrad(LR), ids=DISTINCT_IDS)
    theirs, _ = fit_weights(keras, keras.optimizers.Adagrad(LR), ids=DISTINCT_IDS)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert losses[-1] < losses[0]


def test_keras3_fit_with_ema_and_accumulation_matches_keras():
    """The hooks that moved between Keras releases: gradient accumulation,
    the moving average, clipping."""
    settings = dict(use_ema=True, gradient_accumulation_steps=2, global_clipnorm=1.0)
    ours, _ = fit_weights(keras, tf_adagrad.Adagrad(LR, **settings), epochs=4)
    theirs, _ = fit_weights(keras, keras.optimizers.Adagrad(LR, **settings), epochs=4)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_keras3_fit_with_loss_scaling_matches_keras():
    ours, _ = fit_weights(
        keras,
        tf_adagrad.LossScaleOptimizer(tf_adagrad.Adagrad(LR), name="scaled"),
        ids=DISTINCT_IDS,
    )
    theirs, _ = fit_weights(
        keras,
        keras.optimizers.LossScaleOptimizer(keras.optimizers.Adagrad(LR), name="scaled"),
        ids=DISTINCT_IDS,
    )
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_keras3_fit_rowwise_adagrad_matches_numpy():
    optimizer = tf_adagrad.RowwiseAdagrad(LR, initial_accumulator_value=0.1, epsilon=EPS)
    for weight, expected in zip(full_batch_step(keras, optimizer), rowwise_fit_reference(keras)):
        np.testing.assert_allclose(weight, expected, rtol=1e-5, atol=1e-6)


def test_tf_keras_fit_adagrad_matches_tf_keras_adagrad():
    ours, losses = fit_weights(tf_keras, keras2.Adagrad(LR))
    theirs, _ = fit_weights(tf_keras, tf_keras.optimizers.Adagrad(LR))
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert losses[-1] < losses[0]
    ours, _ = fit_weights(tf_keras, keras2.legacy.Adagrad(LR))
    theirs, _ = fit_weights(tf_keras, tf_keras.optimizers.legacy.Adagrad(LR))
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_tf_keras_fit_rowwise_adagrad_matches_numpy():
    optimizer = keras2.RowwiseAdagrad(LR, initial_accumulator_value=0.1, epsilon=EPS)
    for weight, expected in zip(
        full_batch_step(tf_keras, optimizer), rowwise_fit_reference(tf_keras)
    ):
        np.testing.assert_allclose(weight, expected, rtol=1e-5, atol=1e-6)


# A SavedModel with a training step, loaded in a fresh process.


class TrainModule(tf.Module):
    def __init__(self):
        super().__init__()
        self.model = keras.Sequential(
            [
                keras.Input((2,), dtype="int32"),
                keras.layers.Embedding(
                    20, 3, embeddings_initializer=keras.initializers.RandomUniform(seed=2)
                ),
                keras.layers.Flatten(),
            ]
        )
        self.table = self.model.trainable_variables[0]
        self.optimizer = tf_adagrad.Adagrad(LR)
        self.optimizer.build(self.model.trainable_variables)

    @tf.function(
        input_signature=[tf.TensorSpec([None, 2], tf.int32), tf.TensorSpec([None, 6], tf.float32)]
    )
    def train_step(self, ids, targets):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(self.model(ids) - targets))
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply(grads, self.model.trainable_variables)
        return loss


_LOAD_AND_STEP = """
import json, sys
import numpy as np
import tensorflow as tf
import tf_adagrad
module = tf.saved_model.load(sys.argv[1])
batch = np.load(sys.argv[2])
module.train_step(tf.constant(batch["ids"]), tf.constant(batch["targets"]))
print(json.dumps(module.table.numpy().tolist()))
"""


def test_saved_model_with_a_training_step_loads_and_trains_in_a_fresh_process(tmp_path):
    module = TrainModule()
    ids = np.array([[1, 5], [5, 7], [19, 1]], np.int32)
    targets = np.random.default_rng(3).standard_normal((3, 6)).astype(np.float32)
    tf.saved_model.save(module, str(tmp_path / "model"))
    np.savez(tmp_path / "batch.npz", ids=ids, targets=targets)
    module.train_step(ids, targets)  # the same step here: what the load must give
    expected = module.table.numpy()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOAD_AND_STEP,
            str(tmp_path / "model"),
            str(tmp_path / "batch.npz"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = np.array(json.loads(out.stdout.splitlines()[-1]), np.float32)
    np.testing.assert_array_equal(loaded, expected)
    assert np.any(loaded != TrainModule().table.numpy())


# The version error for a library built for another TensorFlow.


def test_import_refuses_a_library_built_for_another_tensorflow(tmp_path):
    major, minor = map(int, TF_MINOR.split("."))
    other = f"{major}.{minor + 1}"
    copy = tmp_path / "packages" / "tf_adagrad"
    shutil.copytree(os.path.dirname(tf_adagrad.__file__), copy)
    (copy / "_build_info.py").write_text(f'TF_VERSIONS = {{"{other}": "{other}.0"}}\n')
    env = dict(os.environ, PYTHONPATH=str(copy.parent))
    out = subprocess.run(
        [sys.executable, "-c", "import tf_adagrad"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert out.returncode != 0
    last_line = out.stderr.strip().splitlines()[-1]
    assert last_line.startswith("tf_adagrad.OpLibraryError: "), out.stderr[-3000:]
    assert f"were built for TensorFlow {other} ({other}.0, as recorded in" in last_line
    assert f"but TensorFlow {tf.__version__} is installed" in last_line
    assert f"pip install 'tensorflow>={other},<{major}.{minor + 2}'" in last_line
