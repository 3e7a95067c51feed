"""The ops on a GPU against the same ops on the CPU, from the same inputs.

Every GPU test runs the same case twice, once with the variables created on
`/GPU:0` and once on `/CPU:0`, and compares the two outcomes: results bit for
bit, or the same error class and message with the variables untouched. Two
differences are allowed, and only these (README.md, Limits):

- subnormals: TensorFlow runs its CPU kernels with denormals flushed to zero
  and the GPU kernels keep them, so where one device's result is subnormal
  the other's may be the zero of the same sign;
- NaN payloads: NaNs compare by NaN-ness alone (the GPU writes its canonical
  NaN where x86 keeps an operand's payload).

The CPU kernels themselves are checked against NumPy in tests/test_ops*.py;
the device code's math, misaligned buffers included, by the CUDA harness in
tests/cuda/ on a GPU.

Without a GPU every GPU test is skipped with the reason. The comparison
harness still runs: the `test_harness_*` tests run it with both sides on
`/CPU:0`, and check that it catches what it must catch.
"""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adagrad
from support.adagrad_reference import DTYPES, bits, np_dtype
from support.click_model import click_data, click_model

GPU = "/GPU:0"
CPU = "/CPU:0"
HAS_GPU = bool(tf.config.list_physical_devices("GPU"))
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a GPU: TensorFlow sees no GPU device")

INDEX_DTYPES = [tf.int32, tf.int64]
# The smallest normal magnitude of each storage type: below it (and above
# zero) a value is subnormal.
SMALLEST_NORMAL = {
    tf.float16: 2.0**-14,
    tf.bfloat16: 2.0**-126,
    tf.float32: 2.0**-126,
    tf.float64: 2.0**-1022,
}


# ---------------------------------------------------------------------------
# The harness: run a case on two devices, compare the outcomes.


class Outcome:
    """What running a case on one device gave: named result arrays, or an
    error (class and the op's own message) with the state left behind."""

    def __init__(self, device, results=None, error=None, message=None, state=None):
        self.device, self.results, self.error, self.message, self.state = (
            device,
            results,
            error,
            message,
            state,
        )

    def describe(self):
        if self.error is None:
            return f"results on {self.device}"
        return f"{self.error.__name__} on {self.device}: {self.message!r}"


# The op's own text in a TensorFlow error, without what names the device and
# the call site ("{{function_node ..._device_/job:localhost/...}}" before it,
# " [Op:...]" after it), which differ between devices by design.
OP_MESSAGE = re.compile(r"(TfAdagrad>\w+: .*?)(?: \[Op:|$)", re.S)


def op_message(error):
    found = OP_MESSAGE.search(error.message)
    return found.group(1).strip() if found else error.message


def run_case(case, device):
    """Creates the case's variables on `device` from its NumPy state, runs
    its steps there, and reads back the variables, or the error and the
    variables as the failing op left them."""
    with tf.device(device):
        variables = [tf.Variable(value, name=name) for name, value in case.state]
        assert all(v.device.endswith(device.upper().lstrip("/")) for v in variables), (
            f"expected the variables on {device}, got {[v.device for v in variables]}"
        )
        try:
            for step in case.steps:
                step(variables)
        except tf.errors.OpError as e:
            state = {name: v.numpy() for (name, _), v in zip(case.state, variables)}
            return Outcome(device, error=type(e), message=op_message(e), state=state)
        results = {name: v.numpy() for (name, _), v in zip(case.state, variables)}
    return Outcome(device, results=results)


def differences(got, want, dtype):
    """Positions where `got` (the device under test) is not bit-identical to
    `want` (the reference device), less the documented exceptions: a
    subnormal on one side where the other has the zero of the same sign
    (flushed), and NaN on both sides (payloads differ). A boolean mask."""
    got_bits, want_bits = bits(got), bits(want)
    differ = got_bits != want_bits
    if not differ.any():
        return differ
    got_wide, want_wide = got.astype(np.float64), want.astype(np.float64)
    both_nan = np.isnan(got_wide) & np.isnan(want_wide)
    sign_bit = want_bits.dtype.type(1) << want_bits.dtype.type(8 * want.dtype.itemsize - 1)
    smallest_normal = SMALLEST_NORMAL[tf.as_dtype(dtype)]

    def subnormal(wide):
        return (wide != 0) & (np.abs(wide) < smallest_normal)

    flushed = (subnormal(want_wide) & (got_bits == (want_bits & sign_bit))) | (
        subnormal(got_wide) & (want_bits == (got_bits & sign_bit))
    )
    return differ & ~both_nan & ~flushed


def first_position(mask):
    return tuple(int(i) for i in np.argwhere(mask)[0])


def assert_same_outcome(got, want, dtype, initial_state):
    """`got` (device under test) equals `want` (reference device): the same
    results, or the same error and message with every variable untouched on
    both devices."""
    assert (got.error, got.message) == (want.error, want.message), (
        f"expected {want.describe()}, got {got.describe()}"
    )
    if got.error is not None:
        for outcome in (got, want):
            for name, initial in initial_state:
                written = bits(outcome.state[name]) != bits(initial)
                if written.any():
                    raise AssertionError(
                        f"`{name}` on {outcome.device} was written at {int(written.sum())} of {written.size} "
                        f"positions by the op that failed; first at {first_position(written)}"
                    )
        return
    for name, want_value in want.results.items():
        got_value = got.results[name]
        assert got_value.shape == want_value.shape, (
            f"`{name}`: expected shape {want_value.shape}, got {got_value.shape}"
        )
        # Each array by its own dtype (a rowwise accumulator is float32 for
        # 16-bit variables).
        bad = differences(got_value, want_value, want_value.dtype)
        if bad.any():
            first = first_position(bad)
            raise AssertionError(
                f"`{name}` on {got.device} differs from {want.device} at {int(bad.sum())} of {bad.size} "
                f"positions; first at {first}: expected {want_value[first]!r} (bits {bits(want_value)[first]:#x}), "
                f"got {got_value[first]!r} (bits {bits(got_value)[first]:#x})"
            )


def compare_on_devices(case, device, reference_device):
    """Runs `case` on both devices and asserts the outcomes are the same.
    Returns the reference outcome, for further checks."""
    want = run_case(case, reference_device)
    got = run_case(case, device)
    assert_same_outcome(got, want, case.dtype, case.state)
    return want


# ---------------------------------------------------------------------------
# The cases: NumPy state, and steps that run the ops on the variables.


class Case:
    def __init__(self, dtype, state, steps):
        self.dtype, self.state, self.steps = dtype, state, steps


def values(rng, shape, dtype, low=-1.0, high=1.0):
    return rng.uniform(low, high, shape).astype(np_dtype(dtype))


def step_keys(rounding_key, steps):
    """Each step's rounding key: None (round to nearest) for every step, or
    (seed, step), (seed, step + 1), ... from `rounding_key`, a new draw
    each step as an optimizer's step counter gives."""
    if rounding_key is None:
        return [None] * steps
    seed, first_step = rounding_key
    return [(seed, first_step + k) for k in range(steps)]


def dense_case(
    dtype,
    shape,
    seed=0,
    steps=2,
    lr=0.1,
    epsilon=1e-7,
    epsilon_placement="inside_sqrt",
    accum_dtype=None,
    rounding_key=None,
):
    """Dense steps through the wrapper; the accumulator of `accum_dtype`
    (default `dtype`; float32 for a 16-bit variable), the weights rounded
    stochastically from `rounding_key` (seed, first step) when given."""
    rng = np.random.default_rng(seed)
    state = [
        ("var", values(rng, shape, dtype, -2, 2)),
        ("accum", values(rng, shape, accum_dtype or dtype, 0.1, 1)),
    ]
    grads = [values(rng, shape, dtype) for _ in range(steps)]

    def step_with(grad, key):
        return lambda v: tf_adagrad.ops.apply_adagrad(
            v[0],
            v[1],
            lr,
            epsilon,
            tf.constant(grad),
            epsilon_placement=epsilon_placement,
            rounding_key=key,
        )

    return Case(
        dtype, state, [step_with(g, k) for g, k in zip(grads, step_keys(rounding_key, steps))]
    )


def sparse_case(
    dtype,
    index_dtype,
    num_rows,
    row_shape,
    indices,
    seed=0,
    steps=2,
    lr=0.1,
    epsilon=1e-7,
    epsilon_placement="inside_sqrt",
    accum_dtype=None,
    rounding_key=None,
):
    """Sparse steps; `accum_dtype` and `rounding_key` as in `dense_case`."""
    rng = np.random.default_rng(seed)
    shape = (num_rows,) + tuple(row_shape)
    state = [
        ("var", values(rng, shape, dtype, -2, 2)),
        ("accum", values(rng, shape, accum_dtype or dtype, 0.1, 1)),
    ]
    grads = [values(rng, (len(indices),) + tuple(row_shape), dtype) for _ in range(steps)]
    index_array = np.asarray(indices, dtype=index_dtype.as_numpy_dtype)

    def step_with(grad, key):
        if key is not None:
            # Stochastic rounding through the wrapper, whose conversion of
            # the (seed, step) pair is then part of both runs.
            return lambda v: tf_adagrad.ops.sparse_apply_adagrad(
                v[0],
                v[1],
                lr,
                epsilon,
                tf.constant(grad),
                tf.constant(index_array),
                epsilon_placement=epsilon_placement,
                rounding_key=key,
            )
        # The raw op: the wrapper's Python checks would otherwise be the
        # first to see an index, and it is the kernels' validation that is
        # compared here.
        return lambda v: tf_adagrad.ops.load_library().tf_adagrad_apply_sparse(
            var=v[0].handle,
            accum=v[1].handle,
            lr=tf.constant(lr, dtype),
            epsilon=tf.constant(epsilon, dtype),
            grad=tf.constant(grad),
            indices=tf.constant(index_array),
            rounding_key=[],
            epsilon_placement=epsilon_placement,
        )

    return Case(
        dtype, state, [step_with(g, k) for g, k in zip(grads, step_keys(rounding_key, steps))]
    )


def multi_case(
    dtype, shapes, seed=0, steps=2, lr=0.05, epsilon=1e-6, epsilon_placement="inside_sqrt"
):
    rng = np.random.default_rng(seed)
    state = [(f"var{i}", values(rng, s, dtype, -2, 2)) for i, s in enumerate(shapes)]
    state += [(f"accum{i}", values(rng, s, dtype, 0.1, 1)) for i, s in enumerate(shapes)]
    grads = [[values(rng, s, dtype) for s in shapes] for _ in range(steps)]
    n = len(shapes)

    def step_with(step_grads):
        return lambda v: tf_adagrad.ops.multi_apply_adagrad(
            v[:n],
            v[n:],
            lr,
            epsilon,
            [tf.constant(g) for g in step_grads],
            epsilon_placement=epsilon_placement,
        )

    return Case(dtype, state, [step_with(g) for g in grads])


def duplicated_indices(num_rows, count, seed):
    """`count` random indices into the first half of the table: duplicates
    are many, in no order, and the second half stays untouched."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, max(1, num_rows // 2), count)


# Odd lengths around the kernels' vector widths and block sizes, and empty
# tensors. (TensorFlow hands the kernels aligned buffers; misaligned pointers
# are the CUDA harness's to check.)
DENSE_SHAPES = [(0,), (4, 0), (1,), (3,), (1023,), (4097,), (33, 3)]
# (num_rows, row shape, number of indices): empty tables and gradients, row
# sizes 1, 3 and 33, a row of zero elements, duplicates everywhere.
SPARSE_SHAPES = [
    (0, (3,), 0),
    (7, (1,), 0),
    (1, (1,), 1),
    (5, (0,), 3),
    (50, (3,), 40),
    (1000, (33,), 4097),
    (5000, (1,), 1023),
    (64, (3, 11), 257),
]
MULTI_SHAPES = [(3, 4), (0,), (1,), (1023,), (0, 5), (4097,), (17, 33), (2,), (3,)]


def dtype_id(d):
    return d.name


PLACEMENTS = ["inside_sqrt", "outside_sqrt"]


@needs_gpu
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=str)
def test_dense_gpu_equals_cpu(dtype, shape, placement):
    compare_on_devices(dense_case(dtype, shape, epsilon_placement=placement), GPU, CPU)


@needs_gpu
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("num_rows,row_shape,count", SPARSE_SHAPES, ids=str)
def test_sparse_gpu_equals_cpu(dtype, index_dtype, num_rows, row_shape, count, placement):
    indices = duplicated_indices(num_rows, count, seed=count)
    case = sparse_case(
        dtype, index_dtype, num_rows, row_shape, indices, epsilon_placement=placement
    )
    compare_on_devices(case, GPU, CPU)


@needs_gpu
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=dtype_id)
@pytest.mark.parametrize(
    "indices",
    [[3] * 1023, list(range(99, -1, -1)), [0, 99] * 300, list(range(100)) * 5],
    ids=["one-row-1023-times", "reversed", "two-rows-alternating", "every-row-5-times"],
)
def test_sparse_orders_and_runs_gpu_equals_cpu(index_dtype, indices):
    """Long runs of one index (summed in position order on both devices),
    reversed and interleaved orders."""
    for dtype in DTYPES:
        compare_on_devices(
            sparse_case(dtype, index_dtype, 100, (33,), indices, seed=len(indices)), GPU, CPU
        )


@needs_gpu
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_multi_gpu_equals_cpu(dtype, placement):
    compare_on_devices(multi_case(dtype, MULTI_SHAPES, epsilon_placement=placement), GPU, CPU)


@needs_gpu
def test_multi_with_more_variables_than_one_launch_gpu_equals_cpu():
    """One launch's table holds at most 64 variables: 150 of mixed sizes take
    three launches, the last one partial."""
    shapes = [((i * 37) % 101,) if i % 7 else (0,) for i in range(150)]
    compare_on_devices(multi_case(tf.float32, shapes, seed=3), GPU, CPU)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_special_values_gpu_equals_cpu(dtype):
    """Zeros, infinities, NaN, subnormals and huge values in the gradient
    and the state: the documented exceptions (flushed subnormals, NaN
    payloads) are the only differences allowed."""
    t = np_dtype(dtype)
    finfo_max = float(np.finfo(np.float32).max if dtype == tf.bfloat16 else np.finfo(t).max)
    tiny = SMALLEST_NORMAL[dtype]
    specials = np.array(
        [
            0.0,
            -0.0,
            np.inf,
            -np.inf,
            np.nan,
            tiny / 4,
            -tiny / 2,
            tiny,
            finfo_max / 2,
            -finfo_max / 3,
            1.0,
            -1.0,
        ],
        np.float64,
    )
    rng = np.random.default_rng(9)
    n = 1031
    mixed = rng.uniform(-1, 1, n)
    positions = rng.integers(0, n, n // 3)
    mixed[positions] = specials[rng.integers(0, len(specials), len(positions))]
    with np.errstate(over="ignore"):
        grad = mixed.astype(t)
        state = [("var", rng.uniform(-2, 2, n).astype(t)), ("accum", np.abs(mixed[::-1]).astype(t))]

    def step(v):
        tf_adagrad.ops.apply_adagrad(v[0], v[1], 0.5, 1e-7, tf.constant(grad))

    compare_on_devices(Case(dtype, state, [step]), GPU, CPU)
    rows = state[0][1][: n // 3 * 3].reshape(-1, 3), state[1][1][: n // 3 * 3].reshape(-1, 3)
    indices = rng.integers(0, len(rows[0]), len(rows[0]))
    sparse_grad = grad[: len(indices) * 3].reshape(-1, 3)

    def sparse_step(v):
        tf_adagrad.ops.sparse_apply_adagrad(
            v[0], v[1], 0.5, 1e-7, tf.constant(sparse_grad), indices
        )

    compare_on_devices(Case(dtype, [("var", rows[0]), ("accum", rows[1])], [sparse_step]), GPU, CPU)


def rowwise_case(
    dtype, shape, indices=None, index_dtype=tf.int64, seed=0, steps=2, rounding_key=None
):
    """Rowwise steps (dense, or sparse with `indices`) through the raw ops,
    so that the kernels' own validation is what runs; with a `rounding_key`
    (as in `dense_case`), stochastic rounding through the wrappers."""
    rng = np.random.default_rng(seed)
    accum_dtype = tf_adagrad.ops.rowwise_accumulator_dtype(dtype)
    state = [
        ("var", values(rng, shape, dtype, -2, 2)),
        ("accum", values(rng, shape[:1], accum_dtype, 0.0, 1)),
    ]
    grad_shape = shape if indices is None else (len(indices),) + tuple(shape[1:])
    grads = [values(rng, grad_shape, dtype) for _ in range(steps)]
    library = tf_adagrad.ops.load_library()
    hyperparameters = dict(lr=tf.constant(0.1, accum_dtype), epsilon=tf.constant(1e-8, accum_dtype))

    def step_with(grad, key):
        if key is not None:
            if indices is None:
                return lambda v: tf_adagrad.ops.rowwise_apply_adagrad(
                    v[0], v[1], 0.1, 1e-8, tf.constant(grad), rounding_key=key
                )
            index_tensor = tf.constant(np.asarray(indices, index_dtype.as_numpy_dtype))
            return lambda v: tf_adagrad.ops.sparse_rowwise_apply_adagrad(
                v[0], v[1], 0.1, 1e-8, tf.constant(grad), index_tensor, rounding_key=key
            )
        if indices is None:
            return lambda v: library.tf_adagrad_rowwise_apply_dense(
                var=v[0].handle,
                accum=v[1].handle,
                grad=tf.constant(grad),
                rounding_key=[],
                **hyperparameters,
            )
        index_array = tf.constant(np.asarray(indices, index_dtype.as_numpy_dtype))
        return lambda v: library.tf_adagrad_rowwise_apply_sparse(
            var=v[0].handle,
            accum=v[1].handle,
            grad=tf.constant(grad),
            indices=index_array,
            rounding_key=[],
            **hyperparameters,
        )

    return Case(
        dtype, state, [step_with(g, k) for g, k in zip(grads, step_keys(rounding_key, steps))]
    )


ROWWISE_SHAPES = [(0, 3), (1,), (7,), (5, 1), (40, 32), (33, 33), (300, 100), (4, 3, 11)]


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", ROWWISE_SHAPES, ids=str)
def test_rowwise_dense_gpu_equals_cpu(dtype, shape):
    compare_on_devices(rowwise_case(dtype, shape), GPU, CPU)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("num_rows,row_shape,count", SPARSE_SHAPES, ids=str)
def test_rowwise_sparse_gpu_equals_cpu(dtype, index_dtype, num_rows, row_shape, count):
    indices = duplicated_indices(num_rows, count, seed=count)
    shape = (num_rows,) + tuple(row_shape)
    compare_on_devices(rowwise_case(dtype, shape, indices, index_dtype), GPU, CPU)


@needs_gpu
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=dtype_id)
def test_rowwise_out_of_range_index_is_the_same_error_on_gpu(index_dtype):
    low, high = INDEX_LIMITS[index_dtype]
    for num_rows, indices in OUT_OF_RANGE + [(5, [1, high]), (5, [low])]:
        case = rowwise_case(tf.float32, (num_rows, 3), indices, index_dtype, steps=1)
        want = compare_on_devices(case, GPU, CPU)
        assert want.error is tf.errors.InvalidArgumentError, want.describe()


def test_harness_runs_rowwise_cases_on_the_cpu():
    """Without a GPU, both sides on the CPU: the rowwise cases run, and an
    out-of-range index is an error that leaves the state untouched."""
    for dtype in DTYPES:
        compare_on_devices(rowwise_case(dtype, (33, 33)), CPU, CPU)
        compare_on_devices(rowwise_case(dtype, (50, 3), [1, 4, 1, 49]), CPU, CPU)
    want = compare_on_devices(rowwise_case(tf.float32, (5, 3), [0, 5], steps=1), CPU, CPU)
    assert want.error is tf.errors.InvalidArgumentError


# ---------------------------------------------------------------------------
# 16-bit variables: float32 accumulators, and stochastic rounding (the GPU
# draws each element's random bits alone, the CPU a stretch at a time; the
# bits depend only on the seed, the step and the element's position, so the
# weights must be the same bits).

SIXTEEN_BIT_DTYPES = [tf.float16, tf.bfloat16]
# (seed, first step): small; both halves of the seed and of the step in use;
# a negative seed (its two's-complement bits are the seed).
ROUNDING_KEYS = [(7, 1), (0x123456789ABCDEF, 2**33 + 5), (-3, 2**40)]
# The element counts above, and a table large enough that the CPU splits it
# across threads at positions that are not multiples of a Philox block.
STOCHASTIC_DENSE_SHAPES = DENSE_SHAPES + [(301, 1001)]
# The sparse shapes above, and rows longer than a CPU stretch (512).
STOCHASTIC_SPARSE_SHAPES = SPARSE_SHAPES + [(20, (1500,), 50)]
ACCUMULATORS = {"var-dtype-accum": None, "float32-accum": tf.float32}


def key_id(key):
    return f"seed{key[0]:#x}-step{key[1]:#x}"


@needs_gpu
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", SIXTEEN_BIT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=str)
def test_dense_float32_accumulators_gpu_equals_cpu(dtype, shape, placement):
    case = dense_case(dtype, shape, accum_dtype=tf.float32, epsilon_placement=placement)
    compare_on_devices(case, GPU, CPU)


@needs_gpu
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", SIXTEEN_BIT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("num_rows,row_shape,count", SPARSE_SHAPES, ids=str)
def test_sparse_float32_accumulators_gpu_equals_cpu(
    dtype, index_dtype, num_rows, row_shape, count, placement
):
    indices = duplicated_indices(num_rows, count, seed=count)
    case = sparse_case(
        dtype,
        index_dtype,
        num_rows,
        row_shape,
        indices,
        epsilon_placement=placement,
        accum_dtype=tf.float32,
    )
    compare_on_devices(case, GPU, CPU)


@needs_gpu
@pytest.mark.parametrize("accum", ACCUMULATORS)
@pytest.mark.parametrize("rounding_key", ROUNDING_KEYS, ids=key_id)
@pytest.mark.parametrize("dtype", SIXTEEN_BIT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", STOCHASTIC_DENSE_SHAPES, ids=str)
def test_dense_stochastic_rounding_gpu_equals_cpu(dtype, shape, rounding_key, accum):
    case = dense_case(
        dtype, shape, lr=0.01, accum_dtype=ACCUMULATORS[accum], rounding_key=rounding_key
    )
    compare_on_devices(case, GPU, CPU)


@needs_gpu
@pytest.mark.parametrize("accum", ACCUMULATORS)
@pytest.mark.parametrize("dtype", SIXTEEN_BIT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("num_rows,row_shape,count", STOCHASTIC_SPARSE_SHAPES, ids=str)
def test_sparse_stochastic_rounding_gpu_equals_cpu(
    dtype, index_dtype, num_rows, row_shape, count, accum
):
    indices = duplicated_indices(num_rows, count, seed=count)
    case = sparse_case(
        dtype,
        index_dtype,
        num_rows,
        row_shape,
        indices,
        lr=0.01,
        accum_dtype=ACCUMULATORS[accum],
        rounding_key=ROUNDING_KEYS[count % len(ROUNDING_KEYS)],
    )
    compare_on_devices(case, GPU, CPU)


@needs_gpu
@pytest.mark.parametrize("rounding_key", ROUNDING_KEYS, ids=key_id)
@pytest.mark.parametrize("dtype", SIXTEEN_BIT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", ROWWISE_SHAPES + [(30, 1500)], ids=str)
def test_rowwise_dense_stochastic_rounding_gpu_equals_cpu(dtype, shape, rounding_key):
    compare_on_devices(rowwise_case(dtype, shape, rounding_key=rounding_key), GPU, CPU)


@needs_gpu
@pytest.mark.parametrize("dtype", SIXTEEN_BIT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("num_rows,row_shape,count", STOCHASTIC_SPARSE_SHAPES, ids=str)
def test_rowwise_sparse_stochastic_rounding_gpu_equals_cpu(
    dtype, index_dtype, num_rows, row_shape, count
):
    indices = duplicated_indices(num_rows, count, seed=count)
    shape = (num_rows,) + tuple(row_shape)
    case = rowwise_case(
        dtype,
        shape,
        indices,
        index_dtype,
        rounding_key=ROUNDING_KEYS[count % len(ROUNDING_KEYS)],
    )
    compare_on_devices(case, GPU, CPU)


def storage_case(kind, dtype, rounding_key):
    """One case of each kind above, for the harness test below."""
    indices = duplicated_indices(50, 40, seed=1)
    if kind == "dense":
        return dense_case(dtype, (1023,), lr=0.01, rounding_key=rounding_key)
    if kind == "sparse":
        return sparse_case(
            dtype,
            tf.int64,
            50,
            (33,),
            indices,
            lr=0.01,
            accum_dtype=tf.float32,
            rounding_key=rounding_key,
        )
    if kind == "rowwise-dense":
        return rowwise_case(dtype, (40, 33), rounding_key=rounding_key)
    assert kind == "rowwise-sparse", kind
    return rowwise_case(dtype, (50, 33), indices, tf.int32, rounding_key=rounding_key)


@pytest.mark.parametrize("kind", ["dense", "sparse", "rowwise-dense", "rowwise-sparse"])
@pytest.mark.parametrize("dtype", SIXTEEN_BIT_DTYPES, ids=dtype_id)
def test_harness_runs_16_bit_storage_cases_on_the_cpu(dtype, kind):
    """Without a GPU, both sides on the CPU: the float32-accumulator and
    stochastic-rounding cases run, and the key is in effect, so the GPU tests
    above compare something: the weights differ from rounding to nearest and
    from another key's."""
    if kind == "dense":
        want = compare_on_devices(dense_case(dtype, (1023,), accum_dtype=tf.float32), CPU, CPU)
        assert want.results["accum"].dtype == np.float32
    stochastic = compare_on_devices(storage_case(kind, dtype, ROUNDING_KEYS[1]), CPU, CPU)
    nearest = run_case(storage_case(kind, dtype, None), CPU)
    other_key = run_case(storage_case(kind, dtype, ROUNDING_KEYS[0]), CPU)
    got = bits(stochastic.results["var"])
    assert (got != bits(nearest.results["var"])).any(), "the key had no effect"
    assert (got != bits(other_key.results["var"])).any(), "two keys rounded alike"


def decay_case(dtype, shape, indices=None, index_dtype=tf.int64, seed=0, steps=2):
    """Weight decay steps (every element, or the rows of `indices`) through
    the raw ops."""
    rng = np.random.default_rng(seed)
    state = [("var", values(rng, shape, dtype, -2, 2))]
    library = tf_adagrad.ops.load_library()
    rates = dict(lr=tf.constant(0.3, dtype), weight_decay=tf.constant(0.07, dtype))

    def step(v):
        if indices is None:
            return library.tf_adagrad_decay_weights(var=v[0].handle, **rates)
        index_array = tf.constant(np.asarray(indices, index_dtype.as_numpy_dtype))
        return library.tf_adagrad_decay_rows(var=v[0].handle, indices=index_array, **rates)

    return Case(dtype, state, [step] * steps)


def moving_average_case(dtype, shape, indices, index_dtype=tf.int64, seed=0):
    """The lazy moving average of rows through the raw ops: rows 0 to 40
    steps behind, brought to step 100, then to 101, then every row to 104."""
    rng = np.random.default_rng(seed)
    state = [
        ("average", values(rng, shape, dtype, -2, 2)),
        ("var", values(rng, shape, dtype, -2, 2)),
        ("last_step", 100 - rng.integers(0, 41, shape[:1]).astype(np.int64)),
    ]
    library = tf_adagrad.ops.load_library()
    index_array = np.asarray(indices, index_dtype.as_numpy_dtype)

    def step_to(step):
        return lambda v: library.tf_adagrad_moving_average_rows(
            average=v[0].handle,
            last_step=v[2].handle,
            var=v[1].handle,
            momentum=tf.constant(0.9, dtype),
            step=tf.constant(step, tf.int64),
            indices=tf.constant(index_array),
        )

    def every_row(v):
        return library.tf_adagrad_moving_average_all_rows(
            average=v[0].handle,
            last_step=v[2].handle,
            var=v[1].handle,
            momentum=tf.constant(0.9, dtype),
            step=tf.constant(104, tf.int64),
        )

    return Case(dtype, state, [step_to(100), step_to(101), every_row])


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=str)
def test_decay_weights_gpu_equals_cpu(dtype, shape):
    compare_on_devices(decay_case(dtype, shape), GPU, CPU)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("num_rows,row_shape,count", SPARSE_SHAPES, ids=str)
def test_decay_rows_and_moving_average_gpu_equal_cpu(
    dtype, index_dtype, num_rows, row_shape, count
):
    indices = duplicated_indices(num_rows, count, seed=count)
    shape = (num_rows,) + tuple(row_shape)
    compare_on_devices(decay_case(dtype, shape, indices, index_dtype), GPU, CPU)
    compare_on_devices(moving_average_case(dtype, shape, indices, index_dtype), GPU, CPU)


@needs_gpu
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=dtype_id)
def test_decay_and_average_out_of_range_index_is_the_same_error_on_gpu(index_dtype):
    for num_rows, indices in OUT_OF_RANGE:
        for case in (
            decay_case(tf.float32, (num_rows, 3), indices, index_dtype, steps=1),
            moving_average_case(tf.float32, (num_rows, 3), indices, index_dtype),
        ):
            want = compare_on_devices(case, GPU, CPU)
            assert want.error is tf.errors.InvalidArgumentError, want.describe()


def test_harness_runs_decay_and_average_cases_on_the_cpu():
    """Without a GPU, both sides on the CPU: the weight decay and moving
    average cases run, and an out-of-range index is an error that leaves
    the state untouched."""
    for dtype in DTYPES:
        compare_on_devices(decay_case(dtype, (33, 3)), CPU, CPU)
        compare_on_devices(decay_case(dtype, (50, 3), [1, 4, 1, 49]), CPU, CPU)
        compare_on_devices(moving_average_case(dtype, (50, 3), [1, 4, 1, 49]), CPU, CPU)
    for case in (
        decay_case(tf.float32, (5, 3), [0, 5], steps=1),
        moving_average_case(tf.float32, (5, 3), [0, 5]),
    ):
        assert compare_on_devices(case, CPU, CPU).error is tf.errors.InvalidArgumentError


# Out-of-range indices: (var rows, indices); the first bad position is what
# both devices must name.
OUT_OF_RANGE = [
    (5, [0, 4, 5]),
    (5, [-1, 2]),
    (100, list(range(99)) + [100]),
    (100, list(range(100)) * 3 + [-7] + [1000] * 5),
    (0, [0]),
]
INDEX_LIMITS = {tf.int32: (-(2**31), 2**31 - 1), tf.int64: (-(2**63), 2**63 - 1)}


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=dtype_id)
def test_out_of_range_index_is_the_same_error_on_gpu(dtype, index_dtype):
    """The same InvalidArgumentError text (naming the first bad position and
    its value) as on the CPU, and var and accum untouched on the GPU."""
    low, high = INDEX_LIMITS[index_dtype]
    cases = OUT_OF_RANGE + [(5, [1, high]), (5, [low]), (5, [2, 3, low, high])]
    for num_rows, indices in cases:
        case = sparse_case(dtype, index_dtype, num_rows, (3,), indices, steps=1)
        want = compare_on_devices(case, GPU, CPU)
        assert want.error is tf.errors.InvalidArgumentError, (
            f"{indices}: expected an error, got {want.describe()}"
        )
        assert re.search(
            r"expected every index in \[0, \d+\) .*got indices\[\d+\] = -?\d+; nothing was updated",
            want.message,
        ), want.message


# ---------------------------------------------------------------------------
# Copy-on-write: a tensor read before an update keeps its value.


def reads_keep_old_values(device, in_function):
    """Reads var and accum, then runs a sparse and a dense update; returns
    (values read before, values read between, values after, initial)."""
    var0 = np.arange(24, dtype=np.float32).reshape(8, 3)
    accum0 = np.ones((8, 3), np.float32)
    with tf.device(device):
        v, a = tf.Variable(var0), tf.Variable(accum0)

        def body():
            before = (
                (tf.identity(v), tf.identity(a))
                if in_function
                else (v.read_value(), a.read_value())
            )
            tf_adagrad.ops.sparse_apply_adagrad(
                v, a, 1.0, 1e-7, tf.ones((3, 3)), tf.constant([0, 7, 0])
            )
            between = (v.read_value(), a.read_value())
            tf_adagrad.ops.apply_adagrad(v, a, 1.0, 1e-7, tf.ones((8, 3)))
            return before, between

        before, between = tf.function(body)() if in_function else body()
        assert v.device.endswith(device.lstrip("/"))
    return (
        [t.numpy() for t in before],
        [t.numpy() for t in between],
        (v.numpy(), a.numpy()),
        (var0, accum0),
    )


def check_reads_keep_old_values(device, in_function):
    before, between, after, initial = reads_keep_old_values(device, in_function)
    for name, got, want in zip(("var", "accum"), before, initial):
        np.testing.assert_array_equal(
            bits(got), bits(want), err_msg=f"{name} read before the updates on {device}"
        )
    # The read between the updates saw the sparse update only: rows 0 and 7
    # changed, and the dense update did not reach back into it.
    for name, got, first, last in zip(("var", "accum"), between, initial, after):
        assert not np.array_equal(got[[0, 7]], first[[0, 7]]), (
            f"{name}: the sparse update did not land"
        )
        np.testing.assert_array_equal(
            bits(got[1:7]), bits(first[1:7]), err_msg=f"{name} rows 1-6 between"
        )
        assert not np.array_equal(got, last), (
            f"{name}: the read between the updates changed with the dense one"
        )


@needs_gpu
@pytest.mark.parametrize(
    "in_function", [False, True], ids=["eager-read_value", "tf.function-identity"]
)
def test_earlier_reads_keep_their_value_on_gpu(in_function):
    check_reads_keep_old_values(GPU, in_function)


# ---------------------------------------------------------------------------
# Keras fit() on the GPU.

NUM_ROWS = 1000


def initial_weights():
    """One set of initial weights for every run, made on the CPU, so no run
    depends on how a device draws random numbers."""
    keras.utils.set_random_seed(7)
    with tf.device(CPU):
        return click_model(NUM_ROWS).get_weights()


def fit_on(device, jit_compile=False, strategy=None, epochs=2):
    """Trains the model with tf_adagrad.Adagrad, its variables on `device`
    (or under `strategy`, over `device`); returns the weights, the
    accumulators and the loss per epoch."""
    ids, labels = click_data(NUM_ROWS)
    weights = initial_weights()

    def placement():
        return strategy.scope() if strategy is not None else tf.device(device)

    with placement():
        model = click_model(NUM_ROWS)
        model.set_weights(weights)
        optimizer = tf_adagrad.Adagrad(learning_rate=0.1)
        model.compile(optimizer=optimizer, loss="binary_crossentropy", jit_compile=jit_compile)
        history = model.fit(ids, labels, batch_size=32, epochs=epochs, shuffle=False, verbose=0)
    accumulators = [v for v in optimizer.variables if v.path.endswith("_accumulator")]
    assert len(accumulators) == len(model.trainable_weights), [v.path for v in optimizer.variables]
    for v in model.weights + accumulators:
        backing = v.value
        placed = [r.device for r in getattr(backing, "values", [backing])]
        assert all(p.endswith(device.lstrip("/")) for p in placed), (
            f"expected {v.path} on {device}, got {placed}"
        )
    return (
        [w.numpy() for w in model.weights],
        [a.numpy() for a in accumulators],
        history.history["loss"],
    )


def cublas_problem():
    """Why a matrix product cannot run on the GPU here, or None. The Dense
    layers need cuBLAS; a payload that ships stubs for it (see
    build_tools/gpu_check.py) leaves fit() unable to run there."""
    try:
        with tf.device(GPU):
            tf.linalg.matmul(tf.ones((2, 2)), tf.ones((2, 2))).numpy()
    except (tf.errors.OpError, RuntimeError) as e:
        return str(e).splitlines()[0]
    return None


@pytest.fixture
def gpu_with_cublas():
    problem = cublas_problem()
    if problem is not None:
        pytest.skip(
            f"needs cuBLAS on the GPU for the Dense layers; a matmul there failed: {problem}"
        )


# fit() on two devices is not bit-exact: the Dense layers' matmuls run in
# cuBLAS on the GPU and in Eigen on the CPU, which sum in different orders,
# and Grappler rewrites each device's graph differently (fused kernels on the
# GPU). Each is float32 rounding, compounded over 32 steps: rtol 1e-5 on
# losses and weights (atol 1e-6 for weights near zero), some 100 float32 ulps.
FIT_TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def assert_fits_agree(got, want, what):
    got_weights, got_opt, got_loss = got
    want_weights, want_opt, want_loss = want
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5, err_msg=f"{what}: losses")
    for i, (g, w) in enumerate(zip(got_weights + got_opt, want_weights + want_opt)):
        np.testing.assert_allclose(
            g, w, **FIT_TOLERANCE, err_msg=f"{what}: weight/optimizer variable {i}"
        )
    assert got_loss[-1] < got_loss[0], f"{what}: the loss did not go down: {got_loss}"


@needs_gpu
def test_fit_on_gpu_equals_fit_on_cpu(gpu_with_cublas):
    assert_fits_agree(fit_on(GPU), fit_on(CPU), "fit() on the GPU against the CPU")


@needs_gpu
def test_mirrored_strategy_on_one_gpu_equals_one_device(gpu_with_cublas):
    """MirroredStrategy over the one GPU: Keras' strategy path (one
    TfAdagrad>ApplyDense per variable, ApplySparse for the Embedding) against
    the multi-tensor path without a strategy. With one replica there is
    nothing to all-reduce; naming ReductionToOneDevice keeps NCCL, which the
    payload of build_tools/gpu_check.py does not hold, out of it."""
    strategy = tf.distribute.MirroredStrategy(
        devices=[GPU], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    assert_fits_agree(
        fit_on(GPU, strategy=strategy),
        fit_on(GPU),
        "MirroredStrategy on the GPU against one device",
    )


# XLA compiles the whole step (model included) with its own fusions, FMA
# contraction and x/sqrt(y) -> x*rsqrt(y): float32 rounding apart in each
# step. The same comparison on the CPU differs by at most 2.4e-6 relative
# (6e-8 absolute), well inside FIT_TOLERANCE.


@needs_gpu
def test_fit_with_jit_compile_on_gpu_matches_without(gpu_with_cublas):
    """Under XLA custom ops cannot be compiled, so the optimizer's update
    runs as plain TensorFlow ops; it must train like the fused kernels."""
    assert_fits_agree(
        fit_on(GPU, jit_compile=True), fit_on(GPU), "fit(jit_compile=True) on the GPU"
    )


# ---------------------------------------------------------------------------
# The harness itself, on this machine: both sides on /CPU:0.


@pytest.mark.parametrize(
    "case",
    [
        lambda: dense_case(tf.bfloat16, (1023,)),
        lambda: sparse_case(tf.float16, tf.int64, 50, (3,), duplicated_indices(50, 40, 1)),
        lambda: sparse_case(tf.float32, tf.int32, 5, (3,), [0, 4, 5], steps=1),
        lambda: multi_case(tf.float64, [(0,), (3,), (4097,)]),
    ],
    ids=["dense", "sparse-duplicates", "sparse-out-of-range", "multi"],
)
def test_harness_cpu_against_cpu(case):
    want = compare_on_devices(case(), CPU, CPU)
    if want.error is not None:
        assert want.error is tf.errors.InvalidArgumentError
        assert want.message.startswith("TfAdagrad>ApplySparse: expected every index in [0, 5)"), (
            want.message
        )
        assert want.message.endswith("got indices[2] = 5; nothing was updated"), want.message


def test_harness_catches_a_one_ulp_difference():
    want = np.array([1.0, 2.0, 3.0], np.float32)
    got = want.copy()
    got[1] = np.nextafter(got[1], np.float32(3))
    assert list(differences(got, want, tf.float32)) == [False, True, False]
    outcome = Outcome("/device:B", results={"var": got})
    with pytest.raises(
        AssertionError,
        match=r"`var` on /device:B differs from /device:A at 1 of 3 positions; first at \(1,\)",
    ):
        assert_same_outcome(
            outcome, Outcome("/device:A", results={"var": want}), tf.float32, [("var", want)]
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_harness_allows_only_the_documented_differences(dtype):
    t = np_dtype(dtype)
    tiny = SMALLEST_NORMAL[dtype]
    want = np.array(
        [tiny / 2, -tiny / 2, 0.0, np.nan, tiny, tiny / 2, -0.0, 0.0], np.float64
    ).astype(t)
    got = want.copy()
    # Allowed: a subnormal flushed on either side (sign kept), another NaN
    # payload. Not: a normal flushed, a flush that loses the sign, a
    # subnormal of the other sign for a zero, a normal for a zero.
    got[0], got[1], got[2] = t(0.0), t(-0.0), t(tiny / 4)
    nan_bits = bits(np.array([np.nan], t))[0] | 1
    got[3] = np.array([nan_bits]).astype(bits(want).dtype).view(t)[0]
    got[4], got[5], got[6], got[7] = t(0.0), t(-0.0), t(tiny / 4), t(tiny)
    assert bits(got)[3] != bits(want)[3] and np.isnan(got.astype(np.float64)[3])
    assert list(differences(got, want, dtype)) == [
        False,
        False,
        False,
        False,
        True,
        True,
        True,
        True,
    ]


def test_harness_compares_errors_and_the_state_they_leave():
    state = [("var", np.ones(3, np.float32))]
    error = tf.errors.InvalidArgumentError
    reference = Outcome(
        "/device:A",
        error=error,
        message="TfAdagrad>ApplySparse: m",
        state={"var": np.ones(3, np.float32)},
    )
    other_text = Outcome(
        "/device:B", error=error, message="TfAdagrad>ApplySparse: n", state=reference.state
    )
    with pytest.raises(
        AssertionError,
        match="expected InvalidArgumentError on /device:A: 'TfAdagrad>ApplySparse: m'",
    ):
        assert_same_outcome(other_text, reference, tf.float32, state)
    written = Outcome(
        "/device:B",
        error=error,
        message=reference.message,
        state={"var": np.array([1, 2, 1], np.float32)},
    )
    with pytest.raises(
        AssertionError,
        match=r"`var` on /device:B was written at 1 of 3 positions by the op that failed",
    ):
        assert_same_outcome(written, reference, tf.float32, state)
    # The reference device's state is checked too.
    with pytest.raises(AssertionError, match=r"`var` on /device:B was written at 1 of 3 positions"):
        assert_same_outcome(reference, written, tf.float32, state)


def test_harness_strips_the_device_from_error_messages():
    text = (
        "{{function_node __wrapped__TfAdagrad>ApplySparse_device_/job:localhost/replica:0/task:0/device:GPU:0}} "
        "TfAdagrad>ApplySparse: expected every index in [0, 5) (the first dimension of `var`), got indices[2] = 5; "
        "nothing was updated [Op:TfAdagrad>ApplySparse] name: "
    )
    error = tf.errors.InvalidArgumentError(None, None, text)
    assert op_message(error) == (
        "TfAdagrad>ApplySparse: expected every index in [0, 5) (the first dimension of `var`), "
        "got indices[2] = 5; nothing was updated"
    )


def test_harness_reads_keep_old_values_on_cpu():
    check_reads_keep_old_values(CPU, in_function=True)
