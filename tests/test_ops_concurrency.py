"""Locking, determinism across thread counts, and the library loader."""

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import tensorflow as tf

import tf_adagrad
from tf_adagrad import _loader


def run_threads(targets, timeout=120):
    """Runs each target in its own thread; fails on a hang or an exception."""
    errors = []

    def guarded(target):
        try:
            target()
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors


def test_use_locking_serializes_concurrent_updates():
    """Integer-valued gradients make every partial sum exact, so with
    use_locking=True the accumulator must equal the sequential result
    whatever the interleaving. Long rows that every call touches make the
    calls overlap in time and space, so a lost update shows (without the
    lock this test loses updates on a 2-core machine)."""
    num_rows, row = 64, 50000
    v = tf.Variable(np.zeros((num_rows, row), np.float32))
    a = tf.Variable(np.zeros((num_rows, row), np.float32))
    rng = np.random.default_rng(0)
    dense_grads = [rng.integers(-2, 3, (num_rows, row)).astype(np.float32) for _ in range(2)]
    indices = np.concatenate([np.arange(num_rows), rng.integers(0, num_rows, 16)])
    sparse_grads = [rng.integers(-2, 3, (len(indices), row)).astype(np.float32) for _ in range(2)]
    num_threads, steps = 4, 15
    # (kind, which gradient) per step and thread.
    plans = [
        [("dense" if s % 4 == 0 else "sparse", int(rng.integers(0, 2))) for s in range(steps)]
        for _ in range(num_threads)
    ]

    squares = {}
    for k in range(2):
        squares["dense", k] = dense_grads[k].astype(np.float64) ** 2
        summed = np.zeros((num_rows, row))
        np.add.at(summed, indices, sparse_grads[k].astype(np.float64))
        squares["sparse", k] = summed**2
    expected = sum(squares[step] for plan in plans for step in plan)

    barrier = threading.Barrier(num_threads)

    def worker(plan):
        barrier.wait()
        for kind, k in plan:
            if kind == "dense":
                tf_adagrad.ops.apply_adagrad(v, a, 0.01, 1e-7, dense_grads[k], use_locking=True)
            else:
                tf_adagrad.ops.sparse_apply_adagrad(
                    v, a, 0.01, 1e-7, sparse_grads[k], indices, use_locking=True
                )

    run_threads([lambda plan=plan: worker(plan) for plan in plans])
    assert expected.max() < 2**24  # exact in float32
    np.testing.assert_array_equal(a.numpy(), expected.astype(np.float32))
    assert np.all(np.isfinite(v.numpy()))


def test_unlocked_concurrent_updates_stay_finite_and_bounded():
    """Without use_locking, racing updates may overwrite each other (as with
    TensorFlow's own ops), but nothing crashes, and every accumulator element
    stays between its start and the sequential total: each write is some
    earlier value plus a square."""
    num_rows, row = 64, 20000
    v = tf.Variable(np.ones((num_rows, row), np.float32))
    a = tf.Variable(np.full((num_rows, row), 0.5, np.float32))
    rng = np.random.default_rng(1)
    grad = rng.integers(-2, 3, (num_rows, row)).astype(np.float32)
    indices = np.concatenate([np.arange(num_rows), np.arange(0, num_rows, 3)])
    sparse_grad = rng.integers(-2, 3, (len(indices), row)).astype(np.float32)
    steps = 10
    summed = np.zeros((num_rows, row))
    np.add.at(summed, indices, sparse_grad.astype(np.float64))
    total = 0.5 + 2 * steps * (grad.astype(np.float64) ** 2 + summed**2)

    def dense_worker():
        for _ in range(steps):
            tf_adagrad.ops.apply_adagrad(v, a, 0.01, 1e-7, grad)

    def sparse_worker():
        for _ in range(steps):
            tf_adagrad.ops.sparse_apply_adagrad(v, a, 0.01, 1e-7, sparse_grad, indices)

    run_threads([dense_worker, dense_worker, sparse_worker, sparse_worker])
    accum = a.numpy()
    assert np.all(np.isfinite(v.numpy())) and np.all(np.isfinite(accum))
    assert np.all(accum >= 0.5)
    assert np.all(accum <= total.astype(np.float32))


def test_reader_never_sees_a_torn_row_with_use_locking():
    """Every row starts with equal elements and every update adds the same
    value to all of a row's elements, so a row whose elements differ was read
    half-updated. Reads take the variable's lock in shared mode; updates with
    use_locking=True take it exclusively, so no read lands mid-update. (With
    use_locking=False this test sees torn rows on a 2-core machine.)"""
    num_rows, row = 32, 50000
    v = tf.Variable(np.repeat(np.arange(num_rows, dtype=np.float32)[:, None], row, axis=1))
    a = tf.Variable(np.full((num_rows, row), 1.0, np.float32))
    rng = np.random.default_rng(2)
    indices = rng.integers(0, num_rows, 48)
    row_values = rng.integers(1, 4, len(indices)).astype(np.float32)
    sparse_grad = np.repeat(row_values[:, None], row, axis=1)
    dense_grad = np.repeat(rng.integers(1, 4, num_rows).astype(np.float32)[:, None], row, axis=1)
    done = threading.Event()
    reads, torn = [0], []

    def writer(dense):
        for _ in range(20):
            if dense:
                tf_adagrad.ops.apply_adagrad(v, a, 0.01, 1e-7, dense_grad, use_locking=True)
            else:
                tf_adagrad.ops.sparse_apply_adagrad(
                    v, a, 0.01, 1e-7, sparse_grad, indices, use_locking=True
                )

    def writers():
        try:
            run_threads([lambda: writer(True), lambda: writer(False), lambda: writer(False)])
        finally:
            done.set()

    def reader():
        while not done.is_set():
            for value in (v.read_value().numpy(), a.read_value().numpy()):
                reads[0] += 1
                spread = value.max(axis=1) - value.min(axis=1)
                torn.extend(np.nonzero(spread)[0].tolist())

    run_threads([writers, reader])
    assert reads[0] > 10
    assert torn == []


_DETERMINISM_SCRIPT = textwrap.dedent(
    """
    import hashlib, sys
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
    import tf_adagrad
    rng = np.random.default_rng(0)
    for row, nnz in [(1, 200000), (64, 8192), (300, 2000)]:
        v = tf.Variable(rng.standard_normal((5000, row)).astype(np.float32))
        a = tf.Variable(np.full((5000, row), 0.1, np.float32))
        idx = (rng.zipf(1.2, nnz) % 5000).astype(np.int64)  # heavy duplicates
        grad = rng.standard_normal((nnz, row)).astype(np.float32)
        tf_adagrad.ops.sparse_apply_adagrad(v, a, 0.1, 1e-7, grad, idx)
        print(hashlib.sha256(v.numpy().tobytes() + a.numpy().tobytes()).hexdigest())
    """
)


@pytest.mark.slow
def test_sparse_result_is_identical_whatever_the_thread_count():
    """One process per thread count (TensorFlow fixes it at start-up), the
    three running side by side."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _DETERMINISM_SCRIPT, str(threads)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for threads in (1, 2, 7)
    ]
    digests = []
    try:
        for child in children:
            stdout, stderr = child.communicate(timeout=300)
            assert child.returncode == 0, stderr[-2000:]
            digests.append(stdout.split())
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()
    assert len(digests[0]) == 3
    assert digests[0] == digests[1] == digests[2]


@pytest.fixture
def fresh_loader(monkeypatch):
    """Makes the next op call load the library again, under test settings."""
    monkeypatch.setattr(_loader, "_library", None)
    return monkeypatch


def test_missing_library_error_names_file_version_and_rebuild(fresh_loader, tmp_path):
    missing = str(tmp_path / "_tf_adagrad_ops.so")
    fresh_loader.setattr(_loader, "LIBRARY_PATH", missing)
    with pytest.raises(tf_adagrad.OpLibraryError) as info:
        tf_adagrad.ops.apply_adagrad(tf.Variable([1.0]), tf.Variable([1.0]), 0.1, 1e-7, [1.0])
    message = str(info.value)
    assert missing in message
    assert f"installed TensorFlow: {tf.__version__}" in message
    assert "make build" in message


def test_library_built_for_other_tf_version_is_refused(fresh_loader):
    fresh_loader.setattr(_loader, "_built_for_tf_versions", lambda: {"2.19": "2.19.1"})
    with pytest.raises(tf_adagrad.OpLibraryError) as info:
        tf_adagrad.ops.apply_adagrad(tf.Variable([1.0]), tf.Variable([1.0]), 0.1, 1e-7, [1.0])
    message = str(info.value)
    assert os.path.dirname(_loader.LIBRARY_PATH) in message
    assert "built for TensorFlow 2.19 (2.19.1, as recorded in" in message
    assert f"TensorFlow {tf.__version__} is installed" in message
    assert "`pip install 'tensorflow>=2.19,<2.20'`" in message
    assert "make build" in message


def test_a_wheel_for_several_tensorflow_minors_names_its_range(fresh_loader):
    """A release wheel's record lists several minors; outside them, the
    error names the range and the pip requirement that meets it."""
    major, minor = map(int, tf.__version__.split(".")[:2])
    below = {f"{major}.{m}": f"{major}.{m}.1" for m in range(minor - 4, minor)}
    fresh_loader.setattr(_loader, "_built_for_tf_versions", lambda: below)
    with pytest.raises(tf_adagrad.OpLibraryError) as info:
        tf_adagrad.ops.apply_adagrad(tf.Variable([1.0]), tf.Variable([1.0]), 0.1, 1e-7, [1.0])
    releases = ", ".join(below.values())
    assert (
        f"built for TensorFlow {major}.{minor - 4} to {major}.{minor - 1} ({releases}, as "
        "recorded in" in str(info.value)
    )
    assert f"`pip install 'tensorflow>={major}.{minor - 4},<{major}.{minor}'`" in str(info.value)


@pytest.mark.slow  # a fresh process of its own
def test_import_loads_the_library_and_registers_the_ops():
    """`import tf_adagrad` registers the ops with TensorFlow (so that
    `tf.saved_model.load` finds them); `ops.load_library()` afterwards
    returns the same library without loading it again."""
    script = (
        "from tensorflow.python.framework import op_def_registry as r\n"
        "names = ['TfAdagrad>ApplyDense', 'TfAdagrad>ApplySparse', 'TfAdagrad>MultiApplyDense']\n"
        "assert [r.get(n) for n in names] == [None] * 3\n"
        "import tf_adagrad\n"
        "assert all(r.get(n) is not None for n in names)\n"
        "assert tf_adagrad.ops.load_library() is tf_adagrad._loader._library is not None\n"
        "print('registered')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["registered"]
