"""Loss scaling with sparse gradients: `loss_scale_factor` on the Keras 3
optimizers and `tf_adagrad.LossScaleOptimizer` divide and check only the
values of a `tf.IndexedSlices` gradient, never the whole table.

The scales are powers of two, so a scaled gradient divided by its scale is
the unscaled gradient bit for bit: runs with and without scaling compare
exactly."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adagrad
from support.adagrad_reference import bits
from support.graph_math import exact_graph_math, ops_in
from support.keras_reference import DensifyingKerasAdagrad, apply_steps, make_variables

ROWS, DIM, IDS_PER_EXAMPLE = 20, 4, 3
LR, INITIAL_ACCUMULATOR, EPSILON = 0.1, 0.1, 1e-7


def embedding_data(examples=64, seed=0):
    """ids (20 rows, 3 per example: every batch repeats some) and targets."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, ROWS, (examples, IDS_PER_EXAMPLE)).astype(np.int32)
    targets = rng.uniform(-1, 1, (examples, IDS_PER_EXAMPLE * DIM)).astype(np.float32)
    return ids, targets


def embedding_only_model(seed=3):
    """Its prediction is the looked-up rows, so the gradient is easy to
    write in NumPy."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((IDS_PER_EXAMPLE,), dtype="int32"),
            keras.layers.Embedding(ROWS, DIM),
            keras.layers.Flatten(),
        ]
    )


def numpy_reference_fit(table, ids, targets, batch_size):
    """Adagrad with the dense gradient of a mean-squared-error fit(), in
    float64: duplicate ids' rows are summed into the gradient before
    `acc += g * g; table -= lr * g / sqrt(acc + eps)`."""
    table = table.astype(np.float64)
    accumulator = np.full_like(table, INITIAL_ACCUMULATOR)
    for start in range(0, len(ids), batch_size):
        batch_ids, batch_targets = (
            ids[start : start + batch_size],
            targets[start : start + batch_size],
        )
        prediction = table[batch_ids].reshape(batch_targets.shape)
        # Keras' "mse": the mean over the features, then over the batch.
        d_prediction = 2 * (prediction - batch_targets) / batch_targets.size
        gradient = np.zeros_like(table)
        np.add.at(gradient, batch_ids, d_prediction.reshape(len(batch_ids), -1, DIM))
        accumulator += gradient * gradient
        table -= LR * gradient / np.sqrt(accumulator + EPSILON)
    return table


def fit_embedding_model(optimizer, ids, targets, batch_size):
    model = embedding_only_model()
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(ids, targets, batch_size=batch_size, shuffle=False, verbose=0)
    return model


def test_loss_scale_factor_in_fit_with_repeated_ids_equals_numpy_and_unscaled_run():
    ids, targets = embedding_data()
    initial_table = embedding_only_model().weights[0].numpy()
    kwargs = dict(learning_rate=LR, initial_accumulator_value=INITIAL_ACCUMULATOR, epsilon=EPSILON)
    scaled = fit_embedding_model(
        tf_adagrad.Adagrad(loss_scale_factor=128.0, **kwargs), ids, targets, 16
    )
    unscaled = fit_embedding_model(tf_adagrad.Adagrad(**kwargs), ids, targets, 16)
    expected = numpy_reference_fit(initial_table, ids, targets, 16)
    table = scaled.weights[0].numpy()
    assert not np.array_equal(table, initial_table)
    np.testing.assert_array_equal(bits(table), bits(unscaled.weights[0].numpy()))
    # float32 against float64: every entry and update is below 0.06 in
    # magnitude, so each float32 rounding errs by under 0.06 * 2**-24 =
    # 3.6e-9, and four steps of a few roundings each stay under 2e-8 (5e-9
    # seen). Relative error means little here: updates cancel entries.
    np.testing.assert_allclose(table, expected, rtol=0, atol=2e-8)
    assert np.abs(expected).max() < 0.06


def test_loss_scale_factor_in_fit_of_dense_model_equals_keras_adagrad():
    """Dense gradients are unscaled exactly as Keras unscales them."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = rng.standard_normal((64, 1)).astype(np.float32)
    weights = []
    for optimizer_class in (tf_adagrad.Adagrad, keras.optimizers.Adagrad):
        keras.utils.set_random_seed(4)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5), keras.layers.Dense(1)])
        model.compile(
            optimizer=optimizer_class(learning_rate=LR, loss_scale_factor=256.0), loss="mse"
        )
        # Grappler's rewrite of Keras' own formula off (see exact_graph_math).
        with exact_graph_math():
            model.fit(x, y, batch_size=16, shuffle=False, verbose=0)
        weights.append([w.numpy() for w in model.weights])
    for ours, theirs in zip(*weights):
        np.testing.assert_array_equal(bits(ours), bits(theirs))


def sparse_and_dense_steps(steps, scale, seed=6):
    """Per step: a (20, 4) table's IndexedSlices with repeated indices and a
    (4,) bias's dense gradient, each multiplied by `scale`."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        values = rng.uniform(-1, 1, (8, DIM)) * scale
        indices = tf.constant(rng.integers(0, ROWS, 8), tf.int64)
        table = tf.IndexedSlices(tf.constant(values), indices, tf.constant([ROWS, DIM], tf.int64))
        out.append([table, tf.constant(rng.uniform(-1, 1, DIM) * scale)])
    return out


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("optimizer_class", [tf_adagrad.Adagrad, tf_adagrad.RowwiseAdagrad])
def test_loss_scale_factor_unscales_indexed_slices_values(optimizer_class, graph):
    scaled_vars, unscaled_vars = (make_variables([(ROWS, DIM), (DIM,)]) for _ in range(2))
    scaled = optimizer_class(learning_rate=LR, loss_scale_factor=64.0)
    apply_steps(scaled, scaled_vars, sparse_and_dense_steps(3, 64.0), graph=graph)
    unscaled = optimizer_class(learning_rate=LR)
    apply_steps(unscaled, unscaled_vars, sparse_and_dense_steps(3, 1.0), graph=graph)
    for a, b in zip(scaled_vars + scaled.variables, unscaled_vars + unscaled.variables):
        np.testing.assert_array_equal(bits(a.numpy()), bits(b.numpy()), err_msg=a.path)


def embedding_dense_model(seed=7):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((IDS_PER_EXAMPLE,), dtype="int32"),
            keras.layers.Embedding(ROWS, DIM),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )


def poisonable_step(model, optimizer, scaled):
    """A step whose table gradient's values are multiplied by `poison`."""

    @tf.function
    def step(ids, targets, poison):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(ids) - targets))
            if scaled:
                loss = optimizer.scale_loss(loss)
        table, *rest = tape.gradient(loss, model.trainable_variables)
        assert isinstance(table, tf.IndexedSlices)
        table = tf.IndexedSlices(table.values * poison, table.indices, table.dense_shape)
        optimizer.apply([table, *rest], model.trainable_variables)

    return step


def test_loss_scale_optimizer_skips_nonfinite_steps_and_updates_its_scale_as_keras():
    """Steps 2 (inf) and 5 (NaN) are skipped: no variable, accumulator or
    iteration count moves, and the scale halves. The others update as an
    unscaled tf_adagrad.Adagrad does, bit for bit, and the scale doubles
    after every two finite steps in a row. Keras' LossScaleOptimizer around
    Keras' Adagrad (on the densified gradient) gives the same variables and
    scales."""
    rng = np.random.default_rng(2)
    ids = rng.integers(0, ROWS, (7, 8, IDS_PER_EXAMPLE)).astype(np.int32)
    targets = rng.uniform(-1, 1, (7, 8, 1)).astype(np.float32)
    poisons = {2: np.inf, 5: np.nan}
    runs = {
        "ours": tf_adagrad.LossScaleOptimizer(tf_adagrad.Adagrad(LR), 2.0**10, 2),
        "keras": keras.optimizers.LossScaleOptimizer(DensifyingKerasAdagrad(LR), 2.0**10, 2),
        "unscaled": tf_adagrad.Adagrad(LR),
    }
    models = {name: embedding_dense_model() for name in runs}
    steps = {name: poisonable_step(models[name], runs[name], name != "unscaled") for name in runs}
    scales = {"ours": [], "keras": []}
    with exact_graph_math():  # Keras' Adagrad's formula as written
        for i in range(len(ids)):
            poison = tf.constant(poisons.get(i, 1.0), tf.float32)
            before = [v.numpy() for v in models["ours"].weights + runs["ours"].variables]
            for name in ("ours", "keras"):
                steps[name](ids[i], targets[i], poison)
                scales[name].append(float(runs[name].dynamic_scale.numpy()))
            if i in poisons:
                after = models["ours"].weights + runs["ours"].variables
                for b, a in zip(before, after):
                    if a.path.endswith(("step_counter", "dynamic_scale")):
                        continue
                    np.testing.assert_array_equal(bits(b), bits(a.numpy()), err_msg=a.path)
                continue
            steps["unscaled"](ids[i], targets[i], tf.constant(1.0))
            for name in ("keras", "unscaled"):
                pairs = zip(
                    models["ours"].weights + runs["ours"].inner_optimizer.variables,
                    models[name].weights + _inner(runs[name]).variables,
                )
                for a, b in pairs:
                    np.testing.assert_array_equal(bits(a.numpy()), bits(b.numpy()), err_msg=name)
    assert scales["ours"] == [1024, 2048, 1024, 1024, 2048, 1024, 1024]
    assert scales["ours"] == scales["keras"]
    assert int(runs["ours"].iterations.numpy()) == 5


def _inner(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


BIG_ROWS = 1_000_000


def table_sized_tensors(optimizer, variable=keras.Variable):
    """The tensors, inputs or outputs of any op, of one optimizer step on a
    1M-row table's IndexedSlices (256 rows) and a dense bias gradient that
    have a million elements or more, or a shape not known when traced."""
    table = variable(np.zeros((BIG_ROWS, DIM), np.float32))
    bias = variable(np.zeros((DIM,), np.float32))

    @tf.function
    def step(values, indices, bias_gradient):
        grads = [tf.IndexedSlices(values, indices, tf.constant([BIG_ROWS, DIM])), bias_gradient]
        if isinstance(optimizer, keras.optimizers.Optimizer):
            optimizer.apply(grads, [table, bias])
        else:  # tf_keras'
            optimizer.apply_gradients(zip(optimizer.get_unscaled_gradients(grads), [table, bias]))

    graph = step.get_concrete_function(
        tf.TensorSpec([256, DIM]), tf.TensorSpec([256], tf.int32), tf.TensorSpec([DIM])
    ).graph
    return [
        f"{op.type} {op.name}: {tensor.shape}"
        for op in ops_in(graph)
        for tensor in list(op.inputs) + list(op.outputs)
        if tensor.dtype != tf.resource
        and not (tensor.shape.is_fully_defined() and tensor.shape.num_elements() < BIG_ROWS)
    ]


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda: tf_adagrad.LossScaleOptimizer(tf_adagrad.Adagrad()),
        lambda: tf_adagrad.Adagrad(loss_scale_factor=128.0),
    ],
    ids=["LossScaleOptimizer", "loss_scale_factor"],
)
def test_loss_scaled_step_builds_no_table_sized_tensor(make_optimizer):
    assert table_sized_tensors(make_optimizer()) == []


def test_keras_loss_scale_optimizer_densifies_the_finite_check():
    """What tf_adagrad.LossScaleOptimizer avoids, and proof that the check
    above sees it: Keras' check builds a table-sized boolean tensor."""
    found = table_sized_tensors(keras.optimizers.LossScaleOptimizer(tf_adagrad.Adagrad()))
    assert any(tensor.endswith(f"({BIG_ROWS}, {DIM})") for tensor in found), found


@pytest.mark.parametrize("inner", ["keras2.Adagrad", "keras2.legacy.Adagrad"])
def test_tf_keras_loss_scale_optimizer_checks_and_unscales_only_values(inner):
    """Why tf_adagrad.keras2 has no LossScaleOptimizer of its own: tf_keras'
    finite check and unscaling already read only a tf.IndexedSlices' values."""
    import tf_keras

    inner_optimizer = {
        "keras2.Adagrad": tf_adagrad.keras2.Adagrad,
        "keras2.legacy.Adagrad": tf_adagrad.keras2.legacy.Adagrad,
    }[inner]()
    optimizer = tf_keras.mixed_precision.LossScaleOptimizer(inner_optimizer)
    assert table_sized_tensors(optimizer, variable=tf.Variable) == []


def test_inner_optimizer_must_be_a_keras_3_optimizer():
    inner = tf_adagrad.keras2.Adagrad()
    with pytest.raises(
        TypeError, match=r"must be a Keras 3 optimizer .*received: <tf_adagrad\.keras2\.Adagrad"
    ):
        tf_adagrad.LossScaleOptimizer(inner)


def test_get_config_round_trip():
    optimizer = tf_adagrad.LossScaleOptimizer(
        tf_adagrad.Adagrad(learning_rate=0.05, epsilon=1e-6),
        initial_scale=2.0**8,
        dynamic_growth_steps=50,
        name="scaled",
    )
    config = optimizer.get_config()
    assert config["inner_optimizer"]["registered_name"] == "tf_adagrad>Adagrad"
    restored = tf_adagrad.LossScaleOptimizer.from_config(dict(config))  # Keras' pops from it
    assert type(restored.inner_optimizer) is tf_adagrad.Adagrad
    assert restored.get_config() == config
    serialized = keras.optimizers.serialize(optimizer)
    assert serialized["registered_name"] == "tf_adagrad>LossScaleOptimizer"
    assert type(keras.optimizers.deserialize(serialized)) is tf_adagrad.LossScaleOptimizer


def test_keras_file_round_trip(tmp_path):
    ids = np.random.default_rng(8).integers(0, ROWS, (64, IDS_PER_EXAMPLE)).astype(np.int32)
    targets = np.random.default_rng(9).uniform(-1, 1, (64, 1)).astype(np.float32)
    model = embedding_dense_model()
    optimizer = tf_adagrad.LossScaleOptimizer(
        tf_adagrad.Adagrad(LR), initial_scale=2.0**12, dynamic_growth_steps=3
    )
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(ids, targets, batch_size=16, shuffle=False, verbose=0)
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**13  # grew after 3 of 4 steps
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is tf_adagrad.LossScaleOptimizer
    assert type(loaded.optimizer.inner_optimizer) is tf_adagrad.Adagrad
    assert loaded.optimizer.get_config() == optimizer.get_config()
    for a, b in zip(
        loaded.weights + loaded.optimizer.variables, model.weights + optimizer.variables
    ):
        np.testing.assert_array_equal(bits(a.numpy()), bits(b.numpy()), err_msg=b.path)


def test_compile_under_mixed_float16_keeps_tf_adagrad_loss_scale_optimizer():
    """compile() wraps only optimizers that are not LossScaleOptimizers."""
    ids, targets = np.zeros((32, IDS_PER_EXAMPLE), np.int32), np.ones((32, 1), np.float32)
    previous_policy = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        # A scale at which these float16 gradients stay finite: no step skipped.
        ours = tf_adagrad.LossScaleOptimizer(tf_adagrad.Adagrad(LR), initial_scale=2.0**8)
        model = embedding_dense_model()
        model.compile(optimizer=ours, loss="mse")
        assert model.optimizer is ours
        model.fit(ids, targets, batch_size=16, verbose=0)
        assert int(ours.iterations.numpy()) == 2
        plain = embedding_dense_model()
        plain.compile(optimizer=tf_adagrad.Adagrad(LR), loss="mse")
        assert type(plain.optimizer) is keras.optimizers.LossScaleOptimizer
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


@pytest.mark.slow  # a child process with two logical CPUs: about 9 s
def test_fit_under_mirrored_strategy_equals_one_device(tmp_path):
    """loss_scale_factor and tf_adagrad.LossScaleOptimizer in fit() over 2
    replicas (tests/support/loss_scaling_mirrored.py, in a process of its
    own), where each replica unscales and checks its IndexedSlices in a
    thread of its own while the step is traced."""
    from support.processes import run_to_completion

    out = tmp_path / "mirrored.npz"
    script = os.path.join(os.path.dirname(__file__), "support", "loss_scaling_mirrored.py")
    run_to_completion(tmp_path, "loss_scaling_mirrored", script, str(out))
    result = np.load(out)
    assert int(result["replicas"]) == 2
    for case in ("factor", "optimizer"):
        for i in range(3):  # table, kernel, bias
            # Each step moves an entry by under lr = 0.1 (|g| / sqrt(acc) < 1);
            # the replicas' gradients, summed in another order, differ by an
            # ulp or two, which moves a step by 0.1 * 2**-23 = 1.2e-8 per ulp:
            # four steps stay under 1e-7.
            np.testing.assert_allclose(
                result[f"{case}:mirrored:{i}"], result[f"{case}:single:{i}"], rtol=0, atol=1e-7
            )
    # Four finite steps from 2**10, doubling after every two.
    assert (
        float(result["optimizer:mirrored:scale"])
        == float(result["optimizer:single:scale"])
        == 2.0**12
    )
