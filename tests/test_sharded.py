"""The optimizers on Keras variables backed by a ShardedVariable (what
ParameterServerStrategy's `variable_partitioner` makes), here without a
cluster: updates and gradients equal the unsharded ones, and the
accumulators are sharded by the table's rows."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.distribute.sharded_variable import ShardedVariable

import tf_adagrad

ROWS, COLS, SHARD_ROWS = 10, 3, [4, 6]
OPTIMIZERS = {"Adagrad": tf_adagrad.Adagrad, "RowwiseAdagrad": tf_adagrad.RowwiseAdagrad}
# The accumulator's shape per table shard of `rows` rows.
ACCUMULATOR_SHAPES = {"Adagrad": lambda rows: (rows, COLS), "RowwiseAdagrad": lambda rows: (rows,)}
with_each_optimizer = pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))


def sharded_creator(shard_rows):
    """A variable creator that splits every variable on axis 0."""

    def create(next_creator, **kwargs):
        value = kwargs["initial_value"]
        value = tf.convert_to_tensor(value() if callable(value) else value)
        shards = []
        for i, part in enumerate(tf.split(value, shard_rows, axis=0)):
            shard_kwargs = dict(
                kwargs, initial_value=part, shape=part.shape, name=f"{kwargs['name']}/part_{i}"
            )
            shards.append(next_creator(**shard_kwargs))
        return ShardedVariable(shards)

    return create


def table(sharded, initial):
    if not sharded:
        return keras.Variable(initial, name="table")
    with tf.variable_creator_scope(sharded_creator(SHARD_ROWS)):
        return keras.Variable(initial, name="table")


def initial_table():
    return np.random.default_rng(0).uniform(-1, 1, (ROWS, COLS)).astype(np.float32)


def sparse_gradients(steps=3):
    rng = np.random.default_rng(1)
    # Duplicates within each shard and rows at both shard edges (3, 4).
    indices = np.array([5, 1, 5, 9, 3, 1, 4, 4], dtype=np.int64)
    return [
        tf.IndexedSlices(
            tf.constant(rng.uniform(-1, 1, (len(indices), COLS)).astype(np.float32)),
            tf.constant(indices),
            tf.constant([ROWS, COLS], tf.int64),
        )
        for _ in range(steps)
    ]


def train(sharded, gradients, graph, optimizer_name):
    var = table(sharded, initial_table())
    optimizer = OPTIMIZERS[optimizer_name](learning_rate=0.1)
    optimizer.build([var])

    def step(grad):
        optimizer.apply([grad], [var])

    step = tf.function(step) if graph else step
    for grad in gradients:
        step(grad)
    return var, optimizer


@with_each_optimizer
def test_a_sharded_variable_is_trained_with_sharded_accumulators(optimizer_name):
    var, optimizer = train(True, sparse_gradients(1), False, optimizer_name)
    assert isinstance(var.value, ShardedVariable)
    accumulator = optimizer.variables[-1]
    assert isinstance(accumulator.value, ShardedVariable)
    assert [tuple(v.shape) for v in accumulator.value.variables] == [
        ACCUMULATOR_SHAPES[optimizer_name](rows) for rows in SHARD_ROWS
    ]


@with_each_optimizer
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_sharded_update_equals_unsharded(kind, graph, optimizer_name):
    gradients = sparse_gradients()
    if kind == "dense":
        gradients = [tf.convert_to_tensor(g) for g in gradients]
    sharded_var, sharded_opt = train(True, gradients, graph, optimizer_name)
    plain_var, plain_opt = train(False, gradients, graph, optimizer_name)
    assert np.abs(sharded_var.numpy() - initial_table()).max() > 1e-3
    assert sharded_var.numpy().tobytes() == plain_var.numpy().tobytes()
    assert sharded_opt.variables[-1].numpy().tobytes() == plain_opt.variables[-1].numpy().tobytes()


@with_each_optimizer
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("bad_index", [ROWS, -1])
def test_out_of_range_index_raises_and_writes_no_shard(bad_index, graph, optimizer_name):
    var, optimizer = train(True, [], False, optimizer_name)
    before = var.numpy(), optimizer.variables[-1].numpy()
    grad = tf.IndexedSlices(tf.ones((3, COLS)), tf.constant([1, bad_index, 7], tf.int64))

    def apply(grad):
        optimizer.apply([grad], [var])

    apply = tf.function(apply) if graph else apply
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        apply(grad)
    message = error.value.message
    assert (
        f"Expected every index of the gradient of the sharded variable table in [0, {ROWS}); "
        f"received indices[1] = [{bad_index}]"
    ) in message
    assert var.numpy().tobytes() == before[0].tobytes()
    assert optimizer.variables[-1].numpy().tobytes() == before[1].tobytes()


@pytest.mark.parametrize("lookup", ["gather", "matmul"])
def test_sharded_gradients_join_shard_gradients(lookup):
    ids = tf.constant([[5, 1], [3, 9], [4, 4]])
    weights = tf.constant(np.random.default_rng(2).uniform(-1, 1, (3, 2, COLS)).astype(np.float32))

    def gradient(sharded):
        var = table(sharded, initial_table())
        with tf.GradientTape() as tape:
            if lookup == "gather":
                rows = tf.gather(tf.convert_to_tensor(var), ids)
            else:
                rows = tf.reshape(
                    tf.matmul(tf.one_hot(tf.reshape(ids, [-1]), ROWS), var), (3, 2, COLS)
                )
            loss = tf.reduce_sum(rows * weights)
        (grad,) = tf_adagrad.sharded_gradients(tape, loss, [var])
        return grad

    sharded, plain = gradient(True), gradient(False)
    assert isinstance(sharded, tf.IndexedSlices) == (lookup == "gather")
    np.testing.assert_array_equal(
        tf.convert_to_tensor(sharded).numpy(), tf.convert_to_tensor(plain).numpy()
    )
