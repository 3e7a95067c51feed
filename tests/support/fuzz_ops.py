"""Fuzzes TfAdagrad>ApplyDense, TfAdagrad>ApplySparse,
TfAdagrad>MultiApplyDense, TfAdagrad>RowwiseApplyDense and
TfAdagrad>RowwiseApplySparse with generated inputs, valid and invalid,
through the raw ops (no Python-side checks in the way).

Every call must either succeed and match the NumPy reference bit for bit
(NaN for NaN), when the inputs are valid, or raise the documented TF error
class, with a message that says what was expected, and leave var and accum
bit-identical to before, when they are not. Which of the two is predicted
here from the documented rules, independently of the kernels.

Run by tests/test_ops_fuzz.py in a subprocess, so that a crash fails the test:
    python tests/support/fuzz_ops.py --examples 10000 --seed 1234
"""

import argparse
import collections
import itertools
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from adagrad_reference import bits, dense_step_exact, np_dtype, sparse_step_exact  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from rowwise_reference import accumulator_dtype  # noqa: E402
from rowwise_reference import dense_step_exact as rowwise_dense_step  # noqa: E402
from rowwise_reference import sparse_step_exact as rowwise_sparse_step  # noqa: E402

import tf_adagrad  # noqa: E402

DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
# Normal numbers only: TF runs CPU kernels with denormals flushed to zero,
# which NumPy does not model. Zero, NaN and the infinities are included.
MAGNITUDES = [0.0, 1e-3, 0.01, 0.5, 1.0, 3.0, 100.0, 1e3]
SPECIALS = [np.nan, np.inf, -np.inf]

counts = collections.Counter()
uninitialized_names = itertools.count()


def values(draw, shape, dtype, allow_specials):
    size = int(np.prod(shape, dtype=np.int64))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    out = rng.choice(MAGNITUDES, size) * rng.choice([-1.0, 1.0], size)
    if allow_specials and size and draw(st.integers(0, 9)) == 0:
        out[rng.integers(0, size, max(1, size // 10))] = rng.choice(SPECIALS, max(1, size // 10))
    return out.reshape(shape).astype(np_dtype(dtype))


def shapes(draw, rank_min=0, rank_max=3):
    if draw(st.integers(0, 19)) == 0:  # very large rows, few of them
        return (draw(st.integers(1, 2)), draw(st.integers(10_000, 70_000)))
    rank = draw(st.integers(rank_min, rank_max))
    return tuple(draw(st.integers(0, 5)) for _ in range(rank))


def mutated(draw, shape):
    """`shape` most of the time; otherwise another rank or one dimension off."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return shape + (1,)
    if choice == 1 and shape:
        return shape[:-1]
    if choice == 2 and shape:
        i = draw(st.integers(0, len(shape) - 1))
        return shape[:i] + (abs(shape[i] + draw(st.sampled_from([-1, 1, 7]))),) + shape[i + 1 :]
    return shape


def index_values(draw, nnz, num_rows, index_dtype):
    info = np.iinfo(index_dtype.as_numpy_dtype)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if num_rows > 0:
        out = rng.integers(0, num_rows, nnz)
        if draw(st.booleans()):  # heavy duplicates
            out = out % max(1, num_rows // 3)
    else:
        out = np.zeros(nnz, np.int64)
    if nnz and draw(st.integers(0, 4)) == 0:
        bad = draw(st.sampled_from([-1, num_rows, num_rows + 1, info.max, info.max - 1, info.min]))
        out[draw(st.integers(0, nnz - 1))] = bad
    return out.astype(index_dtype.as_numpy_dtype)


class Variable:
    """A resource variable, or a handle to one that was never created."""

    def __init__(self, value, dtype, initialized):
        self.initialized = initialized
        self.dtype = dtype
        if initialized:
            self.variable = tf.Variable(value, dtype=dtype)
            self.handle = self.variable.handle
        else:
            self.handle = tf.raw_ops.VarHandleOp(
                dtype=dtype,
                shape=value.shape,
                shared_name=f"never_assigned_{next(uninitialized_names)}",
            )

    def read(self):
        return self.variable.numpy() if self.initialized else None


def expected_gradient_error(case):
    """(error class, reason) that the documented rules predict for the
    gradient (and a sparse call's indices) once the variables and
    hyperparameters passed their checks, or None; the same for the
    elementwise and the rowwise ops."""
    invalid = tf.errors.InvalidArgumentError
    var_shape, grad_shape = case["var_shape"], case["grad"].shape
    if not case["sparse"]:
        return None if grad_shape == var_shape else (invalid, "grad shape")
    indices = case["indices"]
    if len(var_shape) < 1:
        return invalid, "var rank 0"
    if indices.ndim != 1:
        return invalid, "indices rank"
    if len(grad_shape) < 1 or grad_shape[0] != indices.shape[0] or grad_shape[1:] != var_shape[1:]:
        return invalid, "grad shape"
    if np.any(indices.astype(np.int64) < 0):
        return invalid, "negative index"
    if np.any(indices.astype(np.int64) >= var_shape[0]):
        return invalid, "index too large"
    return None


def expected_variables_error(case, accum_dtype, accum_shape):
    """(error class, reason) that the documented rules predict for a
    single-variable op whose accumulator must have `accum_dtype` and
    `accum_shape`: the variables, the scalars and the shapes in the
    kernels' order, then the gradient; or None."""
    invalid, failed = tf.errors.InvalidArgumentError, tf.errors.FailedPreconditionError
    var, accum, T = case["var"], case["accum"], case["T"]
    if not var.initialized:
        return failed, "uninitialized var"
    if var.dtype != T:
        return invalid, "var dtype"
    if not accum.initialized:
        return failed, "uninitialized accum"
    if accum.dtype not in (accum_dtype if isinstance(accum_dtype, tuple) else (accum_dtype,)):
        return invalid, "accum dtype"
    if case["same_variable"]:
        return invalid, "var is accum"
    if case["lr"].shape != () or case["epsilon"].shape != ():
        return invalid, "lr or epsilon not a scalar"
    if case["accum_shape"] != accum_shape:
        return invalid, "accum shape"
    return expected_gradient_error(case)


def expected_error(case):
    """The prediction for the elementwise ops: an accumulator of the
    variable's shape and dtype (or float32, for a 16-bit variable)."""
    T = case["T"]
    accum_dtypes = (T, tf.float32) if T in (tf.float16, tf.bfloat16) else (T,)
    return expected_variables_error(case, accum_dtypes, case["var_shape"])


def expected_multi_error(case):
    """The multi-tensor op looks up var[0..N) then accum[0..N) in order, then
    checks that all 2N are distinct, the scalars, and each position's shapes."""
    invalid, failed = tf.errors.InvalidArgumentError, tf.errors.FailedPreconditionError
    T, pairs = case["T"], case["pairs"]
    for role in ("var", "accum"):
        for pair in pairs:
            variable = pair[role]
            if not variable.initialized:
                return failed, f"uninitialized {role} (multi)"
            if variable.dtype != T:
                return invalid, f"{role} dtype (multi)"
    if any(pair["same_variable"] for pair in pairs):
        return invalid, "a variable twice (multi)"
    if case["lr"].shape != () or case["epsilon"].shape != ():
        return invalid, "lr or epsilon not a scalar (multi)"
    for pair in pairs:
        if pair["accum_shape"] != pair["var_shape"]:
            return invalid, "accum shape (multi)"
        if pair["grad"].shape != pair["var_shape"]:
            return invalid, "grad shape (multi)"
    return None


@st.composite
def multi_cases(draw):
    """1 to 4 dense cases of one T, updated by one MultiApplyDense call with
    the first case's lr and epsilon."""
    T = draw(st.sampled_from(DTYPES))
    pairs = [draw(cases(sparse=False, T=T)) for _ in range(draw(st.integers(1, 4)))]
    return dict(
        multi=True,
        T=T,
        pairs=pairs,
        lr=pairs[0]["lr"],
        epsilon=pairs[0]["epsilon"],
        epsilon_placement=pairs[0]["epsilon_placement"],
    )


@st.composite
def any_cases(draw):
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(multi_cases())
    return draw(rowwise_cases()) if kind == 1 else draw(cases())


def expected_rowwise_error(case):
    """The prediction for the rowwise ops: lr of the accumulator dtype (checked
    when the kernel is built, first), and an accumulator of one value per
    row in the accumulator dtype."""
    accum_dtype = tf.as_dtype(accumulator_dtype(case["T"]))
    if tf.as_dtype(case["lr"].dtype) != accum_dtype:
        return tf.errors.InvalidArgumentError, "lr dtype"
    return expected_variables_error(case, accum_dtype, case["var_shape"][:1])


@st.composite
def rowwise_cases(draw):
    """Rowwise calls: an accumulator of shape var.shape[:1] in the
    accumulator dtype, mostly; otherwise the elementwise shape, another
    shape or another dtype."""
    case = draw(cases())
    T = case["T"]
    if case["same_variable"]:
        return case | dict(
            rowwise=True,
            lr=case["lr"].astype(accumulator_dtype(T)),
            epsilon=case["epsilon"].astype(accumulator_dtype(T)),
        )
    var_shape = case["var_shape"]
    accum_shape = var_shape[:1]
    choice = draw(st.integers(0, 9))
    if choice == 0:
        accum_shape = var_shape  # an elementwise accumulator
    elif choice == 1:
        accum_shape = mutated(draw, accum_shape)
    accum_dtype = tf.as_dtype(accumulator_dtype(T))
    if draw(st.integers(0, 14)) == 0:
        accum_dtype = draw(st.sampled_from(DTYPES))
    accum_value = np.abs(values(draw, accum_shape, accum_dtype, allow_specials=True))
    accum = Variable(accum_value, accum_dtype, initialized=draw(st.integers(0, 49)) != 0)
    hyper_dtype = accumulator_dtype(T) if draw(st.integers(0, 19)) else np.float64
    return case | dict(
        rowwise=True,
        accum=accum,
        accum_shape=accum_shape,
        lr=case["lr"].astype(np.float64).astype(hyper_dtype),
        epsilon=case["epsilon"].astype(np.float64).astype(hyper_dtype),
    )


@st.composite
def cases(draw, sparse=None, T=None):
    sparse = draw(st.booleans()) if sparse is None else sparse
    T = draw(st.sampled_from(DTYPES)) if T is None else T
    var_dtype = T if draw(st.integers(0, 9)) else draw(st.sampled_from(DTYPES))
    accum_dtype = var_dtype if draw(st.integers(0, 9)) else draw(st.sampled_from(DTYPES))
    var_shape = shapes(draw, rank_min=0 if not sparse or draw(st.integers(0, 9)) == 0 else 1)
    accum_shape = var_shape if draw(st.integers(0, 9)) else mutated(draw, var_shape)
    var_value = values(draw, var_shape, var_dtype, allow_specials=True)
    # Accumulators are sums of squares: mostly non-negative.
    accum_value = np.abs(values(draw, accum_shape, accum_dtype, allow_specials=True))
    if draw(st.integers(0, 19)) == 0:
        accum_value = -accum_value
    var = Variable(var_value, var_dtype, initialized=draw(st.integers(0, 49)) != 0)
    same_variable = draw(st.integers(0, 49)) == 0
    accum = (
        var
        if same_variable
        else Variable(accum_value, accum_dtype, initialized=draw(st.integers(0, 49)) != 0)
    )
    accum_shape = var_shape if same_variable else accum_shape
    scalar_shape = () if draw(st.integers(0, 14)) else draw(st.sampled_from([(1,), (2,), (1, 1)]))
    lr_magnitude = draw(st.sampled_from([0.1, 0.5, 1.0, -0.1, 0.0, 10.0, np.nan, np.inf]))
    epsilon_magnitude = draw(st.sampled_from([1e-7, 1e-3, 0.0, 1.0, -1e-3, np.nan]))
    lr = np.full(scalar_shape if draw(st.booleans()) else (), lr_magnitude).astype(np_dtype(T))
    epsilon = np.full(scalar_shape if draw(st.booleans()) else (), epsilon_magnitude).astype(
        np_dtype(T)
    )
    case = dict(
        multi=False,
        sparse=sparse,
        T=T,
        var=var,
        accum=accum,
        same_variable=same_variable,
        var_shape=var_shape,
        accum_shape=accum_shape,
        lr=lr,
        epsilon=epsilon,
        epsilon_placement=draw(st.sampled_from(["inside_sqrt", "outside_sqrt"])),
    )
    if sparse:
        index_dtype = draw(st.sampled_from([tf.int32, tf.int64]))
        nnz = draw(st.integers(0, 12))
        num_rows = var_shape[0] if var_shape else 0
        indices = index_values(draw, nnz, num_rows, index_dtype)
        if draw(st.integers(0, 19)) == 0:
            indices = (
                indices.reshape((1, nnz))
                if draw(st.booleans())
                else np.array(indices[:1].sum(), indices.dtype)
            )
        grad_shape = (nnz,) + tuple(var_shape[1:])
        grad_shape = grad_shape if draw(st.integers(0, 9)) else mutated(draw, grad_shape)
        case["indices"] = indices
    else:
        grad_shape = var_shape if draw(st.integers(0, 9)) else mutated(draw, var_shape)
    case["grad"] = values(draw, grad_shape, T, allow_specials=True)
    return case


def same_values(actual, expected):
    """Bit-identical, except that any NaN matches any NaN."""
    if actual.shape != expected.shape:
        return False
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(e)
    return bool(np.all(both_nan | (bits(actual) == bits(expected))))


def check_rejection(e, want_error, variables, before):
    assert want_error is not None, f"valid input rejected: {type(e).__name__}: {e.message}"
    want_class, reason = want_error
    assert isinstance(e, want_class), (
        f"expected {want_class.__name__} ({reason}), got {type(e).__name__}: {e.message}"
    )
    assert "expected" in e.message and ("TfAdagrad>" in e.message), e.message
    for variable, old in zip(variables, before):
        assert old is None or same_values(variable.read(), old), (
            "a rejected call wrote to a variable"
        )
    counts[f"rejected: {type(e).__name__}"] += 1
    counts[f"  reason: {reason}"] += 1


def run_multi_case(case):
    library = tf_adagrad.ops.load_library()
    pairs = case["pairs"]
    variables = [pair["var"] for pair in pairs] + [pair["accum"] for pair in pairs]
    before = [v.read() for v in variables]
    want_error = expected_multi_error(case)
    counts["calls"] += 1
    try:
        library.tf_adagrad_multi_apply_dense(
            var=[pair["var"].handle for pair in pairs],
            accum=[pair["accum"].handle for pair in pairs],
            lr=case["lr"],
            epsilon=case["epsilon"],
            grad=[pair["grad"] for pair in pairs],
            epsilon_placement=case["epsilon_placement"],
        )
    except (tf.errors.InvalidArgumentError, tf.errors.FailedPreconditionError) as e:
        check_rejection(e, want_error, variables, before)
        return
    assert want_error is None, f"invalid input accepted; expected {want_error}"
    lr, epsilon = case["lr"][()], case["epsilon"][()]
    for i, pair in enumerate(pairs):
        want_var, want_accum = dense_step_exact(
            before[i],
            before[len(pairs) + i],
            lr,
            epsilon,
            pair["grad"],
            case["T"],
            case["epsilon_placement"],
        )
        assert same_values(pair["accum"].read(), want_accum), (
            f"accum[{i}] differs from the NumPy reference"
        )
        assert same_values(pair["var"].read(), want_var), (
            f"var[{i}] differs from the NumPy reference"
        )
    counts["matched the reference"] += 1
    counts[f"  multi, {case['T'].name}, {len(pairs)} variables"] += 1
    counts[f"matched with epsilon {case['epsilon_placement']}"] += 1


def call_op(case, dense_op, sparse_op, want_error, **attributes):
    """Calls `sparse_op` (with the case's indices) or `dense_op` on the
    case's var, accum, lr, epsilon and grad, with use_locking on every other
    call. If the op rejects the call, checks the rejection against
    `want_error` (check_rejection) and returns None; otherwise asserts that
    `want_error` is None, and returns (var, accum) as they were before."""
    var, accum = case["var"], case["accum"]
    before = (var.read(), accum.read())
    arguments = dict(
        var=var.handle,
        accum=accum.handle,
        lr=case["lr"],
        epsilon=case["epsilon"],
        grad=case["grad"],
        use_locking=bool(counts["calls"] % 2),
        rounding_key=[],
        **attributes,
    )
    counts["calls"] += 1
    try:
        if case["sparse"]:
            sparse_op(indices=case["indices"], **arguments)
        else:
            dense_op(**arguments)
    except (tf.errors.InvalidArgumentError, tf.errors.FailedPreconditionError) as e:
        check_rejection(e, want_error, (var, accum), before)
        return None
    assert want_error is None, f"invalid input accepted; expected {want_error}"
    return before


def run_rowwise_case(case):
    library = tf_adagrad.ops.load_library()
    var, accum = case["var"], case["accum"]
    before = call_op(
        case,
        library.tf_adagrad_rowwise_apply_dense,
        library.tf_adagrad_rowwise_apply_sparse,
        expected_rowwise_error(case),
    )
    if before is None:
        return
    lr, epsilon = case["lr"][()], case["epsilon"][()]
    if case["sparse"]:
        want_var, want_accum = rowwise_sparse_step(
            before[0], before[1], lr, epsilon, case["grad"], case["indices"], case["T"]
        )
    else:
        want_var, want_accum = rowwise_dense_step(
            before[0], before[1], lr, epsilon, case["grad"], case["T"]
        )
    assert same_values(accum.read(), want_accum), "rowwise accum differs from the NumPy reference"
    assert same_values(var.read(), want_var), "rowwise var differs from the NumPy reference"
    counts["matched the reference"] += 1
    counts["matched rowwise"] += 1
    counts[f"  rowwise {'sparse' if case['sparse'] else 'dense'}, {case['T'].name}"] += 1


def run_case(case):
    if case["multi"]:
        return run_multi_case(case)
    if case.get("rowwise"):
        return run_rowwise_case(case)
    library = tf_adagrad.ops.load_library()
    var, accum = case["var"], case["accum"]
    before = call_op(
        case,
        library.tf_adagrad_apply_dense,
        library.tf_adagrad_apply_sparse,
        expected_error(case),
        epsilon_placement=case["epsilon_placement"],
    )
    if before is None:
        return
    lr, epsilon = case["lr"][()], case["epsilon"][()]
    if case["sparse"]:
        want_var, want_accum = sparse_step_exact(
            before[0],
            before[1],
            lr,
            epsilon,
            case["grad"],
            case["indices"],
            case["T"],
            case["epsilon_placement"],
        )
    else:
        want_var, want_accum = dense_step_exact(
            before[0], before[1], lr, epsilon, case["grad"], case["T"], case["epsilon_placement"]
        )
    assert same_values(accum.read(), want_accum), "accum differs from the NumPy reference"
    assert same_values(var.read(), want_var), "var differs from the NumPy reference"
    counts["matched the reference"] += 1
    counts[f"  {'sparse' if case['sparse'] else 'dense'}, {case['T'].name}"] += 1
    counts[f"matched with epsilon {case['epsilon_placement']}"] += 1
    if case["grad"].size == 0 or before[0].size == 0:
        counts["  empty grad or var"] += 1
    if not np.all(np.isfinite(var.read().astype(np.float64))):
        counts["  NaN or Inf in var after the step"] += 1
    if case["var_shape"] and case["var_shape"][-1] >= 10_000:
        counts["  rows of 10,000+ elements"] += 1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()
    print(f"fuzzing the ops: {args.examples} examples, seed {args.seed}", flush=True)

    @seed(args.seed)
    @settings(
        max_examples=args.examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(any_cases())
    def fuzz(case):
        run_case(case)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy on NaN/Inf inputs, by design
        fuzz()
    print(f"calls: {counts.pop('calls')}")
    for heading in (
        "matched the reference",
        "rejected: InvalidArgumentError",
        "rejected: FailedPreconditionError",
    ):
        print(f"{heading}: {counts.pop(heading, 0)}")
    for key, value in sorted(counts.items()):
        print(f"{key}: {value}")
    print("crashes: 0")


if __name__ == "__main__":
    main()
