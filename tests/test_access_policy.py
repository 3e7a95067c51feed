"""How the ops reach a variable's buffer: never a whole-table copy per step.

TensorFlow's own sparse training ops switch a variable into copy-on-read
mode, after which every whole-variable read copies the buffer. The ops here
never switch it: a variable that is not in that mode is updated
copy-on-write (copied only while an earlier read still aliases it), one that
is (a ResourceGather switched it) is updated in place.

The observable is the address of a tensor's buffer, taken through DLPack:
two reads alias the variable's buffer exactly when the variable is not in
copy-on-read mode, and an update that copied the buffer moves it.
"""

import ctypes

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adagrad

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def buffer_address(tensor):
    """The data pointer of an eager tensor's buffer (DLTensor.data, the
    first field of the DLManagedTensor that the capsule holds)."""
    capsule = tf.experimental.dlpack.to_dlpack(tensor)
    return ctypes.c_void_p.from_address(_capsule_pointer(capsule, b"dltensor")).value


def reads_alias(variable):
    """Whether two live reads share one buffer: false in copy-on-read mode."""
    first, second = variable.read_value(), variable.read_value()
    return buffer_address(first) == buffer_address(second)


def variable_buffer_address(variable):
    """The address of the variable's own buffer. In copy-on-read mode a read
    is a copy, so the mode is turned off first (that copies nothing) and
    back on by a gather afterwards (that copies nothing either: no tensor
    aliases the buffer)."""
    in_copy_on_read_mode = not reads_alias(variable)
    if in_copy_on_read_mode:
        tf.raw_ops.DisableCopyOnRead(resource=variable.handle)
    address = buffer_address(variable.read_value())
    if in_copy_on_read_mode:
        tf.gather(variable, [0])
        assert not reads_alias(variable)
    return address


def make_table(num_rows=4000, row=16, seed=0):
    # Initial values computed by TensorFlow: a buffer borrowed from a NumPy
    # array can stay referenced by TensorFlow for a while, so the first
    # update would copy it once (copy-on-write, correctly).
    var = tf.Variable(tf.random.stateless_normal((num_rows, row), seed=[seed, 0]))
    accum = tf.Variable(tf.fill((num_rows, row), 0.1))
    return var, accum


def sparse_gradient(num_rows, row, nnz=64, seed=1):
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, num_rows, nnz)
    indices[1] = indices[0]  # a duplicate
    return rng.standard_normal((nnz, row)).astype(np.float32), indices


def sparse_update(var, accum, grad, indices):
    tf_adagrad.ops.sparse_apply_adagrad(var, accum, 0.1, 1e-7, grad, indices)


def dense_update(var, accum, grad):
    tf_adagrad.ops.apply_adagrad(var, accum, 0.1, 1e-7, grad)


@pytest.mark.parametrize("copy_on_read", [False, True], ids=["copy-on-write", "copy-on-read"])
@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("in_function", [False, True], ids=["eager", "tf.function"])
def test_a_read_before_an_update_keeps_its_values(copy_on_read, kind, in_function):
    var, accum = make_table()
    if copy_on_read:
        tf.nn.embedding_lookup(var, [0])  # ResourceGather switches the mode
    assert reads_alias(var) is not copy_on_read
    grad, indices = sparse_gradient(*var.shape)
    dense_grad = np.ones(var.shape, np.float32)

    def read_then_update():
        before = tf.identity(var.read_value())
        if kind == "sparse":
            sparse_update(var, accum, grad, indices)
        else:
            dense_update(var, accum, dense_grad)
        return before

    start = var.numpy().copy()
    before = tf.function(read_then_update)() if in_function else read_then_update()
    np.testing.assert_array_equal(before.numpy(), start)
    assert not np.array_equal(var.numpy(), start)
    # The held read, not the update, decides: the mode is what it was.
    assert reads_alias(var) is not copy_on_read


def test_sparse_updates_never_switch_to_copy_on_read_mode():
    var, accum = make_table()
    grad, indices = sparse_gradient(*var.shape)
    address = variable_buffer_address(var)
    for use_locking in (False, True):
        tf_adagrad.ops.sparse_apply_adagrad(
            var, accum, 0.1, 1e-7, grad, indices, use_locking=use_locking
        )
        assert reads_alias(var) and reads_alias(accum)
        # Nothing aliased the buffer during the update: written in place.
        assert variable_buffer_address(var) == address


@pytest.mark.parametrize("use_locking", [False, True])
def test_rowwise_sparse_updates_never_switch_to_copy_on_read_mode(use_locking):
    var, _ = make_table()
    accum = tf.Variable(tf.fill(var.shape[:1], 0.1))
    grad, indices = sparse_gradient(*var.shape)
    held = var.read_value()
    held_values = held.numpy().copy()
    tf_adagrad.ops.sparse_rowwise_apply_adagrad(
        var, accum, 0.1, 1e-8, grad, indices, use_locking=use_locking
    )
    assert reads_alias(var) and reads_alias(accum)
    # The held read kept its values (the update copied the buffer once) ...
    np.testing.assert_array_equal(held.numpy(), held_values)
    del held
    # ... and with no read aliasing it, the next update writes in place.
    address = variable_buffer_address(var)
    tf_adagrad.ops.sparse_rowwise_apply_adagrad(
        var, accum, 0.1, 1e-8, grad, indices, use_locking=use_locking
    )
    assert reads_alias(var) and reads_alias(accum)
    assert variable_buffer_address(var) == address


def test_an_update_copies_the_buffer_while_a_read_aliases_it():
    var, accum = make_table()
    grad, indices = sparse_gradient(*var.shape)
    held = var.read_value()
    held_values = held.numpy().copy()
    sparse_update(var, accum, grad, indices)
    assert buffer_address(var.read_value()) != buffer_address(held)
    np.testing.assert_array_equal(held.numpy(), held_values)
    # With the read gone, the next update writes in place again.
    del held
    address = variable_buffer_address(var)
    sparse_update(var, accum, grad, indices)
    assert variable_buffer_address(var) == address


@pytest.mark.parametrize("use_locking", [False, True])
def test_resource_gather_pattern_updates_in_place(use_locking):
    """tf.nn.embedding_lookup (ResourceGather) keeps the table in
    copy-on-read mode; the sparse update then writes in place instead of
    copying the table every step."""
    var, accum = make_table()
    grad, indices = sparse_gradient(*var.shape)
    tf.nn.embedding_lookup(var, [0])
    address = variable_buffer_address(var)

    @tf.function
    def step(ids):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.nn.embedding_lookup(var, ids) ** 2)
        gradient = tape.gradient(loss, var)
        tf_adagrad.ops.sparse_apply_adagrad(
            var, accum, 0.1, 1e-7, gradient.values, gradient.indices, use_locking=use_locking
        )

    for _ in range(3):
        step(tf.constant(indices))
        assert not reads_alias(var)  # still in copy-on-read mode
        assert variable_buffer_address(var) == address


@pytest.mark.parametrize(
    "options",
    [
        {},
        dict(weight_decay=1e-3),
        dict(weight_decay=1e-3, weight_decay_rows="in_batch"),
        dict(gradient_accumulation_steps=2),
    ],
    ids=["plain", "weight_decay", "in_batch_weight_decay", "accumulation"],
)
def test_keras_fit_steps_update_the_table_in_place(options):
    """Keras 3's Embedding reads the whole table each step (a ReadVariableOp
    that aliases the buffer, then a gather): the update that follows writes
    in place, so no step copies the table. Checked after every step. The
    weight decay waits for the table's gradient, by when that read is
    done; without it, it could run beside the forward pass and copy."""
    num_rows = 20_000
    rng = np.random.default_rng(0)
    ids = rng.integers(0, num_rows, (256, 1))
    labels = rng.random((256, 1)).astype(np.float32)
    keras.utils.set_random_seed(0)
    embedding = keras.layers.Embedding(num_rows, 8)
    model = keras.Sequential(
        [keras.Input((1,), dtype="int64"), embedding, keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    model.compile(optimizer=tf_adagrad.Adagrad(0.1, **options), loss="mse", jit_compile=False)
    table = embedding.embeddings.value  # the backing tf.Variable
    assert isinstance(table, tf.Variable)
    model.fit(ids[:32], labels[:32], batch_size=32, verbose=0)  # builds the optimizer
    address = variable_buffer_address(table)
    before = table.numpy().copy()

    seen = []

    class RecordAddress(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((reads_alias(table), variable_buffer_address(table)))

    model.fit(ids, labels, batch_size=32, verbose=0, callbacks=[RecordAddress()])
    assert len(seen) == 8
    assert seen == [(True, address)] * 8
    assert not np.array_equal(table.numpy(), before)  # it did train
