"""What the three framework adapters share, for all six optimizer classes:
the private tf_keras and OptimizerV2 hooks they override (pinned, as the
Keras 3 ones are in test_optimizer.py), the dtypes the kernels lack (complex,
trained as the frameworks' own Adagrads train it), hyperparameters given as
tensors or NumPy scalars, and reprs that name the framework.

tf_keras' optimizers work on `tf.Variable`s in this process (only `tf.keras`
needs `TF_USE_LEGACY_KERAS=1`, which the fit() tests set in child processes).
"""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tf_adagrad

CLASSES = {
    "Adagrad": tf_adagrad.Adagrad,
    "RowwiseAdagrad": tf_adagrad.RowwiseAdagrad,
    "keras2.Adagrad": tf_adagrad.keras2.Adagrad,
    "keras2.RowwiseAdagrad": tf_adagrad.keras2.RowwiseAdagrad,
    "keras2.legacy.Adagrad": tf_adagrad.keras2.legacy.Adagrad,
    "keras2.legacy.RowwiseAdagrad": tf_adagrad.keras2.legacy.RowwiseAdagrad,
}
KERAS3 = {"Adagrad", "RowwiseAdagrad"}
ELEMENTWISE = {"Adagrad", "keras2.Adagrad", "keras2.legacy.Adagrad"}

# The private hooks the adapters override, with the parameters they take.
PRIVATE_HOOKS = {
    tf_keras.optimizers.Optimizer: {
        "_distributed_apply_gradients_fn": ["self", "distribution", "grads_and_vars", "kwargs"],
        "_deduplicate_sparse_grad": ["self", "grads"],
    },
    tf_keras.optimizers.legacy.Optimizer: {
        "_create_slots": ["self", "var_list"],
        "_prepare_local": ["self", "var_device", "var_dtype", "apply_state"],
        "_distributed_apply": ["self", "distribution", "grads_and_vars", "apply_state", "name"],
        "_resource_apply_dense": ["self", "grad", "handle", "apply_state"],
        "_resource_apply_sparse": ["self", "grad", "handle", "indices", "apply_state"],
        "_resource_apply_sparse_duplicate_indices": ["self", "grad", "handle", "indices", "kwargs"],
    },
}
OVERRIDING = {
    tf_keras.optimizers.Optimizer: ["keras2.Adagrad", "keras2.RowwiseAdagrad"],
    tf_keras.optimizers.legacy.Optimizer: ["keras2.legacy.Adagrad", "keras2.legacy.RowwiseAdagrad"],
}


@pytest.mark.parametrize(
    "base,hook",
    [(base, hook) for base, hooks in PRIVATE_HOOKS.items() for hook in hooks],
    ids=lambda x: getattr(x, "__qualname__", x),
)
def test_overridden_tf_keras_hooks_exist_with_the_parameters_overridden(base, hook):
    theirs = getattr(base, hook, None)
    assert theirs is not None, f"tf_keras {tf_keras.__version__}'s {base.__name__} lost {hook}"
    expected = PRIVATE_HOOKS[base][hook]
    assert list(inspect.signature(theirs).parameters) == expected
    for name in OVERRIDING[base]:
        ours = getattr(CLASSES[name], hook)
        assert ours is not theirs, name
        assert list(inspect.signature(ours).parameters) == expected, name


# -- complex variables ----------------------------------------------------------


def complex_values(rng, shape, dtype):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)


def complex_problem(dtype):
    """A complex variable and table, 3 steps of a dense gradient and of a
    sparse one that names row 1 twice."""
    rng = np.random.default_rng(5)
    initial = complex_values(rng, (6, 3), dtype)
    steps = [
        (complex_values(rng, (6, 3), dtype), complex_values(rng, (4, 3), dtype), [1, 3, 1, 5])
        for _ in range(3)
    ]
    return initial, steps


def train_tf_keras(optimizer, dtype, graph):
    initial, steps = complex_problem(dtype)
    variable, table = tf.Variable(initial), tf.Variable(initial)

    def step(dense, values, indices):
        optimizer.apply_gradients(
            [(dense, variable), (tf.IndexedSlices(values, indices, tf.constant([6, 3])), table)]
        )

    step = tf.function(step) if graph else step
    for dense, values, indices in steps:
        step(tf.constant(dense), tf.constant(values), tf.constant(indices))
    return variable.numpy(), table.numpy()


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
@pytest.mark.parametrize(
    "ours,theirs",
    [
        (tf_adagrad.keras2.Adagrad, tf_keras.optimizers.Adagrad),
        (tf_adagrad.keras2.legacy.Adagrad, tf_keras.optimizers.legacy.Adagrad),
    ],
    ids=["keras2", "legacy"],
)
def test_tf_keras_complex_variables_train_as_the_base_class_trains_them(ours, theirs, dtype, graph):
    """The kernels take no complex dtype: the base class's own update runs
    (the legacy one: TensorFlow's ApplyAdagradV2), bit for bit, sparse
    gradients with repeated rows included."""
    got = train_tf_keras(ours(0.1), dtype, graph)
    want = train_tf_keras(theirs(0.1), dtype, graph)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(got[0], complex_problem(dtype)[0])


def numpy_complex_adagrad(initial, gradients, accumulator, lr, epsilon):
    variable = initial.copy()
    for gradient in gradients:
        accumulator = accumulator + gradient * gradient
        variable = variable - lr * gradient / np.sqrt(accumulator + epsilon)
    return variable, accumulator


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_keras3_complex_variables_follow_the_formula(dtype):
    """Keras 3's Adagrad trains complex variables with dense gradients (its
    sparse path fails on them); tf_adagrad.Adagrad runs the same formula as
    plain TensorFlow ops. Against NumPy, with Keras' starting accumulator
    (its Constant initializer goes through float32 for complex dtypes)."""
    initial, steps = complex_problem(dtype)
    dense = [d for d, _, _ in steps]
    variable = keras.Variable(initial, dtype=dtype)
    optimizer = tf_adagrad.Adagrad(learning_rate=0.1)
    for gradient in dense:
        optimizer.apply([tf.constant(gradient)], [variable])
    start = np.full(initial.shape, np.float32(0.1), dtype)
    want, want_accumulator = numpy_complex_adagrad(
        initial, dense, start, np.float32(0.1).astype(dtype), 1e-7
    )
    rtol = 1e-6 if dtype == "complex64" else 1e-14
    np.testing.assert_allclose(variable.numpy(), want, rtol=rtol)
    np.testing.assert_allclose(optimizer.variables[-1].numpy(), want_accumulator, rtol=rtol)
    if dtype == "complex64":
        peer = keras.Variable(initial, dtype=dtype)
        keras_optimizer = keras.optimizers.Adagrad(learning_rate=0.1)
        for gradient in dense:
            keras_optimizer.apply([tf.constant(gradient)], [peer])
        np.testing.assert_array_equal(variable.numpy(), peer.numpy())


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_keras3_complex_sparse_update_equals_the_densified_one(dtype):
    initial, steps = complex_problem(dtype)
    results = []
    for densify in (False, True):
        table = keras.Variable(initial, dtype=dtype)
        optimizer = tf_adagrad.Adagrad(learning_rate=0.1)
        for _, values, indices in steps:
            gradient = tf.IndexedSlices(tf.constant(values), tf.constant(indices), [6, 3])
            optimizer.apply([tf.convert_to_tensor(gradient) if densify else gradient], [table])
        results.append((table.numpy(), optimizer.variables[-1].numpy()))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(results[0][0][[0, 2, 4]], initial[[0, 2, 4]])


ROWWISE_DTYPE_MESSAGE = (
    r"'s variable \(.*\) must have one of the dtypes float16, bfloat16, float32, float64; "
    r"got complex64.$"
)


@pytest.mark.parametrize("name", ["RowwiseAdagrad", "keras2.RowwiseAdagrad"])
def test_rowwise_rejects_complex_variables_at_build(name):
    """No framework has a rowwise Adagrad to fall back to."""
    variable = tf.Variable(np.ones(3, np.complex64))
    if name in KERAS3:
        variable = keras.Variable(np.ones(3, np.complex64), dtype="complex64")
    with pytest.raises(TypeError, match=rf"^tf_adagrad.{name}{ROWWISE_DTYPE_MESSAGE}"):
        CLASSES[name]().build([variable])


def test_legacy_rowwise_rejects_complex_variables_at_slot_creation():
    variable = tf.Variable(np.ones(3, np.complex64))
    optimizer = tf_adagrad.keras2.legacy.RowwiseAdagrad()
    with pytest.raises(
        TypeError, match=rf"^tf_adagrad.keras2.legacy.RowwiseAdagrad{ROWWISE_DTYPE_MESSAGE}"
    ):
        optimizer.apply_gradients([(tf.ones(3, tf.complex64), variable)])
    np.testing.assert_array_equal(variable.numpy(), np.ones(3))


# -- hyperparameters given as tensors ------------------------------------------


def train_float(optimizer, keras3):
    rng = np.random.default_rng(2)
    initial = rng.uniform(-1, 1, (5, 4)).astype(np.float32)
    variable = keras.Variable(initial) if keras3 else tf.Variable(initial)
    for _ in range(2):
        gradient = tf.constant(rng.uniform(-1, 1, (5, 4)).astype(np.float32))
        if keras3:
            optimizer.apply([gradient], [variable])
        else:
            optimizer.apply_gradients([(gradient, variable)])
    return variable.numpy()


@pytest.mark.parametrize("name", CLASSES)
def test_scalar_tensors_and_numpy_scalars_are_accepted_as_their_values(name):
    cls = CLASSES[name]
    given = cls(
        learning_rate=0.5,
        epsilon=tf.constant(0.25),
        initial_accumulator_value=tf.constant(0.5, tf.float64),
    )
    as_floats = cls(learning_rate=0.5, epsilon=0.25, initial_accumulator_value=0.5)
    config = given.get_config()
    assert config["epsilon"] == 0.25 and type(config["epsilon"]) is float
    assert config["initial_accumulator_value"] == 0.5
    assert type(config["initial_accumulator_value"]) is float
    keras3 = name in KERAS3
    np.testing.assert_array_equal(train_float(given, keras3), train_float(as_floats, keras3))
    assert cls(epsilon=np.float32(0.25)).get_config()["epsilon"] == 0.25


BAD_TENSORS = [
    (tf.constant(-1.0), "tf.Tensor"),
    (tf.constant([1.0]), "tf.Tensor"),
    (tf.constant(True), "tf.Tensor"),
    (tf.constant("1"), "tf.Tensor"),
    (tf.constant(float("nan")), "tf.Tensor"),
    (np.array([0.5]), "numpy array"),
    (np.complex64(1), "numpy complex"),
]


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize(
    "value", [v for v, _ in BAD_TENSORS], ids=[f"{k}:{v!r}" for v, k in BAD_TENSORS]
)
def test_tensors_that_are_not_a_non_negative_real_scalar_are_rejected(name, value):
    with pytest.raises(ValueError) as error:
        CLASSES[name](epsilon=value)
    assert str(error.value) == (
        f"epsilon must be a real number >= 0, received: {value!r} ({type(value).__name__})"
    )


# -- reprs -----------------------------------------------------------------------

FRAMEWORKS = {
    "Adagrad": "a Keras 3 optimizer",
    "RowwiseAdagrad": "a Keras 3 optimizer",
    "keras2.Adagrad": "a tf_keras (Keras 2) optimizer",
    "keras2.RowwiseAdagrad": "a tf_keras (Keras 2) optimizer",
    "keras2.legacy.Adagrad": "a tf_keras (Keras 2) legacy optimizer, an OptimizerV2",
    "keras2.legacy.RowwiseAdagrad": "a tf_keras (Keras 2) legacy optimizer, an OptimizerV2",
}


@pytest.mark.parametrize("name", CLASSES)
def test_repr_names_the_class_and_its_framework(name):
    optimizer = CLASSES[name](name="table_optimizer")
    assert repr(optimizer) == (f"<tf_adagrad.{name} name='table_optimizer': {FRAMEWORKS[name]}>")


def test_a_subclass_is_named_by_its_tf_adagrad_base():
    class MyAdagrad(tf_adagrad.keras2.Adagrad):
        pass

    assert repr(MyAdagrad()).startswith("<tf_adagrad.keras2.Adagrad name='Adagrad'")
