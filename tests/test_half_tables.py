"""16-bit tables at the ops: float32 accumulators for float16 and bfloat16
variables, and stochastic rounding of their new weights (`rounding_key`),
against NumPy: the shared float32 step (support/adagrad_reference.py, which
stores each accumulator in its own dtype), and the rounding bit for bit from
an independent NumPy Philox4x32-10 written here."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import tf_adagrad
from support.adagrad_reference import (
    bits,
    dense_step_exact,
    densify,
    np_dtype,
    sparse_step_exact,
)

HALF = [tf.bfloat16, tf.float16]
PLACEMENTS = ["inside_sqrt", "outside_sqrt"]
LR, EPSILON = 0.05, 1e-7

# ----------------------------------------------------- NumPy references ---

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
MASK = 0xFFFFFFFF


def philox(counter, key):
    """Philox4x32-10 of uint64 arrays holding 32-bit words: counter (c0, c1,
    c2, c3), key (k0, k1)."""
    c0, c1, c2, c3 = (np.asarray(c, np.uint64) for c in counter)
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for _ in range(10):
        p0 = c0 * np.uint64(M0)
        p1 = c2 * np.uint64(M1)
        c0, c1, c2, c3 = (
            (p1 >> np.uint64(32)) ^ c1 ^ k0,
            p1 & np.uint64(MASK),
            (p0 >> np.uint64(32)) ^ c3 ^ k1,
            p0 & np.uint64(MASK),
        )
        k0 = (k0 + np.uint64(W0)) & np.uint64(MASK)
        k1 = (k1 + np.uint64(W1)) & np.uint64(MASK)
    return c0, c1, c2, c3


def test_numpy_philox_matches_random123_known_answers():
    """The reference itself, against the published vectors."""
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((MASK,) * 4, (MASK, MASK), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, want in cases:
        got = tuple(int(w[0]) for w in philox([[c] for c in counter], key))
        assert got == want


def random_bits(seed, step, positions):
    """16 bits per table position: half (position % 2) of word
    (position % 8) // 2 of Philox(counter=(position // 8, step), key=seed)."""
    positions = np.asarray(positions, np.uint64)
    block = positions // np.uint64(8)
    lane = (positions % np.uint64(8)).astype(np.int64)
    words = philox(
        (
            block & np.uint64(MASK),
            block >> np.uint64(32),
            np.full_like(block, step & MASK),
            np.full_like(block, step >> 32),
        ),
        (seed & MASK, seed >> 32),
    )
    word = np.choose(lane // 2, words)
    return ((word >> (np.uint64(16) * (lane % 2).astype(np.uint64))) & np.uint64(0xFFFF)).astype(
        np.int64
    )


def round_stochastically(values, dtype, random):
    """float32 values to `dtype` (bfloat16 or float16), rounded up with
    probability (dropped part) / (spacing), from 16 random bits each: the
    kernels' rule, written with NumPy integers."""
    x = np.asarray(values, np.float32).view(np.uint32).astype(np.int64)
    random = np.asarray(random, np.int64)
    if dtype == tf.bfloat16:
        out = ((x + random) >> 16).astype(np.uint16)
        nan = np.isnan(np.asarray(values, np.float32))
        out[nan] = np.asarray(values, np.float32)[nan].astype(np_dtype(dtype)).view(np.uint16)
        return out.view(np_dtype(dtype))
    sign = (x >> 16) & 0x8000
    magnitude = x & 0x7FFFFFFF
    out = np.empty(x.shape, np.int64)
    for i in np.ndindex(x.shape):
        m, r = int(magnitude[i]), int(random[i])
        if m >= 0x7F800000:
            out[i] = int(np.float32(values[i]).astype(np.float16).view(np.uint16)) & 0x7FFF
        elif m >= 0x38800000:
            out[i] = min((m - (112 << 23) + (r >> 3)) >> 13, 0x7C00)
        elif m >> 23 == 0:
            out[i] = 0
        else:
            shift = 126 - (m >> 23)
            significand = (m & 0x7FFFFF) | 0x800000
            dither = r >> (16 - shift) if shift <= 16 else r << (shift - 16)
            out[i] = (significand + dither) >> shift if shift < 64 else 0
    return (sign | out).astype(np.uint16).view(np.float16)


def float32_step(var, accum, grad, epsilon_placement, dtype, lr=LR, epsilon=EPSILON):
    """The elementwise step in float32, lr and epsilon rounded to `dtype`
    first (as the op wrappers convert them)."""
    lr = np.float32(np_dtype(dtype)(lr))
    epsilon = np.float32(np_dtype(dtype)(epsilon))
    v, a, g = (np.asarray(x).astype(np.float32) for x in (var, accum, grad))
    a = a + g * g
    if epsilon_placement == "inside_sqrt":
        v = v - lr * g / np.sqrt(a + epsilon)
    else:
        v = v - lr * g / (np.sqrt(a) + epsilon)
    return v, a


def state(rng, shape, dtype):
    t = np_dtype(dtype)
    var = rng.uniform(-1.0, 1.0, shape).astype(t)
    accum = rng.uniform(0.1, 1.0, shape).astype(np.float32)
    return var, accum


# --------------------------------------------- float32 accumulators ---


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", HALF, ids=lambda d: d.name)
def test_dense_float32_accumulator_matches_numpy(dtype, placement):
    rng = np.random.default_rng(1)
    var0, accum0 = state(rng, (37, 5), dtype)
    grad = rng.uniform(-1, 1, (37, 5)).astype(np_dtype(dtype))
    v, a = tf.Variable(var0), tf.Variable(accum0)
    tf_adagrad.ops.apply_adagrad(v, a, LR, EPSILON, grad, epsilon_placement=placement)
    # The shared reference keeps each accumulator's own dtype: float32 here.
    want_var, want_accum = dense_step_exact(var0, accum0, LR, EPSILON, grad, dtype, placement)
    assert a.dtype == tf.float32 and want_accum.dtype == np.float32
    np.testing.assert_array_equal(bits(a.numpy()), bits(want_accum))
    np.testing.assert_array_equal(bits(v.numpy()), bits(want_var))


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", HALF, ids=lambda d: d.name)
def test_sparse_float32_accumulator_matches_numpy(dtype, placement):
    rng = np.random.default_rng(2)
    var0, accum0 = state(rng, (50, 4), dtype)
    indices = [3, 7, 3, 49, 0, 3]
    grad = rng.uniform(-1, 1, (len(indices), 4)).astype(np_dtype(dtype))
    v, a = tf.Variable(var0), tf.Variable(accum0)
    tf_adagrad.ops.sparse_apply_adagrad(
        v, a, LR, EPSILON, grad, indices, epsilon_placement=placement
    )
    want_var, want_accum = sparse_step_exact(
        var0, accum0, LR, EPSILON, grad, indices, dtype, placement
    )
    np.testing.assert_array_equal(bits(a.numpy()), bits(want_accum))
    np.testing.assert_array_equal(bits(v.numpy()), bits(want_var))


@pytest.mark.parametrize("dtype", HALF, ids=lambda d: d.name)
def test_float32_accumulator_keeps_growing_where_16_bits_stop(dtype):
    """g*g below the 16-bit accumulator's resolution: the 16-bit sum stands
    still, the float32 one adds every step."""
    shape, steps, g = (64,), 200, 0.01  # accum 1.0: a 16-bit ulp >> 1e-4
    grad = np.full(shape, g, np_dtype(dtype))
    results = {}
    for accum_dtype in (dtype, tf.float32):
        v = tf.Variable(np.zeros(shape, np_dtype(dtype)))
        a = tf.Variable(np.ones(shape, np_dtype(accum_dtype)))
        for _ in range(steps):
            tf_adagrad.ops.apply_adagrad(v, a, LR, EPSILON, grad)
        results[accum_dtype] = a.numpy().astype(np.float64)
    np.testing.assert_array_equal(results[dtype], 1.0)
    want = np.float32(1.0)
    g32 = np.float32(np_dtype(dtype)(g))
    for _ in range(steps):
        want = want + g32 * g32
    np.testing.assert_array_equal(results[tf.float32], want)


# --------------------------------------------- stochastic rounding ---


def positions_of(shape):
    return np.arange(int(np.prod(shape))).reshape(shape)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dtype", HALF, ids=lambda d: d.name)
def test_dense_stochastic_rounding_matches_numpy_bit_for_bit(dtype, placement):
    rng = np.random.default_rng(3)
    shape, seed, step = (123, 7), 0x123456789, 5
    var0, accum0 = state(rng, shape, dtype)
    grad = rng.uniform(-1, 1, shape).astype(np_dtype(dtype))
    v, a = tf.Variable(var0), tf.Variable(accum0)
    tf_adagrad.ops.apply_adagrad(
        v, a, LR, EPSILON, grad, epsilon_placement=placement, rounding_key=(seed, step)
    )
    new_var, new_accum = float32_step(var0, accum0, grad, placement, dtype)
    want = round_stochastically(new_var, dtype, random_bits(seed, step, positions_of(shape)))
    np.testing.assert_array_equal(bits(a.numpy()), bits(new_accum))
    np.testing.assert_array_equal(bits(v.numpy()), bits(want))


@pytest.mark.parametrize("dtype", HALF, ids=lambda d: d.name)
def test_sparse_stochastic_rounding_matches_numpy_bit_for_bit(dtype):
    rng = np.random.default_rng(4)
    num_rows, row_size, seed, step = 40, 9, 77, 2**33 + 3
    var0, accum0 = state(rng, (num_rows, row_size), dtype)
    indices = [5, 39, 5, 0, 17, 5, 39]
    grad = rng.uniform(-1, 1, (len(indices), row_size)).astype(np_dtype(dtype))
    v, a = tf.Variable(var0), tf.Variable(accum0)
    tf_adagrad.ops.sparse_apply_adagrad(v, a, LR, EPSILON, grad, indices, rounding_key=(seed, step))
    want_var = var0.copy()
    for row, g in zip(*densify(grad, indices, num_rows, dtype)):
        new_v, _ = float32_step(var0[row], accum0[row], g, "inside_sqrt", dtype)
        random = random_bits(seed, step, row * row_size + np.arange(row_size))
        want_var[row] = round_stochastically(new_v, dtype, random)
    np.testing.assert_array_equal(bits(v.numpy()), bits(want_var))


@pytest.mark.parametrize("dtype", HALF, ids=lambda d: d.name)
def test_rowwise_stochastic_rounding_matches_numpy_bit_for_bit(dtype):
    rng = np.random.default_rng(5)
    num_rows, row_size, seed, step = 12, 70, 9, 1
    var0 = rng.uniform(-1, 1, (num_rows, row_size)).astype(np_dtype(dtype))
    accum0 = rng.uniform(0.1, 1.0, (num_rows,)).astype(np.float32)
    grad = rng.uniform(-1, 1, (num_rows, row_size)).astype(np_dtype(dtype))
    v, a = tf.Variable(var0), tf.Variable(accum0)
    tf_adagrad.ops.rowwise_apply_adagrad(v, a, LR, 1e-8, grad, rounding_key=(seed, step))
    # The row's multiplier from the kernel's accumulator (its summation
    # order is tested elsewhere); the rounding of each weight is what is
    # checked here.
    multiplier = np.float32(LR) / (np.sqrt(a.numpy()) + np.float32(1e-8))
    new_var = var0.astype(np.float32) - multiplier[:, None] * grad.astype(np.float32)
    want = round_stochastically(
        new_var, dtype, random_bits(seed, step, positions_of(new_var.shape))
    )
    np.testing.assert_array_equal(bits(v.numpy()), bits(want))


def test_special_values_round_as_numpy_says():
    """inf, nan, values past the largest finite float16, float16 subnormals
    and zeros, through the dense op (a zero gradient keeps each value)."""
    values = np.array(
        [np.inf, -np.inf, np.nan, 65504.0, 65519.0, -65530.0, 1e-5, -3e-7, 6e-8, 2e-9, 0.0, -0.0],
        np.float32,
    )
    for dtype in HALF:
        # A float32 table would round nothing; start from float32 values
        # written through a float32 step, then check the store.
        v = tf.Variable(values.astype(np_dtype(dtype)))
        a = tf.Variable(np.ones(values.shape, np.float32))
        start = v.numpy().astype(np.float32)
        tf_adagrad.ops.apply_adagrad(
            v, a, LR, EPSILON, np.zeros(values.shape, np_dtype(dtype)), rounding_key=(1, 2)
        )
        want = round_stochastically(start, dtype, random_bits(1, 2, np.arange(values.size)))
        np.testing.assert_array_equal(bits(v.numpy()), bits(want))
    # The float16 rules on float32 inputs between float16 values, straight
    # from the reference (the kernels' C++ tests cover every input there).
    x = np.array([65519.0, 1e-5, -3e-7, 6e-8], np.float32)
    up = round_stochastically(x, tf.float16, np.full(4, 0xFFFF))
    down = round_stochastically(x, tf.float16, np.zeros(4, np.int64))
    assert np.all(np.abs(up.astype(np.float32)) >= np.abs(x))
    assert np.all(np.abs(down.astype(np.float32)) <= np.abs(x))


@pytest.mark.parametrize("dtype", HALF, ids=lambda d: d.name)
def test_stochastic_rounding_is_unbiased(dtype):
    """Many elements with one float32 result between two 16-bit values: the
    mean of the stored values equals the float32 result, within 5 standard
    deviations of the mean of Bernoulli roundings (sigma = spacing *
    sqrt(p (1 - p) / n))."""
    n = 200_000
    var0 = np.full(n, 1.0, np_dtype(dtype))
    grad = np.full(n, 0.1, np_dtype(dtype))
    v, a = tf.Variable(var0), tf.Variable(np.zeros(n, np.float32))
    tf_adagrad.ops.apply_adagrad(v, a, 0.01, 0.0, grad, rounding_key=(2024, 0))
    exact, _ = float32_step(
        var0, np.zeros(n, np.float32), grad, "inside_sqrt", dtype, lr=0.01, epsilon=0.0
    )
    exact = float(exact[0])  # 1 - lr * g / |g|: between two 16-bit values
    stored = v.numpy().astype(np.float64)
    low, high = np.unique(stored)  # exactly the two neighbours
    assert low < exact < high
    p = (exact - low) / (high - low)
    sigma = (high - low) * np.sqrt(p * (1 - p) / n)
    assert abs(stored.mean() - exact) < 5 * sigma, (stored.mean(), exact, sigma)
    # Rounded to nearest, every element takes the same neighbour.
    v2 = tf.Variable(var0)
    tf_adagrad.ops.apply_adagrad(v2, tf.Variable(np.zeros(n, np.float32)), 0.01, 0.0, grad)
    assert len(np.unique(v2.numpy())) == 1


@pytest.mark.parametrize("dtype", HALF, ids=lambda d: d.name)
def test_updates_below_half_an_ulp_move_the_weights_only_stochastically(dtype):
    """An update of a tenth of a unit in the last place: rounded to nearest
    it is lost every step; rounded stochastically the weights move by the
    sum of the updates on average (bound: 5 sigma of the sum of the steps'
    independent roundings)."""
    n, steps = 20_000, 20
    start = 1.0
    spacing = float(np.spacing(np_dtype(dtype)(start)))  # above 1.0
    # Adagrad's step with accum 1 and a tiny gradient g: lr * g / sqrt(1 + g^2) ~ lr * g.
    g = np_dtype(dtype)(1e-3)
    lr = -0.1 * spacing / float(g)  # negative lr: the weights grow
    means = {}
    for key in (None, "stochastic"):
        v = tf.Variable(np.full(n, start, np_dtype(dtype)))
        a = tf.Variable(np.ones(n, np.float32))
        for step in range(steps):
            tf_adagrad.ops.apply_adagrad(
                v,
                a,
                lr,
                0.0,
                np.full(n, g, np_dtype(dtype)),
                rounding_key=None if key is None else (11, step),
            )
        means[key] = v.numpy().astype(np.float64).mean()
    assert means[None] == start
    want = start + steps * 0.1 * spacing  # the steps shrink by < 1e-5 relative
    sigma = spacing * np.sqrt(steps * 0.25 / n)
    assert abs(means["stochastic"] - want) < 5 * sigma + 1e-3 * steps * 0.1 * spacing


def test_same_key_same_bits_other_key_other_bits():
    rng = np.random.default_rng(6)
    var0 = rng.uniform(-1, 1, (1000, 16)).astype(np_dtype(tf.bfloat16))
    grad = rng.uniform(-1, 1, (1000, 16)).astype(np_dtype(tf.bfloat16))

    def run(key):
        v, a = tf.Variable(var0), tf.Variable(np.ones((1000, 16), np.float32))
        tf_adagrad.ops.apply_adagrad(v, a, LR, EPSILON, grad, rounding_key=key)
        return bits(v.numpy())

    assert np.array_equal(run((1, 1)), run((1, 1)))
    assert not np.array_equal(run((1, 1)), run((2, 1)))
    assert not np.array_equal(run((1, 1)), run((1, 2)))


THREADS_SCRIPT = textwrap.dedent(
    """
    import hashlib, sys
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
    import tf_adagrad
    rng = np.random.default_rng(7)
    bf16 = tf.bfloat16.as_numpy_dtype
    v = tf.Variable(rng.uniform(-1, 1, (300_000, 8)).astype(bf16))
    a = tf.Variable(np.ones((300_000, 8), np.float32))
    tf_adagrad.ops.apply_adagrad(v, a, 0.05, 1e-7,
        rng.uniform(-1, 1, (300_000, 8)).astype(bf16), rounding_key=(5, 6))
    indices = rng.integers(0, 300_000, 50_000)
    tf_adagrad.ops.sparse_apply_adagrad(v, a, 0.05, 1e-7,
        rng.uniform(-1, 1, (50_000, 8)).astype(bf16), indices, rounding_key=(5, 7))
    rows = tf.Variable(np.ones((300_000,), np.float32))
    tf_adagrad.ops.sparse_rowwise_apply_adagrad(v, rows, 0.05, 1e-8,
        rng.uniform(-1, 1, (50_000, 8)).astype(bf16), indices, rounding_key=(5, 8))
    print("digest", hashlib.sha256(v.numpy().tobytes()).hexdigest())
    """
)


def test_bits_do_not_depend_on_the_thread_count(tmp_path):
    """The same updates in processes with 1, 2 and 7 op threads (each splits
    the work into other shards) give the same bits."""
    script = tmp_path / "threads.py"
    script.write_text(THREADS_SCRIPT)
    digests = set()
    for threads in (1, 2, 7):
        out = subprocess.run(
            [sys.executable, str(script), str(threads)],
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        )
        assert out.returncode == 0, out.stderr[-2000:]
        digests.add(next(line for line in out.stdout.splitlines() if line.startswith("digest")))
    assert len(digests) == 1, digests


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("dtype", HALF, ids=lambda d: d.name)
def test_xla_fallback_rounds_as_the_kernels(dtype, sparse):
    """Under XLA the optimizers' plain-op path draws the same Philox bits and
    rounds the same way: bit-identical to the kernels."""
    from tf_adagrad import _update_rules

    rng = np.random.default_rng(8)
    var0, accum0 = state(rng, (30, 6), dtype)
    indices = np.array([4, 29, 4, 0])
    grad = rng.uniform(-1, 1, (4 if sparse else 30, 6)).astype(np_dtype(dtype))
    gradient = tf.IndexedSlices(tf.constant(grad), tf.constant(indices)) if sparse else grad
    rule = _update_rules.INSIDE_SQRT.with_accumulator_dtype(tf.float32)
    key = (123, 4)
    results = []
    for jit in (False, True):
        v, a = tf.Variable(var0), tf.Variable(accum0)

        @tf.function(jit_compile=jit)
        def step(v=v, a=a):
            g = (
                gradient
                if not sparse
                else tf.IndexedSlices(tf.constant(grad), tf.constant(indices))
            )
            rule.apply(v, a, g, LR, EPSILON, rounding_key=tf.constant(key, tf.int64))

        step()
        results.append((bits(v.numpy()), bits(a.numpy())))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


# ------------------------------------------------------------ errors ---


def test_rounding_key_on_a_float32_var_is_rejected():
    v, a = tf.Variable(np.ones((3, 2), np.float32)), tf.Variable(np.ones((3, 2), np.float32))
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"TfAdagrad>ApplyDense: expected a `var` of dtype half or bfloat16 with a "
        r"`rounding_key` \(only 16-bit weights round stochastically\), got a `var` of dtype float",
    ):
        tf_adagrad.ops.apply_adagrad(
            v, a, LR, EPSILON, np.ones((3, 2), np.float32), rounding_key=(1, 2)
        )
    np.testing.assert_array_equal(v.numpy(), 1.0)
    np.testing.assert_array_equal(a.numpy(), 1.0)


def test_rounding_key_of_the_wrong_shape_is_rejected():
    bf16 = np_dtype(tf.bfloat16)
    v, a = tf.Variable(np.ones((3, 2), bf16)), tf.Variable(np.ones((3, 2), np.float32))
    with pytest.raises(
        (tf.errors.InvalidArgumentError, ValueError),
        match=r"TfAdagrad>ApplySparse: expected `rounding_key` of shape \[2\] \(seed, step\)",
    ):
        tf_adagrad.ops.sparse_apply_adagrad(
            v, a, LR, EPSILON, np.ones((1, 2), bf16), [0], rounding_key=(1, 2, 3)
        )
    np.testing.assert_array_equal(v.numpy().astype(np.float32), 1.0)


@pytest.mark.parametrize("dtype", HALF, ids=lambda d: d.name)
def test_accumulator_of_another_dtype_is_rejected(dtype):
    v = tf.Variable(np.ones((3, 2), np_dtype(dtype)))
    a = tf.Variable(np.ones((3, 2), np.float64))
    name = {tf.float16: "half", tf.bfloat16: "bfloat16"}[dtype]
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=rf"TfAdagrad>ApplyDense: expected `accum` of dtype {name} or float \(the dtype of "
        rf"`grad`, or float for a 16-bit `grad`\), got double",
    ):
        tf_adagrad.ops.apply_adagrad(v, a, LR, EPSILON, np.ones((3, 2), np_dtype(dtype)))
    np.testing.assert_array_equal(a.numpy(), 1.0)


def test_multi_tensor_op_still_wants_accumulators_of_the_variables_dtype():
    bf16 = np_dtype(tf.bfloat16)
    v = tf.Variable(np.ones((3,), bf16))
    a = tf.Variable(np.ones((3,), np.float32))
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"expected `accum\[0\]` of dtype bfloat16"
    ):
        tf_adagrad.ops.multi_apply_adagrad([v], [a], LR, EPSILON, [np.ones((3,), bf16)])
