"""tf_adagrad.keras2.Adagrad and tf_adagrad.keras2.legacy.Adagrad against their
tf_keras counterparts (run side by side) and NumPy: update math, fit(),
the fused step's ops, XLA, configuration, saved models and checkpoints.

`tf.keras` is tf_keras only when TF_USE_LEGACY_KERAS=1 is set before
TensorFlow is imported, so the tf_keras work runs in child processes
(tests/support/keras2_cases.py; conftest.py's session fixtures start them):
one runs every case, tests/test_keras2_rowwise.py's too, and saves models,
a second loads them with nothing but `import tf_adagrad`. Each test checks
the results of its own case.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from support.adagrad_reference import bits
from support.processes import case_result

KINDS = ["keras2", "legacy"]
GRADIENTS = ["dense", "sparse"]
# The classes' registered names in tf_keras' serialization.
REGISTERED_NAMES = {
    "keras2": "tf_adagrad.keras2>Adagrad",
    "legacy": "tf_adagrad.keras2.legacy>Adagrad",
}
OUR_TYPES = {
    "keras2": "tf_adagrad.keras2.adagrad.Adagrad",
    "legacy": "tf_adagrad.keras2.legacy.adagrad.Adagrad",
}
THEIR_TYPES = {
    "keras2": "tf_keras.src.optimizers.adagrad.Adagrad",
    "legacy": "tf_keras.src.optimizers.legacy.adagrad.Adagrad",
}
# As in tests/support/keras2_cases.py.
LEARNING_RATE, EPSILON, INITIAL_ACCUMULATOR_VALUE = 0.1, 1e-7, 0.1
NUM_ROWS = 40


def max_ulp_difference(a, b):
    """The largest distance in units in the last place between same-sign
    floats of `a` and `b` (float32 or float64)."""
    a, b = np.asarray(a), np.asarray(b)
    signed = np.int32 if a.dtype == np.float32 else np.int64
    return int(np.max(np.abs(a.view(signed).astype(np.int64) - b.view(signed).astype(np.int64))))


def assert_bit_identical(ours, theirs, what):
    assert len(ours) == len(theirs) > 0, what
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.dtype == b.dtype, f"{what}[{i}]"
        np.testing.assert_array_equal(bits(a), bits(b), err_msg=f"{what}[{i}]")


def assert_same_state(ours, theirs):
    for key in ours:
        if key in ("variables", "accumulators", "weights"):
            assert_bit_identical(ours[key], theirs[key], key)


# -- Importing ---------------------------------------------------------------


@pytest.mark.slow  # a fresh process of its own
def test_import_error_without_tf_keras():
    """Without tf_keras, `import tf_adagrad` works, and `import
    tf_adagrad.keras2` or `tf_adagrad.keras2.Adagrad` says what to install
    and set."""
    code = textwrap.dedent(
        """
        import json, sys
        sys.modules["tf_keras"] = None  # as if tf-keras were not installed
        import tf_adagrad
        outcome = {"has_keras2": "keras2" in vars(tf_adagrad)}
        try:
            import tf_adagrad.keras2
        except ImportError as e:
            outcome["error"] = [type(e).__name__, str(e)]
        try:
            tf_adagrad.keras2.Adagrad
        except ImportError as e:
            outcome["attribute_error"] = [type(e).__name__, str(e)]
        print(json.dumps(outcome))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    outcome = json.loads(completed.stdout.strip().splitlines()[-1])
    assert outcome["has_keras2"] is False
    error_class, message = outcome["error"]
    assert error_class == "ImportError"
    assert "tf_adagrad.keras2 needs tf-keras" in message
    assert "pip install tf-keras==2.21.*" in message
    assert 'pip install "<path to tf_adagrad-*.whl>[keras2]"' in message
    assert "TF_USE_LEGACY_KERAS=1 before TensorFlow is imported" in message
    # `tf_adagrad.keras2.Adagrad` after `import tf_adagrad` says the same.
    assert outcome["attribute_error"] == outcome["error"]


@pytest.mark.keras2_cases("tf_keras_is_tf_keras")
def test_child_tf_keras_is_tf_keras(keras2_train_results):
    result = case_result(keras2_train_results, "tf_keras_is_tf_keras")
    assert result["tf.keras"].startswith("tf_keras"), result


# -- Parity with the counterparts (float32) ---------------------------------


@pytest.mark.keras2_cases("parity/")
@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("kind", KINDS)
def test_bit_identical_to_counterpart_eagerly(keras2_train_results, kind, gradient):
    """Five steps; the sparse gradients name rows more than once."""
    result = case_result(keras2_train_results, f"parity/{kind}/{gradient}")
    assert_same_state(result["ours"], result["theirs"])


@pytest.mark.keras2_cases("parity_graph/")
@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("kind", KINDS)
def test_bit_identical_to_counterpart_in_tf_function(keras2_train_results, kind, gradient):
    """keras2: with Grappler's arithmetic rewrite off, which otherwise turns
    tf_keras' own division by sqrt into a multiply by rsqrt (see
    test_keras2_default_graph_fit_differs_by_grappler_rewrite_only); legacy:
    as is, tf_keras' legacy Adagrad runs TensorFlow's fused op."""
    result = case_result(keras2_train_results, f"parity_graph/{kind}/{gradient}")
    assert_same_state(result["ours"], result["theirs"])


@pytest.mark.keras2_cases("features/")
@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("kind", KINDS)
def test_base_class_features_are_kept(keras2_train_results, kind, gradient):
    """keras2: global clipnorm, weight decay and EMA (overwriting every 2
    steps); legacy: clipnorm and learning rate decay; all from the base."""
    result = case_result(keras2_train_results, f"features/{kind}/{gradient}")
    assert_same_state(result["ours"], result["theirs"])


@pytest.mark.keras2_cases("ema_rows")
@pytest.mark.parametrize("case", ["ema_rows", "ema_rows_in_batch_decay"])
def test_moving_averages_wait_for_their_rows(keras2_train_results, case):
    """keras2.Adagrad keeps the table's averages a row at a time: a row's
    average catches up in closed form (`w + m**k * (average - w)`) when the
    row changes, and every row when the averages overwrite the weights (every
    3 steps) or are finalized. Against tf_keras' Adagrad, which averages
    every row every step: a few float32 roundings apart (the closed form
    for at most 3 steps; with rows-in-batch weight decay tf_keras has no such
    option, so only the rows' bookkeeping is checked)."""
    result = case_result(keras2_train_results, f"{case}/keras2/sparse")
    ours, theirs = result["ours"], result.get("theirs")
    named = result["named_rows"]
    unnamed = sorted(set(range(NUM_ROWS)) - set(named))
    assert unnamed and named
    # 7 EMA steps; the last overwrite (step 6) caught every row up, and
    # step 7 brought only the rows it changed (there, to step 6).
    assert result["count"] == 7
    last_step = np.asarray(result["last_step"])
    assert set(last_step[unnamed]) == {6}
    if case == "ema_rows":
        for key in ("variables", "final"):
            for a, b in zip(ours[key], theirs[key]):
                assert max_ulp_difference(a, b) <= 8, key
        # Finalized: the weights are the averages, not the last weights.
        assert not np.allclose(ours["final"][0], ours["variables"][0], rtol=1e-4)
    else:
        # Rows never named never decayed: after the overwrites they hold
        # their starting values, as their averages do.
        start = np.random.default_rng(0).uniform(-1, 1, (NUM_ROWS, 3)).astype(np.float32)
        np.testing.assert_array_equal(ours["final"][0][unnamed], start[unnamed])


@pytest.mark.slow
@pytest.mark.keras2_cases("fit/")
@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("kind", KINDS)
def test_fit_through_tf_keras_compile(keras2_train_results, kind, gradient):
    """`tf.keras.Model.compile(optimizer=...)` takes the classes, and fit()
    trains exactly as with the counterpart (keras2: Grappler rewrite off)."""
    result = case_result(keras2_train_results, f"fit/{kind}/{gradient}")
    ours, theirs = result["ours"], result["theirs"]
    assert ours["loss"] == theirs["loss"]
    assert ours["loss"][-1] < ours["loss"][0]
    assert_same_state(ours, theirs)


@pytest.mark.slow
@pytest.mark.keras2_cases("fit_default_grappler/")
def test_keras2_default_graph_fit_differs_by_grappler_rewrite_only(keras2_train_results):
    """With Grappler's default rewrites, tf_keras' Adagrad computes `lr * g
    * rsqrt(a + eps)` in fit(), tf_adagrad the formula as written: single
    updates differ by an ulp, which 12 steps of training carry into the
    weights. Bit-identical with the rewrite off (above)."""
    result = case_result(keras2_train_results, "fit_default_grappler/keras2")
    for key in ("weights", "accumulators"):
        for ours, theirs in zip(result["ours"][key], result["theirs"][key]):
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)


# -- float16, bfloat16 and float64 against NumPy -----------------------------


def reference_steps(kind, gradient, dtype, initial, gradients):
    """The classes' math in NumPy: 16-bit types computed in float32 and
    rounded once; keras2 adds epsilon inside the square root, legacy after
    it (TensorFlow's ApplyAdagradV2). Rows of duplicate indices are summed
    in position order, in the compute type."""
    store = tf.as_dtype(dtype).as_numpy_dtype
    compute = np.float64 if dtype == "float64" else np.float32
    # The learning rate is a float32 variable cast to the variables' dtype;
    # epsilon converts to it straight from the Python float.
    lr = store(np.float32(LEARNING_RATE)).astype(compute)
    epsilon = store(EPSILON).astype(compute)

    def update(var, accum, grad):
        var, accum, grad = (np.asarray(x).astype(compute) for x in (var, accum, grad))
        accum = accum + grad * grad
        if kind == "keras2":
            denominator = np.sqrt(accum + epsilon)
        else:
            denominator = np.sqrt(accum) + epsilon
        var = var - lr * grad / denominator
        return var.astype(store), accum.astype(store)

    variables = [np.asarray(v).astype(store) for v in initial]
    accumulators = [np.full(v.shape, INITIAL_ACCUMULATOR_VALUE, store) for v in variables]
    for step in gradients:
        if gradient == "dense":
            for i, grad in enumerate(step):
                variables[i], accumulators[i] = update(variables[i], accumulators[i], grad)
        else:
            values, indices = step
            summed = {}
            for row, index in zip(np.asarray(values).astype(compute), indices):
                summed[index] = summed[index] + row if index in summed else row
            for index, row in summed.items():
                variables[0][index], accumulators[0][index] = update(
                    variables[0][index], accumulators[0][index], row
                )
    return variables, accumulators


@pytest.mark.keras2_cases("dtype/")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("kind", KINDS)
def test_dtype_matches_numpy_reference(keras2_train_results, kind, gradient, dtype):
    result = case_result(keras2_train_results, f"dtype/{kind}/{gradient}/{dtype}")
    variables, accumulators = reference_steps(
        kind, gradient, dtype, result["initial"], result["gradients"]
    )
    # The child hands bfloat16 over widened to float32 (exactly).
    wire = np.float32 if dtype == "bfloat16" else tf.as_dtype(dtype).as_numpy_dtype
    assert_bit_identical(
        result["variables"], [v.astype(wire) for v in variables], f"{dtype} variables"
    )
    assert_bit_identical(
        result["accumulators"], [a.astype(wire) for a in accumulators], f"{dtype} accumulators"
    )


# -- One fused op per device and dtype --------------------------------------


@pytest.mark.keras2_cases("op_counts/")
@pytest.mark.parametrize("kind", KINDS)
def test_step_runs_fused_ops(keras2_train_results, kind):
    """5 float32 and 2 float64 dense variables and a sparse gradient with a
    repeated index: one MultiApplyDense per dtype, one ApplySparse, and no
    deduplication (the sparse kernel sums repeated rows itself)."""
    counts = case_result(keras2_train_results, f"op_counts/{kind}")
    assert counts.get("TfAdagrad>MultiApplyDense") == 2, counts
    assert counts.get("TfAdagrad>ApplySparse") == 1, counts
    for op_type in (
        "TfAdagrad>ApplyDense",
        "Unique",
        "UnsortedSegmentSum",
        "ResourceApplyAdagradV2",
        "ResourceSparseApplyAdagradV2",
        "Sqrt",
    ):
        assert op_type not in counts, counts


# -- XLA ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.keras2_cases("xla_step/")
@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("kind", KINDS)
def test_xla_fallback_matches_fused_ops(keras2_train_results, kind, gradient):
    """apply_gradients in tf.function(jit_compile=True), which cannot run
    the fused ops, against eager steps on them, 3 steps. Values are of
    order 1; XLA's CPU code contracts `a + g * g` into a fused multiply-add
    and rewrites the division by sqrt into a multiply by rsqrt, so results
    may move by a few float32 ulps of 1 (measured: up to 8)."""
    result = case_result(keras2_train_results, f"xla_step/{kind}/{gradient}")
    for key in ("variables", "accumulators"):
        for xla, fused in zip(result["xla"][key], result["fused"][key]):
            np.testing.assert_allclose(xla, fused, rtol=0, atol=1e-6, err_msg=key)


@pytest.mark.slow
@pytest.mark.keras2_cases("xla_fit/")
@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("kind", KINDS)
def test_fit_with_jit_compile(keras2_train_results, kind, gradient):
    """model.compile(jit_compile=True): the whole train step is compiled by
    XLA (it would fail on a fused op), and trains as the fused ops do up to
    XLA's own rounding of the model and the update."""
    result = case_result(keras2_train_results, f"xla_fit/{kind}/{gradient}")
    xla, fused = result["xla"], result["fused"]
    np.testing.assert_allclose(xla["loss"], fused["loss"], rtol=1e-5)
    for key in ("weights", "accumulators"):
        for a, b in zip(xla[key], fused[key]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=key)


# -- Configuration and serialization ----------------------------------------


@pytest.mark.keras2_cases("configs")
@pytest.mark.parametrize("label", ["plain", "schedule"])
@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trip(keras2_train_results, kind, label):
    result = case_result(keras2_train_results, "configs")[f"{kind}/{label}"]
    assert result["config"] == result["theirs_config"]  # a drop-in's config
    assert result["from_config_type"] == OUR_TYPES[kind]
    assert result["from_config_config"] == result["config"]
    assert result["registered_name"] == REGISTERED_NAMES[kind]
    assert result["deserialized_type"] == OUR_TYPES[kind]
    assert result["deserialized_config"] == result["config"]


@pytest.mark.keras2_cases("use_locking")
@pytest.mark.parametrize("name", ["Adagrad", "RowwiseAdagrad"])
def test_use_locking_is_configured_and_checked(keras2_train_results, name):
    result = case_result(keras2_train_results, "use_locking")[name]
    assert "use_locking" not in result["default_config_keys"]  # tf_keras' config
    assert result["config"] is True
    assert result["from_config"] is True
    assert result["bad"] == ("TypeError", "use_locking must be True or False, received: 'yes'")


@pytest.mark.slow
@pytest.mark.keras2_cases("save_models")
@pytest.mark.parametrize("save_format", ["keras", "tf"])
@pytest.mark.parametrize("kind", KINDS)
def test_saved_model_loads_after_import_tf_adagrad(
    keras2_train_results, keras2_load_results, kind, save_format
):
    """A .keras file and a SavedModel of a compiled, trained Embedding model
    load with tf_keras.models.load_model in a process that imported only
    tf_adagrad: the optimizer is ours, with its configuration, and the
    weights and accumulators are the saved ones (a SavedModel's optimizer
    state read back with `model.load_weights`, as for tf_keras' own)."""
    saved = case_result(keras2_train_results, "save_models")[f"{kind}/{save_format}"]
    loaded = case_result(keras2_load_results, "load_models")[f"{kind}/{save_format}"]
    assert loaded["type"] == OUR_TYPES[kind]
    assert loaded["config"] == saved["config"]
    assert_bit_identical(loaded["weights"], saved["weights"], "weights")
    assert any(np.any(a != np.float32(INITIAL_ACCUMULATOR_VALUE)) for a in saved["accumulators"])
    if kind == "legacy" and save_format == "keras":
        # tf_keras' .keras format stores no variables of legacy optimizers.
        return
    assert_bit_identical(loaded["accumulators"], saved["accumulators"], "accumulators")


@pytest.mark.slow
@pytest.mark.keras2_cases("checkpoint/")
@pytest.mark.parametrize("writer", ["ours", "theirs"])
@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_restores_into_the_other_class(keras2_train_results, kind, writer):
    result = case_result(keras2_train_results, f"checkpoint/{kind}/{writer}_to_other")
    reader_types = THEIR_TYPES if writer == "ours" else OUR_TYPES
    assert result["read_type"] == reader_types[kind]
    assert_bit_identical(result["read_weights"], result["written"]["weights"], "weights")
    assert_bit_identical(
        result["read_accumulators"], result["written"]["accumulators"], "accumulators"
    )


# -- Bad input ---------------------------------------------------------------


@pytest.mark.keras2_cases("bad_input")
@pytest.mark.parametrize("argument", ["epsilon", "initial_accumulator_value"])
@pytest.mark.parametrize("kind", KINDS)
def test_negative_hyperparameter_is_rejected(keras2_train_results, kind, argument):
    """A negative epsilon or initial accumulator makes the square root or
    its sum NaN or zero; legacy tf_keras rejects the latter too."""
    outcomes = case_result(keras2_train_results, "bad_input")
    assert outcomes[f"{kind}/ours/{argument}"] == (
        "ValueError",
        f"{argument} must be a real number >= 0, received: -0.5 (float)",
    )


@pytest.mark.keras2_cases("bad_input")
@pytest.mark.parametrize("kind", KINDS)
def test_integer_variable_is_rejected_by_name(keras2_train_results, kind):
    outcomes = case_result(keras2_train_results, "bad_input")
    class_name = (
        "tf_adagrad.keras2.Adagrad" if kind == "keras2" else "tf_adagrad.keras2.legacy.Adagrad"
    )
    assert outcomes[f"{kind}/integer_variable"] == (
        "TypeError",
        f"{class_name}'s variable (step_counter:0) must have one of the dtypes "
        "float16, bfloat16, float32, float64, complex64, complex128; got int32.",
    )
