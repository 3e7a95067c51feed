"""The tf_keras work of tests/test_keras2_optimizers.py and (the cases of
keras2_rowwise_cases.py) tests/test_keras2_rowwise.py, run in a child
process with `TF_USE_LEGACY_KERAS=1` (set here, before TensorFlow is
imported), once for both modules (conftest.py's session fixtures).

`python keras2_cases.py GROUP WORK_DIR OUT [PREFIXES]` runs every case of
GROUP ("train"; then "load", in a fresh process that sees only the files
"train" saved in WORK_DIR), or those whose names begin with one of the
comma-separated PREFIXES, and pickles {case name: result} to OUT. A result is a
dict of plain values and NumPy arrays, or {"error": traceback} if the case
raised, so that a broken case fails its own test only. The assertions, and
the NumPy references, are in the test module.
"""

import contextlib
import os
import pickle
import sys
import traceback
from functools import partial

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from graph_math import exact_graph_math  # noqa: E402
from keras2_rowwise_cases import rowwise_cases  # noqa: E402

# The top-level package only: importing it must register the tf_keras
# classes, which the "load" group relies on.
import tf_adagrad  # noqa: E402

LEARNING_RATE = 0.1
DENSE_SHAPES = [(7,), (5, 3), (2, 3, 4)]
NUM_ROWS, WIDTH = 40, 3
KINDS = ("keras2", "legacy")
# Features that run in the base classes, around the update.
FEATURES = {
    "keras2": dict(global_clipnorm=1.5, weight_decay=0.01, use_ema=True, ema_overwrite_frequency=2),
    "legacy": dict(clipnorm=0.7, decay=0.05),
}


def classes(kind):
    """(tf_adagrad's class, its tf_keras counterpart) for "keras2" or "legacy"."""
    if kind == "legacy":
        return tf_adagrad.keras2.legacy.Adagrad, tf_keras.optimizers.legacy.Adagrad
    return tf_adagrad.keras2.Adagrad, tf_keras.optimizers.Adagrad


def qualified_name(obj):
    return f"{type(obj).__module__}.{type(obj).__name__}"


def accumulators(optimizer, variables):
    if isinstance(optimizer, tf_keras.optimizers.legacy.Optimizer):
        return [optimizer.get_slot(v, "accumulator") for v in variables]
    # The new optimizer keeps them in var_list order, with no public accessor.
    return [
        optimizer._accumulators[optimizer._index_dict[optimizer._var_key(v)]] for v in variables
    ]


def as_numpy(tensor):
    # bfloat16 widens to float32 exactly, and unpickles without ml_dtypes.
    value = tf.convert_to_tensor(tensor)
    if value.dtype == tf.bfloat16:
        value = tf.cast(value, tf.float32)
    return value.numpy()


def state(optimizer, variables):
    return {
        "variables": [as_numpy(v) for v in variables],
        "accumulators": [as_numpy(a) for a in accumulators(optimizer, variables)],
    }


def make_variables(shapes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [
        tf.Variable(tf.cast(rng.uniform(-1, 1, shape), dtype), name=f"v{i}")
        for i, shape in enumerate(shapes)
    ]


def gradient_steps(sparse, steps, seed=1):
    """NumPy float64 gradients: per step, one array per dense shape, or one
    (values, indices) pair for a (NUM_ROWS, WIDTH) table whose indices come
    from a quarter of the rows, so that most steps name rows more than once
    (as the gradient of a `tf.gather` of repeated ids does)."""
    rng = np.random.default_rng(seed)
    if sparse:
        return [
            (rng.uniform(-1, 1, (24, WIDTH)), rng.integers(0, NUM_ROWS // 4, 24))
            for _ in range(steps)
        ]
    return [[rng.uniform(-1, 1, shape) for shape in DENSE_SHAPES] for _ in range(steps)]


def shapes_of(sparse):
    return [(NUM_ROWS, WIDTH)] if sparse else DENSE_SHAPES


def run_steps(optimizer, variables, steps, sparse, graph=False, jit_compile=False):
    """Applies each step's gradients with `apply_gradients`: eagerly, or in a
    tf.function (compiled by XLA with `jit_compile`)."""
    dtype = variables[0].dtype

    def apply(gradients):
        optimizer.apply_gradients(zip(gradients, variables))

    if graph or jit_compile:
        apply = tf.function(apply, jit_compile=jit_compile)
    for step in steps:
        if sparse:
            values, indices = step
            gradients = [
                tf.IndexedSlices(
                    tf.cast(values, dtype), tf.constant(indices), tf.constant([NUM_ROWS, WIDTH])
                )
            ]
        else:
            gradients = [tf.cast(g, dtype) for g in step]
        apply(gradients)
    return state(optimizer, variables)


def parity(kind, sparse, graph=False, graph_math_exact=False, steps=5, **kwargs):
    """Ours and the counterpart side by side, float32, on the same gradients."""
    kwargs.setdefault("learning_rate", LEARNING_RATE)
    gradients = gradient_steps(sparse, steps)
    context = exact_graph_math() if graph_math_exact else contextlib.nullcontext()
    with context:
        return {
            label: run_steps(
                cls(**kwargs),
                make_variables(shapes_of(sparse), "float32"),
                gradients,
                sparse,
                graph,
            )
            for label, cls in zip(("ours", "theirs"), classes(kind))
        }


def ema_rows(steps=7, **options):
    """keras2 with use_ema (overwriting every 3 steps) on the sparse table,
    ours and (without `options`) tf_keras' side by side from the same start: the state after
    `steps` (step 7 leaves rows waiting), ours' per-row EMA steps and its
    count, and both after finalize_variable_values."""
    gradients = gradient_steps(True, steps)
    out = {}
    # weight_decay_rows is ours alone.
    pairs = list(zip(("ours", "theirs"), classes("keras2")))[: 1 if options else 2]
    for label, cls in pairs:
        optimizer = cls(
            learning_rate=LEARNING_RATE,
            use_ema=True,
            ema_momentum=0.9,
            ema_overwrite_frequency=3,
            **options,
        )
        variables = make_variables(shapes_of(True), "float32")
        out[label] = run_steps(optimizer, variables, gradients, True)
        if label == "ours":
            last_step, count = next(iter(optimizer._ema_states.values()))
            out["last_step"], out["count"] = as_numpy(last_step), int(count.numpy())
        optimizer.finalize_variable_values(variables)
        out[label]["final"] = [as_numpy(v) for v in variables]
    out["named_rows"] = sorted({int(i) for _, indices in gradients for i in indices})
    return out


def dtype_run(kind, sparse, dtype, steps=4):
    """Ours alone in `dtype`, with what a NumPy reference needs to replay it."""
    ours, _ = classes(kind)
    # Rounded to `dtype` here, so the reference sees the values applied.
    gradients = [
        (as_numpy(tf.cast(step[0], dtype)), step[1])
        if sparse
        else [as_numpy(tf.cast(g, dtype)) for g in step]
        for step in gradient_steps(sparse, steps)
    ]
    variables = make_variables(shapes_of(sparse), dtype)
    initial = [as_numpy(v) for v in variables]
    result = run_steps(ours(learning_rate=LEARNING_RATE), variables, gradients, sparse)
    result.update(initial=initial, gradients=gradients)
    return result


def xla_step(kind, sparse):
    """The optimizer's step compiled by XLA (the fallback) and eagerly (the
    fused ops), on the same gradients."""
    ours, _ = classes(kind)
    gradients = gradient_steps(sparse, 3)
    return {
        label: run_steps(
            ours(learning_rate=LEARNING_RATE),
            make_variables(shapes_of(sparse), "float32"),
            gradients,
            sparse,
            jit_compile=jit_compile,
        )
        for label, jit_compile in (("xla", True), ("fused", False))
    }


def small_model(sparse, seed=0):
    """Built through `tf.keras`, which is tf_keras with TF_USE_LEGACY_KERAS=1."""
    keras = tf.keras
    keras.utils.set_random_seed(seed)
    if sparse:
        inputs = keras.Input((3,), dtype="int32")
        x = keras.layers.Flatten()(keras.layers.Embedding(NUM_ROWS, 4)(inputs))
    else:
        inputs = keras.Input((6,))
        x = keras.layers.Dense(8, activation="relu")(inputs)
    outputs = keras.layers.Dense(1)(keras.layers.Dense(4, activation="relu")(x))
    return keras.Model(inputs, outputs)


def small_data(sparse, rows=64):
    rng = np.random.default_rng(5)
    if sparse:
        x = rng.integers(0, NUM_ROWS, (rows, 3)).astype("int32")
    else:
        x = rng.uniform(-1, 1, (rows, 6)).astype("float32")
    return x, rng.uniform(-1, 1, (rows, 1)).astype("float32")


def fit(optimizer, sparse, jit_compile=False, epochs=3):
    model = small_model(sparse)
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    x, y = small_data(sparse)
    history = model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    return model, {
        "loss": history.history["loss"],
        "weights": [w.numpy() for w in model.trainable_weights],
        "accumulators": [a.numpy() for a in accumulators(model.optimizer, model.trainable_weights)],
    }


def fit_parity(kind, sparse, graph_math_exact):
    """fit() with ours and with the counterpart: same model, data and lr."""
    context = exact_graph_math() if graph_math_exact else contextlib.nullcontext()
    with context:
        return {
            label: fit(cls(learning_rate=LEARNING_RATE), sparse)[1]
            for label, cls in zip(("ours", "theirs"), classes(kind))
        }


def xla_fit(kind, sparse):
    """fit() of a model compiled with jit_compile=True and without."""
    ours, _ = classes(kind)
    return {
        label: fit(ours(learning_rate=LEARNING_RATE), sparse, jit_compile=jit_compile)[1]
        for label, jit_compile in (("xla", True), ("fused", False))
    }


def op_counts(kind):
    """Op types in the traced graph of one step over 5 float32 and 2 float64
    dense variables and a table with a duplicate-index sparse gradient."""
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
    return counts


def outcome(call, *args, **kwargs):
    """(exception class name, message) of `call(*args, **kwargs)`, or None
    if it returned."""
    try:
        call(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - recorded for the test to judge
        return type(e).__name__, str(e)
    return None


def case_tf_keras_is_tf_keras():
    return {"tf.keras": tf.keras.__name__, "version": tf_keras.__version__}


def case_bad_input():
    outcomes = {}
    for kind in KINDS:
        for label, cls in zip(("ours", "theirs"), classes(kind)):
            for argument in ("epsilon", "initial_accumulator_value"):
                outcomes[f"{kind}/{label}/{argument}"] = outcome(cls, **{argument: -0.5})
        ours, _ = classes(kind)
        counter = tf.Variable([1, 2], dtype=tf.int32, name="step_counter")
        outcomes[f"{kind}/integer_variable"] = outcome(
            ours().apply_gradients, [(tf.constant([1, 1]), counter)]
        )
    return outcomes


def case_configs():
    """get_config of ours and the counterpart, and round trips through
    from_config and tf_keras' serialize/deserialize."""
    out = {}
    schedule = tf_keras.optimizers.schedules.ExponentialDecay(0.5, 10, 0.9)
    for kind in KINDS:
        ours, theirs = classes(kind)
        for label, kwargs in (
            ("plain", dict(learning_rate=0.25, initial_accumulator_value=0.5, epsilon=1e-5)),
            ("schedule", dict(learning_rate=schedule, clipnorm=1.0)),
        ):
            optimizer = ours(**kwargs)
            from_config = ours.from_config(optimizer.get_config())
            serialized = tf_keras.optimizers.serialize(optimizer)
            deserialized = tf_keras.optimizers.deserialize(serialized)
            out[f"{kind}/{label}"] = {
                "config": optimizer.get_config(),
                "theirs_config": theirs(**kwargs).get_config(),
                "from_config_type": qualified_name(from_config),
                "from_config_config": from_config.get_config(),
                "registered_name": serialized.get("registered_name"),
                "deserialized_type": qualified_name(deserialized),
                "deserialized_config": deserialized.get_config(),
            }
    return out


def case_use_locking():
    """`use_locking` of the tf_keras classes: in the config only when set,
    kept by from_config, refused unless a bool."""
    out = {}
    for cls in (tf_adagrad.keras2.Adagrad, tf_adagrad.keras2.RowwiseAdagrad):
        name = cls.__name__
        locking = cls(use_locking=True)
        out[name] = {
            "default_config_keys": sorted(cls().get_config()),
            "config": locking.get_config().get("use_locking"),
            "from_config": cls.from_config(locking.get_config()).use_locking,
            "bad": outcome(cls, use_locking="yes"),
        }
    return out


def zero_step(optimizer, variables):
    """One step with zero gradients: builds the optimizer (so restored
    values reach its variables) and changes no variable or accumulator."""
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])


def model_path(work_dir, kind, save_format):
    return os.path.join(work_dir, f"{kind}_model" + (".keras" if save_format == "keras" else ""))


def case_save_models(work_dir):
    """Trains a model with each class and saves it as .keras and SavedModel."""
    out = {}
    for kind in KINDS:
        ours, _ = classes(kind)
        for save_format in ("keras", "tf"):
            model, trained = fit(ours(learning_rate=LEARNING_RATE), sparse=True, epochs=1)
            model.save(model_path(work_dir, kind, save_format), save_format=save_format)
            out[f"{kind}/{save_format}"] = {"config": model.optimizer.get_config(), **trained}
    return out


def case_load_models(work_dir):
    out = {}
    for kind in KINDS:
        for save_format in ("keras", "tf"):
            path = model_path(work_dir, kind, save_format)
            model = tf_keras.models.load_model(path)
            if save_format == "tf":
                # load_model leaves a SavedModel's optimizer state behind (for
                # tf_keras' own optimizers too); its checkpoint holds it.
                model.load_weights(os.path.join(path, "variables", "variables"))
            zero_step(model.optimizer, model.trainable_weights)
            out[f"{kind}/{save_format}"] = {
                "type": qualified_name(model.optimizer),
                "config": model.optimizer.get_config(),
                "weights": [w.numpy() for w in model.trainable_weights],
                "accumulators": [
                    a.numpy() for a in accumulators(model.optimizer, model.trainable_weights)
                ],
            }
    return out


def checkpoint_transfer(kind, writer_is_ours, work_dir):
    """Trains with one class, writes a tf.train.Checkpoint, and reads it into
    a fresh model (other initial weights) with the other class."""
    ours, theirs = classes(kind)
    writer, reader = (ours, theirs) if writer_is_ours else (theirs, ours)
    model, trained = fit(writer(learning_rate=LEARNING_RATE), sparse=True, epochs=1)
    prefix = os.path.join(work_dir, f"{kind}_{'ours' if writer_is_ours else 'theirs'}_ckpt")
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(prefix)
    restored_model = small_model(sparse=True, seed=1)
    optimizer = reader(learning_rate=LEARNING_RATE)
    status = tf.train.Checkpoint(model=restored_model, optimizer=optimizer).read(path)
    zero_step(optimizer, restored_model.trainable_weights)
    status.assert_consumed()  # every saved value found its variable
    return {
        "written": trained,
        "read_type": qualified_name(optimizer),
        "read_weights": [w.numpy() for w in restored_model.trainable_weights],
        "read_accumulators": [
            a.numpy() for a in accumulators(optimizer, restored_model.trainable_weights)
        ],
    }


def train_cases(work_dir):
    """The cases of the "train" group, by name."""
    cases = {
        "tf_keras_is_tf_keras": case_tf_keras_is_tf_keras,
        "bad_input": case_bad_input,
        "configs": case_configs,
        "use_locking": case_use_locking,
        "save_models": partial(case_save_models, work_dir),
        "ema_rows/keras2/sparse": ema_rows,
        "ema_rows_in_batch_decay/keras2/sparse": partial(
            ema_rows, weight_decay=0.01, weight_decay_rows="in_batch"
        ),
    }
    for kind in KINDS:
        for sparse in (False, True):
            gradient = "sparse" if sparse else "dense"
            cases[f"parity/{kind}/{gradient}"] = partial(parity, kind, sparse)
            # tf_keras' own Adagrad needs Grappler's rewrite off to be exact
            # in a graph; the legacy one runs TensorFlow's fused op.
            cases[f"parity_graph/{kind}/{gradient}"] = partial(
                parity, kind, sparse, graph=True, graph_math_exact=kind == "keras2"
            )
            cases[f"features/{kind}/{gradient}"] = partial(parity, kind, sparse, **FEATURES[kind])
            cases[f"fit/{kind}/{gradient}"] = partial(
                fit_parity, kind, sparse, graph_math_exact=kind == "keras2"
            )
            cases[f"xla_step/{kind}/{gradient}"] = partial(xla_step, kind, sparse)
            cases[f"xla_fit/{kind}/{gradient}"] = partial(xla_fit, kind, sparse)
            for dtype in ("float16", "bfloat16", "float64"):
                cases[f"dtype/{kind}/{gradient}/{dtype}"] = partial(dtype_run, kind, sparse, dtype)
        cases[f"op_counts/{kind}"] = partial(op_counts, kind)
        for writer_is_ours in (True, False):
            writer = "ours" if writer_is_ours else "theirs"
            cases[f"checkpoint/{kind}/{writer}_to_other"] = partial(
                checkpoint_transfer, kind, writer_is_ours, work_dir
            )
    cases["fit_default_grappler/keras2"] = partial(fit_parity, "keras2", True, False)
    cases.update(rowwise_cases(work_dir))
    return cases


def main(group, work_dir, out_path, prefixes=None):
    if group == "train":
        cases = train_cases(work_dir)
    else:
        cases = {"load_models": partial(case_load_models, work_dir)}
    if prefixes is not None:
        wanted = prefixes.split(",")
        cases = {name: case for name, case in cases.items() if name.startswith(tuple(wanted))}
    results = {}
    for name, case in cases.items():
        try:
            results[name] = case()
        except Exception:  # noqa: BLE001 - reported by the case's test
            results[name] = {"error": traceback.format_exc()}
    with open(out_path, "wb") as f:
        pickle.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
