"""16-bit tables through the optimizers: `stochastic_rounding` (every class)
and `accumulator_dtype` (the elementwise classes) in Keras 3, tf_keras and
OptimizerV2: configuration, reproducibility under a seed, resumption from
checkpoints and `.keras` files, and no effect on other dtypes."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tf_adagrad
from support.adagrad_reference import bits

VOCABULARY, WIDTH, BATCH = 500, 8, 32
LR = 0.05


def data(seed=0, batches=4):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCABULARY, (BATCH * batches, 3))
    y = rng.uniform(0, 1, (BATCH * batches, 1)).astype(np.float32)
    return x, y


def keras_model(table_dtype="bfloat16"):
    return keras.Sequential(
        [
            keras.Input((3,), dtype="int32"),
            keras.layers.Embedding(VOCABULARY, WIDTH, dtype=table_dtype),
            keras.layers.Flatten(),
            keras.layers.Dense(1, dtype="float32"),
        ]
    )


def keras_fit(make_optimizer, seed=1, table_dtype="bfloat16", x_y=None):
    keras.utils.set_random_seed(seed)
    model = keras_model(table_dtype)
    model.compile(optimizer=make_optimizer(), loss="mse")
    x, y = x_y or data()
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    return model


def table_bits(model):
    return bits(model.layers[0].embeddings.numpy())


KERAS3_CLASSES = {
    "Adagrad": lambda **kw: tf_adagrad.Adagrad(LR, **kw),
    "RowwiseAdagrad": lambda **kw: tf_adagrad.RowwiseAdagrad(LR, **kw),
}
OPTIONS = {
    "Adagrad": dict(stochastic_rounding=True, accumulator_dtype="float32"),
    "RowwiseAdagrad": dict(stochastic_rounding=True),
}


@pytest.mark.parametrize("name", sorted(KERAS3_CLASSES))
def test_keras3_config_round_trip(name):
    optimizer = KERAS3_CLASSES[name](**OPTIONS[name])
    config = optimizer.get_config()
    assert config["stochastic_rounding"] is True
    if name == "Adagrad":
        assert config["accumulator_dtype"] == "float32"
    again = type(optimizer).from_config(config)
    assert again.get_config() == config
    serialized = keras.optimizers.serialize(optimizer)
    assert keras.optimizers.deserialize(serialized).get_config() == config
    # The defaults stay out of the config, which stays Keras' own.
    default = KERAS3_CLASSES[name]().get_config()
    assert "stochastic_rounding" not in default and "accumulator_dtype" not in default


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="accumulator_dtype applies to the elementwise"):
        tf_adagrad.RowwiseAdagrad(accumulator_dtype="float32")
    with pytest.raises(ValueError, match="accumulator_dtype must be None or 'float32'"):
        tf_adagrad.Adagrad(accumulator_dtype="float16")
    with pytest.raises(ValueError, match="stochastic_rounding must be True or False"):
        tf_adagrad.Adagrad(stochastic_rounding="yes")
    with pytest.raises(ValueError, match="accumulator_dtype applies to the elementwise"):
        tf_adagrad.keras2.RowwiseAdagrad(accumulator_dtype="float32")
    with pytest.raises(ValueError, match="accumulator_dtype must be None or 'float32'"):
        tf_adagrad.keras2.legacy.Adagrad(accumulator_dtype="float64")


def test_keras3_float32_accumulator_slots():
    model = keras_fit(lambda: tf_adagrad.Adagrad(LR, accumulator_dtype="float32"))
    optimizer = model.optimizer
    # Named after the model's (numbered) layers: found by their suffix.
    table_slots = [v for v in optimizer.variables if v.path.endswith("embeddings_accumulator")]
    assert [v.dtype for v in table_slots] == ["float32"]
    # Keras' default: the variable's dtype.
    keras_default = keras_fit(lambda: tf_adagrad.Adagrad(LR)).optimizer
    assert "bfloat16" in {v.dtype for v in keras_default.variables}


@pytest.mark.parametrize("name", sorted(KERAS3_CLASSES))
def test_keras3_runs_repeat_under_a_seed_and_differ_under_another(name):
    def make():
        return KERAS3_CLASSES[name](**OPTIONS[name])

    first = table_bits(keras_fit(make, seed=1))
    assert np.array_equal(first, table_bits(keras_fit(make, seed=1)))
    # Another seed draws other initial weights too; compare the updates'
    # rounding alone: same initial weights (seed 1), other optimizer seed.
    keras.utils.set_random_seed(1)
    model = keras_model()
    keras.utils.set_random_seed(99)
    model.compile(optimizer=make(), loss="mse")
    x, y = data()
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    assert not np.array_equal(first, table_bits(model))


@pytest.mark.parametrize("name", sorted(KERAS3_CLASSES))
def test_keras3_stochastic_rounding_leaves_float32_variables_alone(name):
    plain = keras_fit(lambda: KERAS3_CLASSES[name](), table_dtype="float32")
    rounded = keras_fit(lambda: KERAS3_CLASSES[name](**OPTIONS[name]), table_dtype="float32")
    for a, b in zip(plain.weights, rounded.weights):
        np.testing.assert_array_equal(bits(a.numpy()), bits(b.numpy()))


@pytest.mark.parametrize("name", sorted(KERAS3_CLASSES))
def test_keras3_checkpoint_resume_continues_the_random_sequence(name, tmp_path):
    """Two batches, a checkpoint, a new model and optimizer restored from it,
    two more batches: the bits of four batches in one run."""
    x, y = data(batches=4)

    def make():
        return KERAS3_CLASSES[name](**OPTIONS[name])

    whole = keras_fit(make, x_y=(x, y))
    first = keras_fit(make, x_y=(x[: 2 * BATCH], y[: 2 * BATCH]))
    path = tf.train.Checkpoint(model=first, optimizer=first.optimizer).write(str(tmp_path / "ckpt"))
    keras.utils.set_random_seed(12345)  # another seed: the checkpoint's must win
    resumed = keras_model()
    resumed.compile(optimizer=make(), loss="mse")
    resumed.optimizer.build(resumed.trainable_variables)
    tf.train.Checkpoint(model=resumed, optimizer=resumed.optimizer).read(path).assert_consumed()
    resumed.fit(x[2 * BATCH :], y[2 * BATCH :], batch_size=BATCH, shuffle=False, verbose=0)
    for a, b in zip(whole.weights, resumed.weights):
        np.testing.assert_array_equal(bits(a.numpy()), bits(b.numpy()))


def test_keras3_dot_keras_file_resume(tmp_path):
    x, y = data(batches=4)

    def make():
        return tf_adagrad.Adagrad(LR, **OPTIONS["Adagrad"])

    whole = keras_fit(make, x_y=(x, y))
    first = keras_fit(make, x_y=(x[: 2 * BATCH], y[: 2 * BATCH]))
    first.save(tmp_path / "model.keras")
    keras.utils.set_random_seed(777)
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.optimizer.get_config()["accumulator_dtype"] == "float32"
    loaded.fit(x[2 * BATCH :], y[2 * BATCH :], batch_size=BATCH, shuffle=False, verbose=0)
    for a, b in zip(whole.weights, loaded.weights):
        np.testing.assert_array_equal(bits(a.numpy()), bits(b.numpy()))


# ------------------------------------------------------------- tf_keras ---

TF_KERAS_CLASSES = {
    "keras2.Adagrad": lambda **kw: tf_adagrad.keras2.Adagrad(LR, **kw),
    "keras2.RowwiseAdagrad": lambda **kw: tf_adagrad.keras2.RowwiseAdagrad(LR, **kw),
    "keras2.legacy.Adagrad": lambda **kw: tf_adagrad.keras2.legacy.Adagrad(LR, **kw),
    "keras2.legacy.RowwiseAdagrad": lambda **kw: tf_adagrad.keras2.legacy.RowwiseAdagrad(LR, **kw),
}


def tf_keras_options(name):
    return OPTIONS["RowwiseAdagrad" if "Rowwise" in name else "Adagrad"]


def tf_keras_model():
    return tf_keras.Sequential(
        [
            tf_keras.Input((3,), dtype="int32"),
            tf_keras.layers.Embedding(VOCABULARY, WIDTH, dtype="bfloat16"),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(1, dtype="float32"),
        ]
    )


def tf_keras_fit(make_optimizer, seed=1, x_y=None, model=None):
    tf_keras.utils.set_random_seed(seed)
    model = model or tf_keras_model()
    model.compile(optimizer=make_optimizer(), loss="mse")
    x, y = x_y or data()
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize("name", sorted(TF_KERAS_CLASSES))
def test_tf_keras_config_and_seeded_runs(name):
    options = tf_keras_options(name)
    optimizer = TF_KERAS_CLASSES[name](**options)
    config = optimizer.get_config()
    assert config["stochastic_rounding"] is True
    assert type(optimizer).from_config(config).get_config() == config

    def make():
        return TF_KERAS_CLASSES[name](**options)

    first = tf_keras_fit(make)
    again = tf_keras_fit(make)
    np.testing.assert_array_equal(
        bits(first.layers[0].embeddings.numpy()), bits(again.layers[0].embeddings.numpy())
    )
    nearest = tf_keras_fit(lambda: TF_KERAS_CLASSES[name]())
    assert not np.array_equal(
        bits(first.layers[0].embeddings.numpy()), bits(nearest.layers[0].embeddings.numpy())
    )
    if "Rowwise" not in name:
        variables = first.optimizer.variables
        variables = variables() if callable(variables) else variables
        accumulators = [v for v in variables if "accumulator" in v.name]
        assert {v.dtype for v in accumulators} == {tf.float32}


@pytest.mark.parametrize("name", sorted(TF_KERAS_CLASSES))
def test_tf_keras_checkpoint_resume_continues_the_random_sequence(name, tmp_path):
    x, y = data(batches=4)
    options = tf_keras_options(name)

    def make():
        return TF_KERAS_CLASSES[name](**options)

    whole = tf_keras_fit(make, x_y=(x, y))
    first = tf_keras_fit(make, x_y=(x[: 2 * BATCH], y[: 2 * BATCH]))
    path = tf.train.Checkpoint(model=first, optimizer=first.optimizer).write(str(tmp_path / "ckpt"))
    tf_keras.utils.set_random_seed(4321)
    resumed = tf_keras_model()
    resumed.compile(optimizer=make(), loss="mse")
    # Restored on creation, as tf_keras restores optimizer variables.
    tf.train.Checkpoint(model=resumed, optimizer=resumed.optimizer).read(path)
    resumed.fit(x[2 * BATCH :], y[2 * BATCH :], batch_size=BATCH, shuffle=False, verbose=0)
    for a, b in zip(whole.weights, resumed.weights):
        np.testing.assert_array_equal(bits(a.numpy()), bits(b.numpy()))
