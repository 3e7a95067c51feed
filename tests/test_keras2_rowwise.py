"""tf_adagrad.keras2.RowwiseAdagrad and tf_adagrad.keras2.legacy.RowwiseAdagrad
against the NumPy rowwise reference, through fit(), XLA, saving and
checkpoints. tf.keras is tf_keras only with TF_USE_LEGACY_KERAS=1 set before
TensorFlow is imported, so the tf_keras work runs in a child process
(tests/support/keras2_rowwise_cases.py), the one that runs
tests/test_keras2_optimizers.py's cases too (conftest.py's
keras2_train_results)."""

import numpy as np
import pytest
import tensorflow as tf

from support.adagrad_reference import bits
from support.processes import case_result
from support.rowwise_reference import dense_step_exact, sparse_step_exact

KINDS = ["keras2", "legacy"]
DTYPES = ["float16", "bfloat16", "float32", "float64"]
# As in tests/support/keras2_rowwise_cases.py. Exact in float32 and float64
# (the learning rate is a float32 variable, the initial value goes through
# float32 in tf_keras' Constant initializer).
LR, EPSILON, INITIAL = 0.5, 1e-8, 0.25
ROWS = 30


@pytest.mark.keras2_cases("rowwise/steps/")
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_steps_are_bit_exact_with_the_reference(keras2_train_results, kind, dtype, graph):
    mode = "tf.function" if graph else "eager"
    run = case_result(keras2_train_results, f"rowwise/steps/{kind}/{dtype}/{mode}")
    tf_dtype = tf.as_dtype(dtype)
    assert run["accum_dtype"] == ("float64" if dtype == "float64" else "float32")
    table, kernel = run["table0"], run["kernel0"]
    accum_type = np.float64 if dtype == "float64" else np.float32
    table_accum = np.full(ROWS, INITIAL, accum_type)
    kernel_accum = np.full(6, INITIAL, accum_type)
    for indices, values, dense in run["steps"]:
        table, table_accum = sparse_step_exact(
            table, table_accum, LR, EPSILON, values, indices, tf_dtype
        )
        kernel, kernel_accum = dense_step_exact(kernel, kernel_accum, LR, EPSILON, dense, tf_dtype)
    np.testing.assert_array_equal(bits(run["table"]), bits(table))
    np.testing.assert_array_equal(bits(run["kernel"]), bits(kernel))
    np.testing.assert_array_equal(bits(run["table_accum"]), bits(table_accum))
    np.testing.assert_array_equal(bits(run["kernel_accum"]), bits(kernel_accum))
    np.testing.assert_array_equal(run["table"][12:], run["table0"][12:])  # not named


@pytest.mark.slow
@pytest.mark.keras2_cases("rowwise/fit/")
@pytest.mark.parametrize("kind", KINDS)
def test_fit_trains(keras2_train_results, kind):
    losses = case_result(keras2_train_results, f"rowwise/fit/{kind}")["loss"]["fused"]
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.slow
@pytest.mark.keras2_cases("rowwise/fit/")
@pytest.mark.parametrize("kind", KINDS)
def test_xla_fallback_matches_the_kernels(keras2_train_results, kind):
    result = case_result(keras2_train_results, f"rowwise/fit/{kind}")
    fused, xla, initial = result["weights"]["fused"], result["weights"]["xla"], result["initial"]
    for a, b in zip(xla, fused):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not np.array_equal(fused[0], initial[0])


@pytest.mark.slow
@pytest.mark.keras2_cases("rowwise/resume/")
@pytest.mark.parametrize("kind", KINDS)
def test_keras_file_loads_and_resumes_exactly(keras2_train_results, kind):
    result = case_result(keras2_train_results, f"rowwise/resume/{kind}")
    loaded_type, resumed, uninterrupted = (
        result["loaded_type"],
        result["resumed"],
        result["uninterrupted"],
    )
    module = "tf_adagrad.keras2.legacy" if kind == "legacy" else "tf_adagrad.keras2"
    assert loaded_type == f"{module}.rowwise_adagrad.RowwiseAdagrad"
    if kind == "legacy":
        # tf_keras' load_model starts a legacy optimizer afresh from a .keras
        # file (its iteration count at 0), for its own legacy Adagrad too;
        # test_checkpoint_restores_and_resumes_exactly covers the state.
        return
    for a, b in zip(resumed, uninterrupted):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.keras2_cases("rowwise/resume/")
@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_restores_and_resumes_exactly(keras2_train_results, kind):
    result = case_result(keras2_train_results, f"rowwise/resume/{kind}")
    restored, uninterrupted = result["restored"], result["uninterrupted"]
    for a, b in zip(restored, uninterrupted):
        np.testing.assert_array_equal(a, b)


@pytest.mark.keras2_cases("rowwise/config/")
@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trip(keras2_train_results, kind):
    result = case_result(keras2_train_results, f"rowwise/config/{kind}")
    config, again = result["config"], result["from_config"]
    assert config["initial_accumulator_value"] == 0.5 and config["epsilon"] == 1e-6
    assert config["learning_rate"] == pytest.approx(0.2)
    assert again == config
