"""tf_adagrad.Adagrad against keras.optimizers.Adagrad and NumPy: the update
math, sparse gradients, dtypes, and the constructor."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adagrad
from support.adagrad_reference import bits, dense_step_exact, sparse_step_exact
from support.keras_reference import (
    DensifyingKerasAdagrad,
    apply_steps,
    exact_graph_math,
    make_variables,
    random_gradients,
)
from tf_adagrad import sharded

SHAPES = [(7,), (5, 3), (2, 3, 4)]


def run_both(shapes, gradient_steps, dtype="float32", graph=False, reference=None, **kwargs):
    ours = apply_steps(
        tf_adagrad.Adagrad(**kwargs), make_variables(shapes, dtype), gradient_steps, graph=graph
    )
    reference = reference or keras.optimizers.Adagrad
    theirs = apply_steps(reference(**kwargs), make_variables(shapes, dtype), gradient_steps)
    return ours, theirs


def assert_bit_identical(ours, theirs):
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(bits(a), bits(b))


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dense_is_bit_identical_to_keras(dtype, graph):
    steps = random_gradients(SHAPES, steps=6)
    ours, theirs = run_both(SHAPES, steps, dtype, graph=graph, learning_rate=0.3)
    assert_bit_identical(ours, theirs)


def test_keras_in_tf_function_differs_only_by_grappler_rewrite():
    """Why the graph-mode comparisons above use eager Keras: inside
    tf.function Grappler rewrites Keras' division by sqrt into a multiply by
    rsqrt, which moves some results by an ulp; with that rewrite off, Keras
    in a graph is bit-identical to tf_adagrad again."""
    steps = random_gradients([(64, 16)], steps=6)
    graph_keras = apply_steps(
        keras.optimizers.Adagrad(learning_rate=0.3), make_variables([(64, 16)]), steps, graph=True
    )
    ours = apply_steps(tf_adagrad.Adagrad(learning_rate=0.3), make_variables([(64, 16)]), steps)
    assert not np.array_equal(graph_keras[0], ours[0])
    np.testing.assert_allclose(
        graph_keras[0], ours[0], rtol=1e-6, atol=2e-7
    )  # an ulp or two of the step
    with exact_graph_math():
        graph_keras = apply_steps(
            keras.optimizers.Adagrad(learning_rate=0.3),
            make_variables([(64, 16)]),
            steps,
            graph=True,
        )
    assert_bit_identical(graph_keras, ours)


def sparse_steps(num_rows, row_shape, steps, nnz, unique, seed=3):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        if unique:
            indices = rng.permutation(num_rows)[:nnz]
        else:
            indices = rng.integers(0, num_rows // 4, nnz)  # many duplicates
        values = rng.uniform(-1, 1, (nnz,) + row_shape)
        out.append(
            [
                tf.IndexedSlices(
                    tf.constant(values),
                    tf.constant(indices, tf.int64),
                    tf.constant((num_rows,) + row_shape),
                )
            ]
        )
    return out


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_sparse_unique_indices_is_bit_identical_to_keras(graph):
    steps = sparse_steps(40, (6,), steps=5, nnz=12, unique=True)
    ours, theirs = run_both([(40, 6)], steps, graph=graph, learning_rate=0.2)
    assert_bit_identical(ours, theirs)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_sparse_duplicates_equal_keras_on_the_densified_gradient(graph):
    steps = sparse_steps(40, (6,), steps=5, nnz=30, unique=False)
    ours, dense_equivalent = run_both(
        [(40, 6)], steps, graph=graph, reference=DensifyingKerasAdagrad, learning_rate=0.2
    )
    assert_bit_identical(ours, dense_equivalent)
    # Keras 3's own sparse path accumulates the sum of squares of duplicate
    # rows instead of the square of their sum, so it lands elsewhere.
    keras_sparse = apply_steps(
        keras.optimizers.Adagrad(learning_rate=0.2), make_variables([(40, 6)]), steps
    )
    assert np.abs(keras_sparse[0] - ours[0]).max() > 1e-3


def test_sparse_int32_indices_and_untouched_rows():
    variables = make_variables([(30, 4)])
    before = variables[0].numpy()
    optimizer = tf_adagrad.Adagrad(learning_rate=0.5)
    indices = tf.constant([3, 7, 3], tf.int32)
    values = tf.constant(np.arange(12, dtype=np.float32).reshape(3, 4) / 10)
    optimizer.apply([tf.IndexedSlices(values, indices, tf.constant([30, 4]))], variables)
    expected_var, expected_accum = sparse_step_exact(
        before,
        np.full((30, 4), 0.1, np.float32),
        np.float32(0.5),
        1e-7,
        values.numpy(),
        [3, 7, 3],
        tf.float32,
    )
    np.testing.assert_array_equal(bits(variables[0].numpy()), bits(expected_var))
    np.testing.assert_array_equal(bits(optimizer.variables[-1].numpy()), bits(expected_accum))
    untouched = [i for i in range(30) if i not in (3, 7)]
    np.testing.assert_array_equal(bits(variables[0].numpy()[untouched]), bits(before[untouched]))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_16bit_variables_compute_in_float32(dtype, sparse):
    """16-bit variables: bit-exact against the NumPy model of the kernels
    (float32 math, one rounding per stored value), and close to Keras, which
    rounds every intermediate to the 16-bit type."""
    shape = (32, 8)
    variables = make_variables([shape], dtype)
    var = variables[0].numpy()
    accum = np.full(shape, 0.1, var.dtype)
    optimizer = tf_adagrad.Adagrad(learning_rate=0.05)
    lr = np.float32(0.05)
    if sparse:
        steps = sparse_steps(32, (8,), steps=4, nnz=20, unique=False)
    else:
        steps = [[tf.constant(g[0])] for g in random_gradients([shape], steps=4)]
    for (grad,) in steps:
        if sparse:
            values = tf.cast(grad.values, dtype)
            optimizer.apply([tf.IndexedSlices(values, grad.indices, grad.dense_shape)], variables)
            var, accum = sparse_step_exact(
                var, accum, lr, 1e-7, values.numpy(), grad.indices.numpy(), dtype
            )
        else:
            grad = tf.cast(grad, dtype)
            optimizer.apply([grad], variables)
            var, accum = dense_step_exact(var, accum, lr, 1e-7, grad.numpy(), dtype)
        np.testing.assert_array_equal(bits(variables[0].numpy()), bits(var))
        np.testing.assert_array_equal(bits(optimizer.variables[-1].numpy()), bits(accum))

    reference = DensifyingKerasAdagrad if sparse else keras.optimizers.Adagrad
    theirs = apply_steps(reference(learning_rate=0.05), make_variables([shape], dtype), steps)
    # Keras rounds g*g, the sum, the sqrt and the quotient to 16 bits each
    # step: a few units in the last place (bfloat16's is 2**-8 relative).
    ulp = 2.0**-10 if dtype == "float16" else 2.0**-7
    np.testing.assert_allclose(
        variables[0].numpy().astype(np.float64),
        theirs[0].astype(np.float64),
        rtol=4 * ulp,
        atol=4 * ulp,
    )


def test_float64_keeps_float64_precision():
    """A float64 variable's update is not rounded through float32."""
    variables = make_variables([(3,)], "float64")
    optimizer = tf_adagrad.Adagrad(learning_rate=0.25, epsilon=1e-12)
    optimizer.build(variables)
    start, accum = variables[0].numpy(), optimizer.variables[-1].numpy()
    grad = np.array([1e-9, 0.5, 3.0])
    optimizer.apply([tf.constant(grad)], variables)
    accum = accum + grad * grad
    expected = start - 0.25 * grad / np.sqrt(accum + 1e-12)
    np.testing.assert_array_equal(variables[0].numpy(), expected)


def test_keras_golden_single_step():
    # Golden values from Keras' own Adagrad tests (adagrad_test.py).
    x = keras.Variable([1.0, 2.0, 3.0, 4.0])
    tf_adagrad.Adagrad(learning_rate=0.5).apply_gradients([(tf.constant([1.0, 6.0, 7.0, 2.0]), x)])
    np.testing.assert_allclose(x.numpy(), [0.5233, 1.5007, 2.5005, 3.5061], rtol=1e-4, atol=1e-4)


def test_keras_golden_table():
    # Golden values from Keras' own Adagrad tests (adagrad_test.py).
    golden = np.array(
        [
            [0.9963, 0.9963, 0.9963, 0.9963, 0.9963, 0.9963, 0.9963, 0.9963, 0.9963, 0.9963],
            [0.9604, 0.9278, 0.9003, 0.8784, 0.8615, 0.8487, 0.8388, 0.8313, 0.8255, 0.8209],
            [0.9251, 0.8629, 0.8137, 0.7768, 0.7497, 0.7298, 0.7151, 0.704, 0.6956, 0.6891],
            [0.8903, 0.8012, 0.7342, 0.6862, 0.6521, 0.6277, 0.6099, 0.5967, 0.5867, 0.579],
            [0.856, 0.7422, 0.6604, 0.6037, 0.5644, 0.5367, 0.5168, 0.5021, 0.491, 0.4825],
        ]
    )
    optimizer = tf_adagrad.Adagrad(learning_rate=0.2, initial_accumulator_value=0.3, epsilon=1e-6)
    x = keras.Variable(np.ones([10]))
    grads = tf.range(0.1, 1.1, 0.1)
    optimizer.apply_gradients([(tf.fill((10,), 0.01), x)])
    for row in golden:
        np.testing.assert_allclose(x.numpy(), row, rtol=5e-4, atol=5e-4)
        optimizer.apply_gradients([(grads, x)])


def test_keras_golden_weight_decay():
    # Golden value from Keras' own Adagrad tests: three steps with a zero
    # gradient and weight decay 0.004 at learning rate 1 take 2.0 to
    # 1.9760959 (= 2 * 0.996**3); excluded variables stay at 2.0.
    var, excluded_by_name, excluded_by_ref = (
        keras.Variable(2.0),
        keras.Variable(2.0, name="exclude"),
        keras.Variable(2.0),
    )
    zero = tf.zeros(())
    tf_adagrad.Adagrad(learning_rate=1.0, weight_decay=0.004).apply_gradients([(zero, var)])
    by_name = tf_adagrad.Adagrad(learning_rate=1.0, weight_decay=0.004)
    by_name.exclude_from_weight_decay(var_names=["exclude"])
    by_name.apply_gradients([(zero, var), (zero, excluded_by_name)])
    by_ref = tf_adagrad.Adagrad(learning_rate=1.0, weight_decay=0.004)
    by_ref.exclude_from_weight_decay(var_list=[excluded_by_ref])
    by_ref.apply_gradients([(zero, var), (zero, excluded_by_ref)])
    assert var.numpy() == pytest.approx(1.9760959, abs=1e-6)
    assert excluded_by_name.numpy() == 2.0
    assert excluded_by_ref.numpy() == 2.0


def test_accumulators_match_keras_names_and_initial_value():
    ours = tf_adagrad.Adagrad(initial_accumulator_value=0.25)
    theirs = keras.optimizers.Adagrad(initial_accumulator_value=0.25)
    ours.build(make_variables(SHAPES))
    theirs.build(make_variables(SHAPES))

    def without_optimizer_name(path):
        return path.split("/", 1)[1]

    assert [without_optimizer_name(v.path) for v in ours.variables] == [
        without_optimizer_name(v.path) for v in theirs.variables
    ]
    for v in ours.variables[2:]:
        np.testing.assert_array_equal(v.numpy(), np.full(v.shape, 0.25, np.float32))


def test_negative_initial_accumulator_value_is_rejected():
    with pytest.raises(
        ValueError,
        match=r"^initial_accumulator_value must be a real number >= 0, received: -0.1 \(float\)$",
    ):
        tf_adagrad.Adagrad(initial_accumulator_value=-0.1)


# (argument, value, how the message shows the value)
BAD_HYPERPARAMETERS = [
    ("epsilon", "1e-7", "'1e-7' (str)"),
    ("epsilon", None, "None (NoneType)"),
    ("epsilon", True, "True (bool)"),
    ("epsilon", -1e-7, "-1e-07 (float)"),
    ("epsilon", float("nan"), "nan (float)"),
    ("epsilon", [1e-7], "[1e-07] (list)"),
    ("initial_accumulator_value", "0.1", "'0.1' (str)"),
    ("initial_accumulator_value", None, "None (NoneType)"),
    ("initial_accumulator_value", False, "False (bool)"),
    ("initial_accumulator_value", -1, "-1 (int)"),
    ("initial_accumulator_value", np.float32(-0.5), "np.float32(-0.5) (float32)"),
]


@pytest.mark.parametrize(
    "argument,value,shown",
    BAD_HYPERPARAMETERS,
    ids=[f"{a}={v!r}" for a, v, _ in BAD_HYPERPARAMETERS],
)
def test_hyperparameter_that_is_not_a_non_negative_real_number_is_rejected(argument, value, shown):
    expected = f"{argument} must be a real number >= 0, received: {shown}"
    with pytest.raises(ValueError) as error:
        tf_adagrad.Adagrad(**{argument: value})
    assert str(error.value) == expected


def test_numpy_scalars_ints_and_zero_are_accepted_as_their_values():
    """Real numbers of any kind work, and give the same step as the Python
    floats of the same values."""
    steps = random_gradients([(5, 3)], steps=2)
    given = apply_steps(
        tf_adagrad.Adagrad(
            learning_rate=0.1, initial_accumulator_value=np.float32(0.25), epsilon=0
        ),
        make_variables([(5, 3)]),
        steps,
    )
    as_floats = apply_steps(
        tf_adagrad.Adagrad(learning_rate=0.1, initial_accumulator_value=0.25, epsilon=0.0),
        make_variables([(5, 3)]),
        steps,
    )
    assert_bit_identical(given, as_floats)
    integer = tf_adagrad.Adagrad(initial_accumulator_value=1, epsilon=np.float64(1e-6))
    integer.build(make_variables([(2,)]))
    np.testing.assert_array_equal(integer.variables[-1].numpy(), [1.0, 1.0])


INTEGER_VARIABLES = {
    "tf.Variable": lambda: tf.Variable(np.arange(4, dtype=np.int32), name="counts"),
    "keras.Variable": lambda: keras.Variable(
        np.arange(4, dtype=np.int32), dtype="int32", name="counts"
    ),
}
INTEGER_VARIABLE_MESSAGE = (
    r"^tf_adagrad.Adagrad's variable \(counts(:0)?\) must have one of the dtypes "
    r"float16, bfloat16, float32, float64, complex64, complex128; got int32.$"
)


@pytest.mark.parametrize("kind", INTEGER_VARIABLES)
def test_integer_variable_is_rejected_at_build_naming_it_and_the_dtypes(kind):
    variable = INTEGER_VARIABLES[kind]()
    with pytest.raises(TypeError, match=INTEGER_VARIABLE_MESSAGE):
        tf_adagrad.Adagrad().build([variable])


@pytest.mark.parametrize("kind", INTEGER_VARIABLES)
def test_integer_variable_is_rejected_at_the_first_update(kind):
    variable = INTEGER_VARIABLES[kind]()
    optimizer = tf_adagrad.Adagrad()
    with pytest.raises(TypeError, match=INTEGER_VARIABLE_MESSAGE):
        optimizer.apply([tf.ones(4, tf.int32)], [variable])
    np.testing.assert_array_equal(variable.numpy(), [0, 1, 2, 3])


# tf_adagrad.Adagrad overrides these private hooks of Keras' TensorFlow
# optimizer (the wheel requires the Keras range these tests pass with).
PRIVATE_KERAS_HOOKS = {
    "_clip_gradients": ["self", "grads"],
    "_backend_update_step": ["self", "grads", "trainable_variables", "learning_rate"],
    "_distributed_tf_update_step": ["self", "distribution", "grads_and_vars", "learning_rate"],
}


@pytest.mark.parametrize("hook", PRIVATE_KERAS_HOOKS)
def test_overridden_keras_hooks_exist_with_the_parameters_overridden(hook):
    theirs = getattr(keras.optimizers.Optimizer, hook, None)
    assert theirs is not None, f"Keras {keras.__version__}'s optimizer has no {hook} any more"
    assert list(inspect.signature(theirs).parameters) == PRIVATE_KERAS_HOOKS[hook]
    ours = getattr(tf_adagrad.Adagrad, hook)
    assert ours is not theirs
    assert list(inspect.signature(ours).parameters) == PRIVATE_KERAS_HOOKS[hook]


def embedding_and_dense_model():
    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [
            keras.Input((2,), dtype="int32"),
            keras.layers.Embedding(10, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
            keras.layers.Dense(1),
        ]
    )
    return model


def fit_one_step(model, optimizer):
    model.compile(optimizer=optimizer, loss="mse", jit_compile=False)
    ids = np.array([[1, 2], [3, 1]], np.int32)
    model.fit(ids, np.array([0.5, -0.5], np.float32), batch_size=2, epochs=1, verbose=0)


def test_fit_goes_through_the_backend_update_step_override(monkeypatch):
    """Only the override of `_backend_update_step` calls the multi-tensor op:
    if Keras stopped calling the hook, fit() would not reach it."""
    calls = {"multi": [], "sparse": []}
    multi, sparse = tf_adagrad.ops.multi_apply_adagrad, tf_adagrad.ops.sparse_apply_adagrad

    def spy_multi(variables, *args, **kwargs):
        calls["multi"].append(sorted(v.name.removesuffix(":0") for v in variables))
        return multi(variables, *args, **kwargs)

    def spy_sparse(var, *args, **kwargs):
        calls["sparse"].append(var.name.removesuffix(":0"))
        return sparse(var, *args, **kwargs)

    monkeypatch.setattr(tf_adagrad.ops, "multi_apply_adagrad", spy_multi)
    monkeypatch.setattr(tf_adagrad.ops, "sparse_apply_adagrad", spy_sparse)
    model = embedding_and_dense_model()
    before = [w.numpy() for w in model.weights]
    fit_one_step(model, tf_adagrad.Adagrad(learning_rate=0.1))
    # Each trace of the step (Keras may trace it more than once): one
    # multi-tensor op for the four dense variables (the two Dense layers'
    # kernels and biases), one sparse op for the table.
    dense_names = sorted(w.path for w in model.weights if "embeddings" not in w.path)
    assert calls["multi"] and all(names == dense_names for names in calls["multi"]), calls
    assert len(calls["sparse"]) == len(calls["multi"]), calls
    assert all(name == model.layers[0].embeddings.path for name in calls["sparse"]), calls
    assert all(np.any(w.numpy() != b) for w, b in zip(model.weights, before))


def test_fit_under_a_strategy_goes_through_the_distributed_update_step_override(monkeypatch):
    calls = []
    # The override lives in the mixin both tf_adagrad optimizers share (a
    # KeyError if it stopped overriding); Adagrad must resolve to it rather
    # than to Keras' base method.
    override = vars(sharded.ShardedUpdates)["_distributed_tf_update_step"]
    assert tf_adagrad.Adagrad._distributed_tf_update_step is override

    def spy(self, distribution, grads_and_vars, learning_rate):
        calls.append(len(grads_and_vars))
        return override(self, distribution, grads_and_vars, learning_rate)

    monkeypatch.setattr(sharded.ShardedUpdates, "_distributed_tf_update_step", spy)
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        model = embedding_and_dense_model()
        optimizer = tf_adagrad.Adagrad(learning_rate=0.1)
    before = [w.numpy() for w in model.weights]
    fit_one_step(model, optimizer)
    assert calls == [5]
    assert all(np.any(w.numpy() != b) for w, b in zip(model.weights, before))


def test_unknown_argument_is_rejected():
    with pytest.raises(ValueError, match="not recognized"):
        tf_adagrad.Adagrad(momentum=0.9)


def test_non_tensorflow_backend_is_rejected(monkeypatch):
    """Under another Keras backend, constructing the optimizer says which
    backend is active and what to do. (No other backend is installed here:
    Keras' JAX, torch and numpy backends all need JAX or torch, so the
    backend query is patched.)"""
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(
        RuntimeError,
        match=r"tf_adagrad.Adagrad runs TensorFlow ops, so it needs the TensorFlow Keras "
        r"backend; the active backend is 'jax'. Set KERAS_BACKEND=tensorflow",
    ):
        tf_adagrad.Adagrad()


def test_config_round_trip():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.5, decay_steps=10, decay_rate=0.9)
    arguments = dict(
        learning_rate=schedule,
        initial_accumulator_value=0.2,
        epsilon=1e-5,
        clipnorm=1.5,
        use_ema=True,
        ema_momentum=0.9,
        ema_overwrite_frequency=3,
        name="my_adagrad",
    )
    optimizer = tf_adagrad.Adagrad(**arguments)
    config = optimizer.get_config()
    keras_config = keras.optimizers.Adagrad(**arguments).get_config()
    assert config == keras_config
    # get_config holds the schedule object; compare serialized forms.
    serialized_config = keras.saving.serialize_keras_object(config)
    restored = tf_adagrad.Adagrad.from_config(config)
    assert keras.saving.serialize_keras_object(restored.get_config()) == serialized_config

    serialized = keras.saving.serialize_keras_object(optimizer)
    assert serialized["registered_name"] == "tf_adagrad>Adagrad"
    deserialized = keras.saving.deserialize_keras_object(serialized)
    assert type(deserialized) is tf_adagrad.Adagrad
    assert keras.saving.serialize_keras_object(deserialized.get_config()) == serialized_config
    from_get = keras.optimizers.get(serialized)
    assert type(from_get) is tf_adagrad.Adagrad
    assert keras.saving.serialize_keras_object(from_get.get_config()) == serialized_config


def test_config_round_trip_with_rows_in_batch_weight_decay():
    """weight_decay_rows is in the config only when it is not the default
    (so the default config stays Keras' Adagrad's), and round-trips."""
    optimizer = tf_adagrad.Adagrad(0.1, weight_decay=0.01, weight_decay_rows="in_batch")
    config = optimizer.get_config()
    assert config["weight_decay_rows"] == "in_batch"
    restored = tf_adagrad.Adagrad.from_config(config)
    assert restored.weight_decay_rows == "in_batch"
    assert restored.get_config() == config
    with pytest.raises(
        ValueError,
        match=r"weight_decay_rows must be one of 'all', 'in_batch', "
        r"received: 'batch'",
    ):
        tf_adagrad.Adagrad(weight_decay_rows="batch")


def same_bits_or_both_nan(a, b):
    both_nan = np.isnan(a) & np.isnan(b)
    return bool(np.all(both_nan | (bits(a) == bits(b))))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_nan_and_inf_propagate_as_in_keras(sparse):
    """The NaN/Inf policy README states: the math propagates them, as Keras'
    does (an Inf gradient makes the accumulator Inf and the step Inf / Inf =
    NaN); nothing is skipped or clamped. Skipping non-finite steps is
    LossScaleOptimizer's job (tested in test_optimizer_features.py)."""
    grad = np.array([[1.0, np.nan, 0.5], [np.inf, -np.inf, 2.0], [0.25, 0.0, -1.0]])
    if sparse:
        steps = [[tf.IndexedSlices(tf.constant(grad), tf.constant([4, 1, 2]), tf.constant([6, 3]))]]
    else:
        steps = [[tf.constant(np.concatenate([grad, grad]))]]
    # Sparse: against Keras on the densified gradient; Keras' own sparse
    # path does other arithmetic with Inf (it can end at -inf, not NaN).
    reference = DensifyingKerasAdagrad if sparse else keras.optimizers.Adagrad
    ours, theirs = run_both([(6, 3)], steps * 2, reference=reference, learning_rate=0.1)
    assert np.isnan(ours[0]).sum() == (3 if sparse else 6)
    assert same_bits_or_both_nan(ours[0], theirs[0])
