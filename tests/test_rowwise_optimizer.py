"""tf_adagrad.RowwiseAdagrad (Keras 3) against the NumPy rowwise reference,
through fit(), XLA, saving, checkpoints and MirroredStrategy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adagrad
from support.adagrad_reference import bits
from support.rowwise_reference import dense_step_exact, sparse_step_exact

# A learning rate exact in float32 and float64, so the reference sees the
# value the optimizer casts to the accumulator's dtype.
LR = 0.5


def accumulators(optimizer):
    return optimizer._rowwise_accumulators


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_accumulators_are_one_per_row_in_the_accumulator_dtype(dtype):
    variables = [
        keras.Variable(np.ones((5, 3)), dtype=dtype, name="table"),
        keras.Variable(np.ones((4,)), dtype=dtype, name="bias"),
        keras.Variable(1.0, dtype=dtype, name="scale"),
    ]
    optimizer = tf_adagrad.RowwiseAdagrad(initial_accumulator_value=0.25)
    optimizer.build(variables)
    expected_dtype = "float64" if dtype == "float64" else "float32"
    assert [(tuple(a.shape), a.dtype) for a in accumulators(optimizer)] == [
        ((5,), expected_dtype),
        ((4,), expected_dtype),
        ((), expected_dtype),
    ]
    assert all(a.name.endswith("rowwise_accumulator") for a in accumulators(optimizer))
    np.testing.assert_array_equal(accumulators(optimizer)[0].numpy(), np.full(5, 0.25))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_dense_and_sparse_steps_are_bit_exact_with_the_reference(dtype, graph):
    rng = np.random.default_rng(0)
    tf_dtype = tf.as_dtype(dtype)
    np_dtype = tf_dtype.as_numpy_dtype
    table0 = rng.uniform(-1, 1, (30, 40)).astype(np_dtype)
    kernel0 = rng.uniform(-1, 1, (6, 3)).astype(np_dtype)
    table = keras.Variable(table0, dtype=dtype)
    kernel = keras.Variable(kernel0, dtype=dtype)
    # 0.25: exact in float32, which Keras' Constant initializer goes through.
    optimizer = tf_adagrad.RowwiseAdagrad(learning_rate=LR, initial_accumulator_value=0.25)
    optimizer.build([table, kernel])

    def apply(grads):
        optimizer.apply(grads, [table, kernel])

    if graph:
        apply = tf.function(apply)
    want_table, want_kernel = table0, kernel0
    acc_dtype = np.float64 if dtype == "float64" else np.float32
    want_table_accum = np.full(30, 0.25, acc_dtype)
    want_kernel_accum = np.full(6, 0.25, acc_dtype)
    for _ in range(3):
        indices = rng.integers(0, 12, 16)  # duplicates; rows 12.. untouched
        values = rng.uniform(-1, 1, (16, 40)).astype(np_dtype)
        dense = rng.uniform(-1, 1, (6, 3)).astype(np_dtype)
        apply(
            [
                tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant([30, 40])),
                tf.constant(dense),
            ]
        )
        want_table, want_table_accum = sparse_step_exact(
            want_table, want_table_accum, LR, 1e-8, values, indices, tf_dtype
        )
        want_kernel, want_kernel_accum = dense_step_exact(
            want_kernel, want_kernel_accum, LR, 1e-8, dense, tf_dtype
        )
    np.testing.assert_array_equal(bits(table.numpy()), bits(want_table))
    np.testing.assert_array_equal(bits(kernel.numpy()), bits(want_kernel))
    np.testing.assert_array_equal(bits(accumulators(optimizer)[0].numpy()), bits(want_table_accum))
    np.testing.assert_array_equal(bits(accumulators(optimizer)[1].numpy()), bits(want_kernel_accum))
    np.testing.assert_array_equal(table.numpy()[12:], table0[12:])


def embedding_model(seed=0, rows=500):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((3,), dtype="int32"),
            keras.layers.Embedding(rows, 8),
            keras.layers.Flatten(),
            keras.layers.Dense(4, activation="relu"),
            keras.layers.Dense(1),
        ]
    )


def click_data(rows=500, n=1024, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, rows, (n, 3)).astype("int32")
    labels = (ids.sum(axis=1, keepdims=True) % 3 == 0).astype("float32")
    return ids, labels


def test_fit_trains_an_embedding_model():
    ids, labels = click_data()
    model = embedding_model()
    model.compile(optimizer=tf_adagrad.RowwiseAdagrad(0.1), loss="mse", jit_compile=False)
    history = model.fit(ids, labels, batch_size=64, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.9 * losses[0]


def test_xla_fallback_matches_the_kernels():
    """jit_compile=True runs plain TensorFlow ops; a row's squares are summed
    in another order, so the results agree to float32 rounding."""
    ids, labels = click_data()
    weights = {}
    for jit_compile in (False, True):
        model = embedding_model()
        model.compile(optimizer=tf_adagrad.RowwiseAdagrad(0.1), loss="mse", jit_compile=jit_compile)
        model.fit(ids, labels, batch_size=64, epochs=1, shuffle=False, verbose=0)
        weights[jit_compile] = model.get_weights()
    for fused, xla in zip(weights[False], weights[True]):
        np.testing.assert_allclose(xla, fused, rtol=1e-4, atol=1e-6)
    assert not np.array_equal(weights[False][0], embedding_model().get_weights()[0])


def test_config_round_trip():
    optimizer = tf_adagrad.RowwiseAdagrad(
        learning_rate=0.2, initial_accumulator_value=0.5, epsilon=1e-6, clipnorm=1.0
    )
    config = optimizer.get_config()
    assert config["initial_accumulator_value"] == 0.5 and config["epsilon"] == 1e-6
    restored = tf_adagrad.RowwiseAdagrad.from_config(config)
    assert restored.get_config() == config
    again = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(again, tf_adagrad.RowwiseAdagrad)
    assert again.get_config() == config


def test_keras_save_load_then_continue_equals_uninterrupted(tmp_path):
    ids, labels = click_data()
    first, second = (ids[:512], labels[:512]), (ids[512:], labels[512:])

    def compiled():
        model = embedding_model()
        model.compile(optimizer=tf_adagrad.RowwiseAdagrad(0.1), loss="mse", jit_compile=False)
        return model

    uninterrupted = compiled()
    uninterrupted.fit(*first, batch_size=64, shuffle=False, verbose=0)
    uninterrupted.fit(*second, batch_size=64, shuffle=False, verbose=0)

    saved = compiled()
    saved.fit(*first, batch_size=64, shuffle=False, verbose=0)
    path = str(tmp_path / "model.keras")
    saved.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, tf_adagrad.RowwiseAdagrad)
    np.testing.assert_array_equal(
        accumulators(loaded.optimizer)[0].numpy(), accumulators(saved.optimizer)[0].numpy()
    )
    loaded.fit(*second, batch_size=64, shuffle=False, verbose=0)
    for a, b in zip(loaded.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_restores_the_accumulators(tmp_path):
    ids, labels = click_data()
    model = embedding_model()
    model.compile(optimizer=tf_adagrad.RowwiseAdagrad(0.1), loss="mse", jit_compile=False)
    model.fit(ids, labels, batch_size=64, epochs=1, verbose=0)
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(str(tmp_path / "ckpt"))
    restored = embedding_model(seed=5)
    restored.compile(optimizer=tf_adagrad.RowwiseAdagrad(0.1), loss="mse", jit_compile=False)
    restored.optimizer.build(restored.trainable_variables)
    tf.train.Checkpoint(model=restored, optimizer=restored.optimizer).restore(
        path
    ).assert_existing_objects_matched()
    for a, b in zip(accumulators(restored.optimizer), accumulators(model.optimizer)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(restored.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments_and_variables_are_rejected():
    with pytest.raises(ValueError, match="epsilon must be a real number >= 0"):
        tf_adagrad.RowwiseAdagrad(epsilon=-1.0)
    with pytest.raises(ValueError, match="initial_accumulator_value must be a real number"):
        tf_adagrad.RowwiseAdagrad(initial_accumulator_value="0.1")
    optimizer = tf_adagrad.RowwiseAdagrad()
    with pytest.raises(TypeError, match="RowwiseAdagrad's variable .* got int32"):
        optimizer.build([keras.Variable(np.ones(3, np.int32), dtype="int32", name="counts")])


def test_mirrored_strategy_fit_equals_one_device(mirrored_scenario_results):
    """fit() under MirroredStrategy over two logical CPUs (set before
    TensorFlow starts, so in a process of its own: conftest.py's
    mirrored_scenario_results, tests/support/distributed_training.py's
    rowwise_fit) against one device, on the same global batches."""
    results = mirrored_scenario_results
    assert int(results["replicas"]["n"]) == 2
    mirrored, one_device = results["rowwise_fit_mirrored"], results["rowwise_fit_one_device"]
    assert len(mirrored) == 3 + 3  # 3 weights, 3 accumulators
    # The accumulators start at 0: training ran and touched rows on both.
    assert all(np.array(a).max() > 0 for a in mirrored[3:])
    for got, want in zip(mirrored, one_device):
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-7)
