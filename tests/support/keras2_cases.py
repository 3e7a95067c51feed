"""The tf_keras work of tests/test_keras2_optimizers.py, run in a child process
with `TF_USE_LEGACY_KERAS=1` (set here, before TensorFlow is imported).

`python keras2_cases.py GROUP WORK_DIR OUT` runs every case of GROUP
("train", then "load" in a second process, which sees only what "train"
saved in WORK_DIR) and pickles {case name: result} to OUT. A result is a
dict of plain values and NumPy arrays, or {"error": traceback} if the case
raised, so one broken case fails its own test only. The assertions are in
the test module, which also holds the NumPy references.
"""

import os
import pickle
import sys
import traceback

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# Only the top-level package: importing it registers the tf_keras classes,
# which the "load" group relies on.
import tf_adagrad  # noqa: E402
import tf_keras  # noqa: E402

LEARNING_RATE = 0.1
DENSE_SHAPES = [(7,), (5, 3), (2, 3, 4)]
NUM_ROWS, WIDTH = 40, 3


def classes(kind):
    """(tf_adagrad's class, its tf_keras counterpart) for "keras2" or "legacy"."""
    if kind == "legacy":
        return tf_adagrad.keras2.legacy.Adagrad, tf_keras.optimizers.legacy.Adagrad
    return tf_adagrad.keras2.Adagrad, tf_keras.optimizers.Adagrad


def accumulators(optimizer, variables):
    if isinstance(optimizer, tf_keras.optimizers.legacy.Optimizer):
        return [optimizer.get_slot(v, "accumulator") for v in variables]
    # The new optimizer keeps them in var_list order; no public accessor.
    return [optimizer._accumulators[optimizer._index_dict[optimizer._var_key(v)]] for v in variables]


def as_numpy(tensor):
    # bfloat16 widens to float32 exactly, and unpickles without ml_dtypes.
    value = tf.convert_to_tensor(tensor)
    if value.dtype == tf.bfloat16:
        value = tf.cast(value, tf.float32)
    return value.numpy()


def make_variables(shapes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [
        tf.Variable(tf.cast(rng.uniform(-1, 1, shape), dtype), name=f"v{i}")
        for i, shape in enumerate(shapes)
    ]


def dense_gradients(shapes, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.uniform(-1, 1, shape) for shape in shapes] for _ in range(steps)]


def sparse_gradients(steps, nnz=24, seed=2):
    """(values, indices) per step; indices drawn from a quarter of the rows,
    so most steps name rows more than once."""
    rng = np.random.default_rng(seed)
    return [
        (rng.uniform(-1, 1, (nnz, WIDTH)), rng.integers(0, NUM_ROWS // 4, nnz))
        for _ in range(steps)
    ]


def run_steps(optimizer, variables, steps, sparse, graph):
    """Applies every step's gradients; returns the variables and accumulators."""
    dtype = variables[0].dtype

    def to_gradients(step):
        if sparse:
            values, indices = step
            return [
                tf.IndexedSlices(
                    tf.cast(values, dtype), tf.constant(indices), tf.constant([NUM_ROWS, WIDTH])
                )
            ]
        return [tf.cast(g, dtype) for g in step]

    def apply(gradients):
        optimizer.apply_gradients(zip(gradients, variables))

    if graph:
        apply = tf.function(apply)
    for step in steps:
        apply(to_gradients(step))
    return {
        "variables": [as_numpy(v) for v in variables],
        "accumulators": [as_numpy(a) for a in accumulators(optimizer, variables)],
    }


def parity(kind, sparse, graph=False, steps=5, **kwargs):
    """Ours and the counterpart side by side, float32, on the same gradients."""
    ours, theirs = classes(kind)
    shapes = [(NUM_ROWS, WIDTH)] if sparse else DENSE_SHAPES
    gradients = sparse_gradients(steps) if sparse else dense_gradients(shapes, steps)
    kwargs.setdefault("learning_rate", LEARNING_RATE)
    return {
        "ours": run_steps(ours(**kwargs), make_variables(shapes, "float32"), gradients, sparse, graph),
        "theirs": run_steps(
            theirs(**kwargs), make_variables(shapes, "float32"), gradients, sparse, graph
        ),
    }


def dtype_run(kind, sparse, dtype, steps=4):
    """Ours alone in `dtype`, with what a NumPy reference needs to replay it."""
    ours, _ = classes(kind)
    shapes = [(NUM_ROWS, WIDTH)] if sparse else DENSE_SHAPES
    gradients = sparse_gradients(steps) if sparse else dense_gradients(shapes, steps)
    variables = make_variables(shapes, dtype)
    initial = [as_numpy(v) for v in variables]
    result = run_steps(ours(learning_rate=LEARNING_RATE), variables, gradients, sparse, False)
    result.update(initial=initial, gradients=gradients)
    return result


def small_model(sparse, seed=0):
    tf_keras.utils.set_random_seed(seed)
    if sparse:
        inputs = tf_keras.Input((3,), dtype="int32")
        x = tf_keras.layers.Flatten()(tf_keras.layers.Embedding(NUM_ROWS, 4)(inputs))
    else:
        inputs = tf_keras.Input((6,))
        x = tf_keras.layers.Dense(8, activation="relu")(inputs)
    outputs = tf_keras.layers.Dense(1)(tf_keras.layers.Dense(4, activation="relu")(x))
    return tf_keras.Model(inputs, outputs)


def small_data(sparse, rows=64):
    rng = np.random.default_rng(5)
    x = rng.integers(0, NUM_ROWS, (rows, 3)) if sparse else rng.uniform(-1, 1, (rows, 6))
    return x.astype("int32" if sparse else "float32"), rng.uniform(-1, 1, (rows, 1)).astype(
        "float32"
    )


def fit(optimizer, sparse, jit_compile=False, epochs=3):
    model = small_model(sparse)
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    x, y = small_data(sparse)
    history = model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    return model, {
        "loss": history.history["loss"],
        "weights": [w.numpy() for w in model.trainable_weights],
        "accumulators": [
            a.numpy() for a in accumulators(model.optimizer, model.trainable_weights)
        ],
    }


def case_tf_keras_is_tf_keras(work_dir):
    return {"tf.keras": tf.keras.__name__, "version": tf_keras.__version__}


def fit_parity(kind, sparse, exact_graph_math=False):
    """fit() with ours and with the counterpart, same model, data and lr.

    With `exact_graph_math`, Grappler's arithmetic rewrites are off: inside
    tf.function they turn tf_keras' `lr * g / sqrt(a + eps)` into a multiply
    by `rsqrt`, which moves some results by an ulp.
    """
    ours, theirs = classes(kind)
    saved = tf.config.optimizer.get_experimental_options()
    if exact_graph_math:
        tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})
    try:
        return {
            "ours": fit(ours(learning_rate=LEARNING_RATE), sparse)[1],
            "theirs": fit(theirs(learning_rate=LEARNING_RATE), sparse)[1],
        }
    finally:
        tf.config.optimizer.set_experimental_options(
            {"arithmetic_optimization": saved.get("arithmetic_optimization", True)}
        )


def op_counts(kind):
    """Op types in the traced graph of one step over 5 float32 and 2 float64
    dense variables and one sparse (duplicate-index) gradient."""
    ours, _ = classes(kind)
    optimizer = ours(learning_rate=LEARNING_RATE)
    variables = make_variables([(4, 4)] * 5, "float32") + make_variables([(3,)] * 2, "float64")
    table = tf.Variable(tf.ones((NUM_ROWS, WIDTH)))

    @tf.function
    def step():
        gradients = [tf.ones_like(v) for v in variables]
        sparse = tf.IndexedSlices(tf.ones((4, WIDTH)), tf.constant([1, 2, 1, 1]))
        optimizer.apply_gradients(zip(gradients + [sparse], variables + [table]))

    counts = {}
    for op in step.get_concrete_function().graph.get_operations():
        counts[op.type] = counts.get(op.type, 0) + 1
    step()
    return {"counts": counts, "table": table.numpy()}


def case_bad_input(work_dir):
    outcomes = {}
    for kind in ("keras2", "legacy"):
        for label, cls in zip(("ours", "theirs"), classes(kind)):
            for argument in ("epsilon", "initial_accumulator_value"):
                try:
                    cls(**{argument: -0.5})
                    outcome = None
                except Exception as e:  # noqa: BLE001 - recorded for the test
                    outcome = (type(e).__name__, str(e))
                outcomes[f"{kind}/{label}/{argument}"] = outcome
        ours, _ = classes(kind)
        counter = tf.Variable([1, 2], dtype=tf.int32, name="step_counter")
        try:
            ours().apply_gradients([(tf.constant([1, 1]), counter)])
            outcome = None
        except Exception as e:  # noqa: BLE001
            outcome = (type(e).__name__, str(e))
        outcomes[f"{kind}/integer_variable"] = outcome
    return outcomes


def case_configs(work_dir):
    """get_config of ours and the counterpart, and round trips through
    from_config and tf_keras' serialize/deserialize."""
    out = {}
    schedule = tf_keras.optimizers.schedules.ExponentialDecay(0.5, 10, 0.9)
    for kind in ("keras2", "legacy"):
        ours, theirs = classes(kind)
        for label, kwargs in (
            ("plain", dict(learning_rate=0.25, initial_accumulator_value=0.5, epsilon=1e-5)),
            ("schedule", dict(learning_rate=schedule, clipnorm=1.0)),
        ):
            optimizer = ours(**kwargs)
            config = optimizer.get_config()
            from_config = ours.from_config(config)
            serialized = tf_keras.optimizers.serialize(optimizer)
            deserialized = tf_keras.optimizers.deserialize(serialized)
            out[f"{kind}/{label}"] = {
                "config": config,
                "theirs_config": theirs(**kwargs).get_config(),
                "from_config_type": type(from_config).__module__ + "." + type(from_config).__name__,
                "from_config_config": from_config.get_config(),
                "registered_name": serialized.get("registered_name"),
                "deserialized_type": type(deserialized).__module__
                + "."
                + type(deserialized).__name__,
                "deserialized_config": deserialized.get_config(),
            }
    return out


def optimizer_state(optimizer, variables):
    return [a.numpy() for a in accumulators(optimizer, variables)]


def zero_step(optimizer, variables):
    """One step with zero gradients: builds the optimizer (restoring deferred
    checkpoint values) and changes no variable or accumulator."""
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])


def case_save_models(work_dir):
    """Trains a model with each class and saves it as .keras and SavedModel."""
    out = {}
    for kind in ("keras2", "legacy"):
        ours, _ = classes(kind)
        for save_format in ("keras", "tf"):
            model, trained = fit(ours(learning_rate=LEARNING_RATE), sparse=False, epochs=1)
            path = os.path.join(work_dir, f"{kind}_model" + (".keras" if save_format == "keras" else ""))
            model.save(path, save_format=save_format)
            out[f"{kind}/{save_format}"] = {"path": path, **trained}
    return out


def case_load_models(work_dir):
    out = {}
    for kind in ("keras2", "legacy"):
        for save_format in ("keras", "tf"):
            path = os.path.join(work_dir, f"{kind}_model" + (".keras" if save_format == "keras" else ""))
            model = tf_keras.models.load_model(path)
            optimizer = model.optimizer
            zero_step(optimizer, model.trainable_weights)
            out[f"{kind}/{save_format}"] = {
                "type": type(optimizer).__module__ + "." + type(optimizer).__name__,
                "config": optimizer.get_config(),
                "weights": [w.numpy() for w in model.trainable_weights],
                "accumulators": optimizer_state(optimizer, model.trainable_weights),
            }
    return out


def checkpoint_transfer(kind, writer_is_ours, work_dir):
    """Trains with one class, writes a tf.train.Checkpoint, reads it into a
    fresh model with the other class."""
    ours, theirs = classes(kind)
    writer, reader = (ours, theirs) if writer_is_ours else (theirs, ours)
    model, trained = fit(writer(learning_rate=LEARNING_RATE), sparse=True, epochs=1)
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(
        os.path.join(work_dir, f"{kind}_{writer.__module__}_ckpt")
    )
    restored_model = small_model(sparse=True, seed=1)  # other initial weights
    optimizer = reader(learning_rate=LEARNING_RATE)
    tf.train.Checkpoint(model=restored_model, optimizer=optimizer).read(path).expect_partial()
    zero_step(optimizer, restored_model.trainable_weights)
    return {
        "written": trained,
        "read_weights": [w.numpy() for w in restored_model.trainable_weights],
        "read_accumulators": optimizer_state(optimizer, restored_model.trainable_weights),
    }


def xla_step(kind, sparse):
    """The optimizer's step compiled by XLA (the fallback) and eager (the
    fused ops), on the same gradients."""
    ours, _ = classes(kind)
    shapes = [(NUM_ROWS, WIDTH)] if sparse else DENSE_SHAPES
    gradients = sparse_gradients(3) if sparse else dense_gradients(shapes, 3)
    results = {}
    for label, compiled in (("xla", True), ("fused", False)):
        optimizer = ours(learning_rate=LEARNING_RATE)
        variables = make_variables(shapes, "float32")
        if compiled:
            # Variables are made before the first trace, as in fit().
            optimizer.build(variables) if kind == "keras2" else None
        results[label] = run_steps_compiled(optimizer, variables, gradients, sparse, compiled)
    return results


def run_steps_compiled(optimizer, variables, steps, sparse, compiled):
    def apply(gradients):
        optimizer.apply_gradients(zip(gradients, variables))

    if compiled:
        apply = tf.function(apply, jit_compile=True)
    for step in steps:
        if sparse:
            values, indices = step
            apply([tf.IndexedSlices(tf.constant(values, tf.float32), tf.constant(indices))])
        else:
            apply([tf.constant(g, tf.float32) for g in step])
    return {
        "variables": [v.numpy() for v in variables],
        "accumulators": [a.numpy() for a in accumulators(optimizer, variables)],
    }


def xla_fit(kind, sparse):
    ours, _ = classes(kind)
    return {
        label: fit(ours(learning_rate=LEARNING_RATE), sparse, jit_compile=jit)[1]
        for label, jit in (("xla", True), ("fused", False))
    }


TRAIN_CASES = {
    "tf_keras_is_tf_keras": case_tf_keras_is_tf_keras,
    "bad_input": case_bad_input,
    "configs": case_configs,
    "save_models": case_save_models,
}
for _kind in ("keras2", "legacy"):
    for _sparse in (False, True):
        _name = "sparse" if _sparse else "dense"
        TRAIN_CASES[f"parity/{_kind}/{_name}"] = (
            lambda work_dir, k=_kind, s=_sparse: parity(k, s)
        )
        TRAIN_CASES[f"parity_graph/{_kind}/{_name}"] = (
            lambda work_dir, k=_kind, s=_sparse: parity(k, s, graph=True)
        )
        TRAIN_CASES[f"fit_parity/{_kind}/{_name}"] = (
            lambda work_dir, k=_kind, s=_sparse: fit_parity(k, s, exact_graph_math=True)
        )
        TRAIN_CASES[f"xla_step/{_kind}/{_name}"] = lambda work_dir, k=_kind, s=_sparse: xla_step(k, s)
        TRAIN_CASES[f"xla_fit/{_kind}/{_name}"] = lambda work_dir, k=_kind, s=_sparse: xla_fit(k, s)
        for _dtype in ("float16", "bfloat16", "float64"):
            TRAIN_CASES[f"dtype/{_kind}/{_name}/{_dtype}"] = (
                lambda work_dir, k=_kind, s=_sparse, d=_dtype: dtype_run(k, s, d)
            )
    TRAIN_CASES[f"fit_parity_grappler/{_kind}"] = lambda work_dir, k=_kind: fit_parity(k, True)
    TRAIN_CASES[f"op_counts/{_kind}"] = lambda work_dir, k=_kind: op_counts(k)
    for _writer_is_ours in (True, False):
        TRAIN_CASES[f"checkpoint/{_kind}/{'ours' if _writer_is_ours else 'theirs'}_to_other"] = (
            lambda work_dir, k=_kind, w=_writer_is_ours: checkpoint_transfer(k, w, work_dir)
        )

FEATURES = {
    # Clipping, weight decay and EMA run in the base class, around our update.
    "keras2": dict(
        global_clipnorm=1.5, weight_decay=0.01, use_ema=True, ema_overwrite_frequency=2
    ),
    # Clipping and the learning rate decay run in the base class.
    "legacy": dict(clipnorm=0.7, decay=0.05),
}
for _kind, _kwargs in FEATURES.items():
    for _sparse in (False, True):
        TRAIN_CASES[f"features/{_kind}/{'sparse' if _sparse else 'dense'}"] = (
            lambda work_dir, k=_kind, s=_sparse, kw=_kwargs: parity(k, s, **kw)
        )

LOAD_CASES = {"load_models": case_load_models}


def main(group, work_dir, out_path):
    cases = TRAIN_CASES if group == "train" else LOAD_CASES
    results = {}
    for name, case in cases.items():
        try:
            results[name] = case(work_dir)
        except Exception:  # noqa: BLE001 - reported by the case's test
            results[name] = {"error": traceback.format_exc()}
    with open(out_path, "wb") as f:
        pickle.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
