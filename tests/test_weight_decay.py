"""Weight decay: the fused ops (`TfAdagrad>DecayWeights`, `TfAdagrad>DecayRows`)
against NumPy and Keras' own expression, and the optimizers' `weight_decay`
(Keras' rule, and `weight_decay_rows="in_batch"`) against Keras' Adagrad and a
float64 NumPy reference of the rule."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adagrad
from support.adagrad_reference import DTYPES, SIXTEEN_BIT, bits, np_dtype
from support.graph_math import big_table_step_graph, exact_graph_math, is_table_sized, ops_in
from support.repeated_ids import (
    OPTIMIZERS,
    TABLE_SHAPE,
    repeated_id_steps,
    start_values,
)
from support.scenario_model import embedding_regressor

DECAY_ROWS = "TfAdagrad>DecayRows"
# Neither is exact in binary, so the order of the products matters.
LR, WD = 0.3, 0.07


def random_values(shape, dtype, seed=0):
    return np.random.default_rng(seed).uniform(-2, 2, shape).astype(np_dtype(dtype))


def expected_decay(values, lr, weight_decay, dtype):
    """`v - v * (wd * lr)` as the kernels compute it: the scalars cast to
    the variable's dtype and their product taken in it (as TensorFlow's
    graph optimizer folds Keras' `v * wd * lr`), the rest in float32 for
    16-bit types, one rounding on store."""
    store = np_dtype(dtype)
    compute = np.float32 if tf.as_dtype(dtype) in SIXTEEN_BIT else store
    v = np.asarray(values).astype(compute)
    factor = (store(weight_decay) * store(lr)).astype(compute)
    return (v - v * factor).astype(store)


# --- ops.decay_weights ----------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", [(40, 7), (), (0,), (0, 3)], ids=str)
def test_decay_weights_matches_numpy_bit_for_bit(dtype, shape):
    start = random_values(shape, dtype)
    var = tf.Variable(start)
    tf_adagrad.ops.decay_weights(var, LR, WD)
    after = var.numpy()
    assert after.shape == shape and after.dtype == start.dtype
    np.testing.assert_array_equal(bits(after), bits(expected_decay(start, LR, WD, dtype)))
    if start.size:
        assert not np.array_equal(after, start)


@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=lambda d: d.name)
def test_decay_weights_16_bit_rounds_once(dtype):
    """float16 and bfloat16: the factor `wd * lr` in the variable's dtype
    (as Keras' graph computes it), then each element in float32 and
    rounded once, not in the 16-bit type itself."""
    start = random_values((4096,), dtype, seed=3)
    var = tf.Variable(start)
    tf_adagrad.ops.decay_weights(var, LR, WD)
    # The same computation through TensorFlow, cast once at the end.
    in_float32 = tf.cast(start, tf.float32)
    factor = tf.cast(tf.cast(WD, dtype) * tf.cast(LR, dtype), tf.float32)
    wanted = tf.cast(in_float32 - in_float32 * factor, dtype).numpy()
    np.testing.assert_array_equal(bits(var.numpy()), bits(wanted))
    # Computed in the 16-bit type (the product, then the difference, each
    # rounded), as Keras' own expression is, some elements would differ.
    in_dtype = tf.constant(start)
    twice_rounded = (in_dtype - in_dtype * (tf.cast(WD, dtype) * tf.cast(LR, dtype))).numpy()
    assert not np.array_equal(bits(twice_rounded), bits(wanted))


def test_decay_weights_float16_rounds_the_factor_to_float16():
    """The factor is `wd * lr` rounded to float16, as TensorFlow folds
    Keras' two float16 scalars: with float32's unrounded product instead,
    some of these elements would round the other way."""
    start = random_values((4096,), tf.float16, seed=3)
    var = tf.Variable(start)
    tf_adagrad.ops.decay_weights(var, LR, WD)
    v = start.astype(np.float32)
    unrounded = np.float32(np.float16(WD)) * np.float32(np.float16(LR))
    assert np.float32(np.float16(unrounded)) != unrounded
    with_unrounded = (v - v * unrounded).astype(np.float16)
    np.testing.assert_array_equal(bits(var.numpy()), bits(expected_decay(start, LR, WD, "float16")))
    assert not np.array_equal(bits(var.numpy()), bits(with_unrounded))


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=lambda d: d.name)
def test_decay_weights_equals_keras_expression_in_tf_function(dtype):
    """Keras' `_apply_weight_decay` (keras/src/backend/tensorflow/optimizer.py),
    its learning rate a float32 variable as in a Keras optimizer, traced in
    a tf.function with TensorFlow's default graph optimizations: the same
    bits as the op."""
    start = random_values((3000,), dtype, seed=1)
    learning_rate = tf.Variable(LR, dtype=tf.float32)
    keras_var, ours = tf.Variable(start), tf.Variable(start)

    @tf.function
    def keras_decay():
        lr = tf.cast(learning_rate, keras_var.dtype)
        wd = tf.cast(WD, keras_var.dtype)
        keras_var.assign_sub(keras_var * wd * lr)

    @tf.function
    def fused_decay():
        # The scalars cast as Keras (and tf_adagrad's adapter) casts them:
        # the Python float through float32.
        lr = tf.cast(learning_rate, ours.dtype)
        wd = tf.cast(WD, ours.dtype)
        tf_adagrad.ops.decay_weights(ours, lr, wd)

    for _ in range(3):
        keras_decay()
        fused_decay()
    np.testing.assert_array_equal(bits(ours.numpy()), bits(keras_var.numpy()))
    # Eagerly, Keras' `(v * wd) * lr` differs in the last bit of some
    # elements: the comparison above can tell the two orders apart.
    v = start
    lr, wd = np_dtype(dtype)(np.float32(LR)), np_dtype(dtype)(np.float32(WD))
    assert not np.array_equal(bits(v - v * wd * lr), bits(v - v * (wd * lr)))


def test_decay_weights_on_a_large_variable_is_split_across_threads_exactly():
    """3M (+1, an odd remainder) elements: the kernel's parallelFor splits
    the work into page-aligned shards over TensorFlow's default intra-op
    threads (two on a 2-core machine); every element, at the shards'
    boundaries too, is NumPy's."""
    size = 3_000_001
    start = random_values((size,), tf.float32, seed=7)
    var = tf.Variable(start)
    tf_adagrad.ops.decay_weights(var, LR, WD)
    np.testing.assert_array_equal(bits(var.numpy()), bits(expected_decay(start, LR, WD, "float32")))
    # And a second pass on the result, as another training step would.
    tf_adagrad.ops.decay_weights(var, LR, WD)
    twice = expected_decay(expected_decay(start, LR, WD, "float32"), LR, WD, "float32")
    np.testing.assert_array_equal(bits(var.numpy()), bits(twice))


# --- ops.decay_rows -------------------------------------------------------


@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64], ids=lambda d: d.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("use_locking", [False, True], ids=["unlocked", "locked"])
def test_decay_rows_decays_each_distinct_row_once(dtype, index_dtype, use_locking):
    start = random_values((12, 5), dtype, seed=2)
    var = tf.Variable(start)
    indices = [3, 0, 3, 11, 3, 7, 0]
    tf_adagrad.ops.decay_rows(
        var, LR, WD, tf.constant(indices, index_dtype), use_locking=use_locking
    )
    wanted = start.copy()
    for row in sorted(set(indices)):
        wanted[row] = expected_decay(start[row], LR, WD, dtype)
    np.testing.assert_array_equal(bits(var.numpy()), bits(wanted))
    # The rows not named are untouched, bit for bit (in `wanted` already;
    # spelled out here), and the named ones did change.
    untouched = [r for r in range(12) if r not in indices]
    np.testing.assert_array_equal(bits(var.numpy()[untouched]), bits(start[untouched]))
    assert not np.array_equal(var.numpy()[[0, 3, 7, 11]], start[[0, 3, 7, 11]])


@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64], ids=lambda d: d.name)
def test_decay_rows_of_a_3d_variable_in_tf_function(index_dtype):
    start = random_values((6, 2, 3), tf.float64, seed=4)
    var = tf.Variable(start)
    step = tf.function(lambda i: tf_adagrad.ops.decay_rows(var, LR, WD, i))
    step(tf.constant([5, 5, 1], index_dtype))
    step(tf.constant([1], index_dtype))
    wanted = start.copy()
    wanted[5] = expected_decay(start[5], LR, WD, tf.float64)
    wanted[1] = expected_decay(expected_decay(start[1], LR, WD, tf.float64), LR, WD, tf.float64)
    np.testing.assert_array_equal(bits(var.numpy()), bits(wanted))


@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64], ids=lambda d: d.name)
def test_decay_rows_with_no_indices_changes_nothing(index_dtype):
    start = random_values((5, 3), tf.float32)
    var = tf.Variable(start)
    tf_adagrad.ops.decay_rows(var, LR, WD, tf.zeros((0,), index_dtype))
    np.testing.assert_array_equal(bits(var.numpy()), bits(start))


@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64], ids=lambda d: d.name)
@pytest.mark.parametrize(
    "indices, position, value",
    [([0, 2, 5, 1], 2, 5), ([1, -1], 1, -1)],
    ids=["past-end", "negative"],
)
def test_decay_rows_rejects_an_index_out_of_range_and_writes_nothing(
    indices, position, value, index_dtype
):
    start = random_values((5, 3), tf.float32)
    var = tf.Variable(start)
    message = (
        rf"{DECAY_ROWS}: expected every index in \[0, 5\) \(the first dimension of `var`\), "
        rf"got indices\[{position}\] = {value}; nothing was updated"
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        tf_adagrad.ops.decay_rows(var, LR, WD, tf.constant(indices, index_dtype))
    # The valid rows before the bad index were not decayed either.
    np.testing.assert_array_equal(bits(var.numpy()), bits(start))


@pytest.mark.parametrize(
    "op, kwargs, message",
    [
        (
            "rows",
            dict(weight_decay=[WD, WD]),
            r"expected `weight_decay` to be a scalar, got shape \[2\]",
        ),
        ("rows", dict(lr=[LR]), r"expected `lr` to be a scalar, got shape \[1\]"),
        (
            "weights",
            dict(weight_decay=[[WD]]),
            r"expected `weight_decay` to be a scalar, got shape \[1,1\]",
        ),
        ("weights", dict(lr=[LR, LR]), r"expected `lr` to be a scalar, got shape \[2\]"),
    ],
    ids=["rows-weight_decay", "rows-lr", "weights-weight_decay", "weights-lr"],
)
def test_decay_rejects_a_non_scalar_rate(op, kwargs, message):
    start = random_values((5, 3), tf.float32)
    var = tf.Variable(start)
    arguments = {"lr": LR, "weight_decay": WD, **kwargs}
    name = "TfAdagrad>DecayRows" if op == "rows" else "TfAdagrad>DecayWeights"
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"{name}: {message}"):
        if op == "rows":
            tf_adagrad.ops.decay_rows(var, indices=[0, 1], **arguments)
        else:
            tf_adagrad.ops.decay_weights(var, **arguments)
    np.testing.assert_array_equal(bits(var.numpy()), bits(start))


def test_decay_rows_rejects_a_scalar_variable():
    var = tf.Variable(1.5)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=rf"{DECAY_ROWS}: expected `var` of rank >= 1, got shape \[\]",
    ):
        tf_adagrad.ops.decay_rows(var, LR, WD, [0])
    assert var.numpy() == 1.5


# --- Keras 3 optimizers ---------------------------------------------------


def test_fit_with_weight_decay_and_unique_ids_equals_keras_bit_for_bit():
    """fit() of an Embedding model, each batch's ids distinct (where Keras'
    sparse Adagrad update is the dense one), the Dense bias excluded from
    decay: every weight and accumulator is Keras' bits.

    Grappler's arithmetic rewrites are off for both (exact_graph_math):
    left on, they turn Keras' `lr * g / sqrt(a + eps)` into an rsqrt, whose
    last bits differ from the fused update's with or without weight decay.
    Then Keras' decay is `(v * wd) * lr` as written; the learning rate 0.5
    makes that `v * (wd * lr)` exactly, the kernels' order (in a
    tf.function with the rewrites on, the two orders agree for any rate:
    test_decay_weights_equals_keras_expression_in_tf_function)."""
    rng = np.random.default_rng(11)
    # 6 batches of 16 examples of 2 ids: 32 distinct ids of 64 per batch.
    ids = np.stack([rng.permutation(64)[:32].reshape(16, 2) for _ in range(6)]).reshape(-1, 2)
    labels = rng.uniform(-1, 1, (ids.shape[0], 1)).astype("float32")

    def trained(optimizer, exclude_bias=True):
        keras.utils.set_random_seed(1)
        model = embedding_regressor(keras, 64, 2, 4)
        if exclude_bias:
            optimizer.exclude_from_weight_decay(var_names=["bias"])
        model.compile(optimizer=optimizer, loss="mse", jit_compile=False)
        with exact_graph_math():
            model.fit(ids, labels, batch_size=16, epochs=1, shuffle=False, verbose=0)
        # By layer and weight name (the models' own names count up).
        weights = {
            re.sub(r"_\d+/", "/", "/".join(w.path.split("/")[-2:])): w.numpy()
            for w in model.weights
        }
        return weights, [v.numpy() for v in optimizer.variables]

    ours, ours_slots = trained(tf_adagrad.Adagrad(learning_rate=0.5, weight_decay=0.05))
    theirs, theirs_slots = trained(keras.optimizers.Adagrad(learning_rate=0.5, weight_decay=0.05))
    assert list(ours) == list(theirs) == ["embedding/embeddings", "dense/kernel", "dense/bias"]
    assert len(ours_slots) == len(theirs_slots) > 3
    for path in ours:
        np.testing.assert_array_equal(bits(ours[path]), bits(theirs[path]), err_msg=path)
    for actual, wanted in zip(ours_slots, theirs_slots):
        np.testing.assert_array_equal(bits(actual), bits(wanted))
    # The decay and the exclusion both took effect.
    undecayed, _ = trained(tf_adagrad.Adagrad(learning_rate=0.5))
    bias_decayed, _ = trained(
        tf_adagrad.Adagrad(learning_rate=0.5, weight_decay=0.05), exclude_bias=False
    )
    assert not np.allclose(
        undecayed["embedding/embeddings"], ours["embedding/embeddings"], rtol=1e-3
    )
    assert not np.array_equal(bias_decayed["dense/bias"], ours["dense/bias"])


BATCH_ROWS = 15  # repeated_id_steps names rows 0..14


def numpy_decay_then_adagrad(steps, name, in_batch, lr, wd):
    """The rule in float64: per step, the table's decay (the batch's distinct
    rows, each once, with in_batch; every row otherwise) and the bias'
    (whole), then the dense Adagrad update with the densified gradient."""
    _, initial, epsilon, rowwise = OPTIMIZERS[name]
    # Keras' learning rate is a float32 variable, and a Python float
    # weight decay is cast through float32.
    lr, wd = float(np.float32(lr)), float(np.float32(wd))
    table, bias = start_values()
    accumulators = [
        np.full(v.shape[:1] if rowwise else v.shape, float(np.float32(initial)))
        for v in (table, bias)
    ]
    for indices, values, bias_grad in steps:
        rows = np.unique(indices) if in_batch else np.arange(TABLE_SHAPE[0])
        table[rows] -= table[rows] * wd * lr
        bias -= bias * wd * lr
        dense = np.zeros(TABLE_SHAPE)
        np.add.at(dense, indices, values)
        for v, a, g in zip((table, bias), accumulators, (dense, bias_grad)):
            if rowwise:
                g2 = g.reshape(g.shape[0], -1)
                a += np.mean(g2**2, axis=1)
                v -= (lr * g2 / (np.sqrt(a)[:, None] + epsilon)).reshape(v.shape)
            else:
                a += g * g
                v -= lr * g / np.sqrt(a + epsilon)
    return [table, bias], accumulators


def applied(optimizer, steps):
    """The float64 variables and accumulators after `optimizer.apply` of each
    step's gradients in a tf.function, the table's as tf.IndexedSlices."""
    variables = [keras.Variable(v, dtype="float64") for v in start_values()]
    optimizer.build(variables)

    @tf.function
    def apply(values, indices, bias_grad):
        table_grad = tf.IndexedSlices(values, indices, tf.constant(TABLE_SHAPE, tf.int64))
        optimizer.apply([table_grad, bias_grad], variables)

    for indices, values, bias_grad in steps:
        apply(
            tf.constant(values, tf.float64),
            tf.constant(indices, tf.int64),
            tf.constant(bias_grad, tf.float64),
        )
    slots = [optimizer._slot(v) for v in variables]
    return [v.numpy() for v in variables], [s.numpy() for s in slots]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("rows", ["in_batch", "all"])
def test_weight_decay_rows_with_repeated_ids_matches_the_float64_rule(name, rows):
    cls, _, _, _ = OPTIMIZERS[name]
    steps = repeated_id_steps(4)
    lr, wd = 0.3, 0.07
    optimizer = cls(learning_rate=lr, weight_decay=wd, weight_decay_rows=rows)
    (table, bias), slots = applied(optimizer, steps)
    (want_table, want_bias), want_slots = numpy_decay_then_adagrad(
        steps, name, rows == "in_batch", lr, wd
    )
    # float64 throughout; only the order of sums and products differs.
    for actual, wanted in zip([table, bias] + slots, [want_table, want_bias] + want_slots):
        np.testing.assert_allclose(actual, wanted, rtol=1e-12, atol=1e-14)
    start_table = start_values()[0]
    unseen = slice(BATCH_ROWS, None)
    if rows == "in_batch":
        # The rows of no batch never changed, bit for bit.
        np.testing.assert_array_equal(bits(table[unseen]), bits(start_table[unseen]))
    else:
        # Keras' rule decays them every step: (1 - wd * lr)^4 of the start.
        factor = (1 - float(np.float32(wd)) * float(np.float32(lr))) ** 4
        np.testing.assert_allclose(table[unseen], start_table[unseen] * factor, rtol=1e-13)
        assert not np.any(table[unseen] == start_table[unseen])
    # The rows of the batches differ between the modes too: a row decays
    # only in the steps that name it.
    other, _ = numpy_decay_then_adagrad(steps, name, rows != "in_batch", lr, wd)
    assert not np.allclose(table[:BATCH_ROWS], other[0][:BATCH_ROWS], rtol=1e-9)


def test_keras_file_round_trip_keeps_in_batch_rows_and_continues_identically(tmp_path):
    """A model compiled with weight_decay_rows="in_batch", saved to .keras
    after some steps and loaded: the loaded optimizer has the mode, and
    the next fit() steps give the original model's bits; the rows of no
    batch still have their initial values."""
    rng = np.random.default_rng(2)
    # Ids from rows 0..47 of 64, repeats within batches.
    ids = rng.integers(0, 48, (128, 2)).astype("int32")
    labels = rng.uniform(-1, 1, (128, 1)).astype("float32")
    first, second = (ids[:64], labels[:64]), (ids[64:], labels[64:])
    keras.utils.set_random_seed(1)
    model = embedding_regressor(keras, 64, 2, 4)
    initial_table = model.get_weights()[0]
    model.compile(
        optimizer=tf_adagrad.Adagrad(
            learning_rate=0.3, weight_decay=0.07, weight_decay_rows="in_batch"
        ),
        loss="mse",
        jit_compile=False,
    )
    model.fit(*first, batch_size=16, shuffle=False, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is tf_adagrad.Adagrad
    assert loaded.optimizer.weight_decay_rows == "in_batch"
    assert loaded.optimizer.weight_decay == pytest.approx(0.07)
    assert int(loaded.optimizer.iterations.numpy()) == 4
    for m in (model, loaded):
        m.fit(*second, batch_size=16, shuffle=False, verbose=0)
    assert len(loaded.weights) == len(model.weights) == 3
    for a, b in zip(
        loaded.weights + loaded.optimizer.variables, model.weights + model.optimizer.variables
    ):
        np.testing.assert_array_equal(bits(a.numpy()), bits(b.numpy()), err_msg=b.path)
    table = loaded.get_weights()[0]
    used = np.unique(ids)
    unused = np.setdiff1d(np.arange(64), used)
    assert set(range(48, 64)) <= set(unused.tolist())
    np.testing.assert_array_equal(bits(table[unused]), bits(initial_table[unused]))
    assert not np.any(table[used] == initial_table[used])
    # With the default mode the rows of no batch would have decayed.
    keras.utils.set_random_seed(1)
    default = embedding_regressor(keras, 64, 2, 4)
    default.compile(
        optimizer=tf_adagrad.Adagrad(learning_rate=0.3, weight_decay=0.07),
        loss="mse",
        jit_compile=False,
    )
    default.fit(ids, labels, batch_size=16, shuffle=False, verbose=0)
    assert not np.any(default.get_weights()[0][unused] == initial_table[unused])


def table_sized_outputs(graph):
    """Each op's output of the table's size (graph_math.is_table_sized)."""
    return [
        f"{op.type} {op.name}: {tensor.shape}"
        for op in ops_in(graph)
        for tensor in op.outputs
        if is_table_sized(tensor)
    ]


@pytest.mark.parametrize("rows", ["all", "in_batch"])
@pytest.mark.parametrize("cls", [tf_adagrad.Adagrad, tf_adagrad.RowwiseAdagrad])
def test_weight_decay_adds_no_table_sized_tensor(cls, rows):
    graph = big_table_step_graph(cls(weight_decay=0.01, weight_decay_rows=rows))
    op_types = [op.type for op in ops_in(graph)]
    if rows == "all":
        # The table and the bias each decay whole, in place.
        assert op_types.count("TfAdagrad>DecayWeights") == 2
        assert "TfAdagrad>DecayRows" not in op_types
    else:
        assert op_types.count("TfAdagrad>DecayWeights") == 1  # the bias
        assert op_types.count("TfAdagrad>DecayRows") == 1
    assert table_sized_outputs(graph) == []


def test_keras_weight_decay_makes_table_sized_tensors():
    """The check above can fail: Keras' own `variable * wd * lr` reads the
    table and makes table-sized products."""
    found = table_sized_outputs(big_table_step_graph(keras.optimizers.Adagrad(weight_decay=0.01)))
    assert any(entry.startswith("ReadVariableOp") for entry in found), found
    assert any(entry.startswith("Mul") for entry in found), found
