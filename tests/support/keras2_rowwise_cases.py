"""The cases of tf_adagrad.keras2.RowwiseAdagrad and
keras2.legacy.RowwiseAdagrad that tests/test_keras2_rowwise.py checks, run
in the tf_keras child process of tests/support/keras2_cases.py (its "train"
group), which imports this module after setting `TF_USE_LEGACY_KERAS=1`.
Each case returns plain values and NumPy arrays; the NumPy references and
the assertions are in the test module.
"""

import os
from functools import partial

import numpy as np
import tensorflow as tf

import tf_adagrad

KINDS = ("keras2", "legacy")
DTYPES = ("float16", "bfloat16", "float32", "float64")
# As in tests/test_keras2_rowwise.py.
LR, EPSILON, INITIAL = 0.5, 1e-8, 0.25
ROWS, WIDTH, STEPS = 30, 40, 3
# fit() data: 3 ids per example from 200 rows.
MODEL_ROWS, FIT_EXAMPLES = 200, 1024


def rowwise_class(kind):
    if kind == "legacy":
        return tf_adagrad.keras2.legacy.RowwiseAdagrad
    return tf_adagrad.keras2.RowwiseAdagrad


def slot(optimizer, variable):
    """The rowwise accumulator of `variable`."""
    if isinstance(optimizer, tf.keras.optimizers.legacy.Optimizer):
        return optimizer.get_slot(variable, "rowwise_accumulator")
    return optimizer._rowwise_accumulators[optimizer._index_dict[optimizer._var_key(variable)]]


def steps(kind, dtype, graph):
    """STEPS steps of a sparse gradient of a (ROWS, WIDTH) table, naming
    rows 0..11 only, and a dense one of a (6, 3) kernel, eagerly or in a
    tf.function; the initial values and gradients as applied, for the
    reference, and the results."""
    rng = np.random.default_rng(0)
    table0 = rng.uniform(-1, 1, (ROWS, WIDTH))
    kernel0 = rng.uniform(-1, 1, (6, 3))
    table = tf.Variable(tf.cast(table0, dtype))
    kernel = tf.Variable(tf.cast(kernel0, dtype))
    optimizer = rowwise_class(kind)(
        learning_rate=LR, initial_accumulator_value=INITIAL, epsilon=EPSILON
    )
    gradients = []
    for _ in range(STEPS):
        indices = rng.integers(0, 12, 16)
        gradients.append((indices, rng.uniform(-1, 1, (16, WIDTH)), rng.uniform(-1, 1, (6, 3))))

    def apply(indices, values, dense):
        optimizer.apply_gradients(
            [
                (tf.IndexedSlices(values, indices, tf.constant([ROWS, WIDTH], tf.int64)), table),
                (dense, kernel),
            ]
        )

    if graph:
        apply = tf.function(apply)
    for indices, values, dense in gradients:
        apply(tf.constant(indices), tf.cast(values, dtype), tf.cast(dense, dtype))
    return dict(
        table0=tf.cast(table0, dtype).numpy(),
        kernel0=tf.cast(kernel0, dtype).numpy(),
        steps=[(i, tf.cast(v, dtype).numpy(), tf.cast(d, dtype).numpy()) for i, v, d in gradients],
        table=table.numpy(),
        kernel=kernel.numpy(),
        table_accum=slot(optimizer, table).numpy(),
        kernel_accum=slot(optimizer, kernel).numpy(),
        accum_dtype=slot(optimizer, table).dtype.name,
    )


def fit_data():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, MODEL_ROWS, (FIT_EXAMPLES, 3)).astype("int32")
    labels = (ids.sum(axis=1, keepdims=True) % 3 == 0).astype("float32")
    return ids, labels


def model(seed=0):
    tf.keras.utils.set_random_seed(seed)
    return tf.keras.Sequential(
        [
            tf.keras.Input((3,), dtype="int32"),
            tf.keras.layers.Embedding(MODEL_ROWS, 8),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(4, activation="relu"),
            tf.keras.layers.Dense(1),
        ]
    )


def fit_fused_and_xla(kind):
    """fit() with the fused ops and under XLA (jit_compile=True) from the
    same initial weights: the losses and weights of both, and the initial
    weights."""
    ids, labels = fit_data()
    result = {"loss": {}, "weights": {}, "initial": model().get_weights()}
    for label, jit_compile in (("fused", False), ("xla", True)):
        m = model()
        m.compile(optimizer=rowwise_class(kind)(0.1), loss="mse", jit_compile=jit_compile)
        history = m.fit(ids, labels, batch_size=64, epochs=2, shuffle=False, verbose=0)
        result["loss"][label] = history.history["loss"]
        result["weights"][label] = m.get_weights()
    return result


def save_load_and_checkpoint(kind, work_dir):
    """Training on the first half of the data, saved as a .keras file and
    loaded with nothing but tf_adagrad imported, then on the second half;
    the same from a tf.train.Checkpoint restored into a new model and
    optimizer; and training on both halves without the interruption."""
    ids, labels = fit_data()
    halves = [(ids[:512], labels[:512]), (ids[512:], labels[512:])]
    cls = rowwise_class(kind)
    uninterrupted = model()
    uninterrupted.compile(optimizer=cls(0.1), loss="mse")
    for x, y in halves:
        uninterrupted.fit(x, y, batch_size=64, shuffle=False, verbose=0)
    saved = model()
    saved.compile(optimizer=cls(0.1), loss="mse")
    saved.fit(*halves[0], batch_size=64, shuffle=False, verbose=0)
    path = os.path.join(work_dir, f"rowwise_{kind}.keras")
    saved.save(path)
    loaded = tf.keras.models.load_model(path)
    loaded_type = type(loaded.optimizer).__module__ + "." + type(loaded.optimizer).__name__
    loaded.fit(*halves[1], batch_size=64, shuffle=False, verbose=0)

    checkpoint_path = tf.train.Checkpoint(model=saved, optimizer=saved.optimizer).save(
        os.path.join(work_dir, f"rowwise_{kind}-ckpt")
    )
    restored = model(seed=7)
    restored.compile(optimizer=cls(0.1), loss="mse")
    tf.train.Checkpoint(model=restored, optimizer=restored.optimizer).restore(checkpoint_path)
    restored.fit(*halves[1], batch_size=64, shuffle=False, verbose=0)
    return {
        "loaded_type": loaded_type,
        "resumed": loaded.get_weights(),
        "restored": restored.get_weights(),
        "uninterrupted": uninterrupted.get_weights(),
    }


def config_round_trip(kind):
    cls = rowwise_class(kind)
    config = cls(0.2, initial_accumulator_value=0.5, epsilon=1e-6).get_config()
    return {"config": config, "from_config": cls.from_config(config).get_config()}


def rowwise_cases(work_dir):
    """The cases, by name ("rowwise/..."), as calls without arguments."""
    cases = {}
    for kind in KINDS:
        for dtype in DTYPES:
            for graph in (False, True):
                mode = "tf.function" if graph else "eager"
                cases[f"rowwise/steps/{kind}/{dtype}/{mode}"] = partial(steps, kind, dtype, graph)
        cases[f"rowwise/fit/{kind}"] = partial(fit_fused_and_xla, kind)
        cases[f"rowwise/resume/{kind}"] = partial(save_load_and_checkpoint, kind, work_dir)
        cases[f"rowwise/config/{kind}"] = partial(config_round_trip, kind)
    return cases
