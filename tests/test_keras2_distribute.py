"""tf_adagrad's tf_keras optimizers (`tf_adagrad.keras2.Adagrad`,
`tf_adagrad.keras2.legacy.Adagrad`, and under MirroredStrategy and
ParameterServerStrategy their `RowwiseAdagrad`s) in tf_keras' `fit()` under
tf.distribute, each cluster on 127.0.0.1 in processes of its own with
`TF_USE_LEGACY_KERAS=1` (tests/support/keras2_distributed.py).

Each strategy's fit() is compared with fit() in one process on one device,
from the same initial weights on the same global batches, and, for the
Adagrads, with the tf_keras optimizer each replaces in the same strategy
(rowwise Adagrad has none in tf_keras). The traced train function shows
which ops updated the variables, and on which devices.

The ParameterServerStrategy cluster is the session's (the
`parameter_server_cluster` fixture of conftest.py, which
tests/test_distribute.py's coordinator uses too). Every process is killed
when the fixture that started it ends, pass or fail. The clusters' tests are
marked slow (`make test-fast` runs the MirroredStrategy ones only).
"""

import os
import pickle

import numpy as np
import pytest

from support.processes import case_result, run_multi_worker_cluster, run_to_completion

SCRIPT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "support", "keras2_distributed.py"
)
# Float tolerance for distributed against one-device training: the replicas'
# gradients are summed in another order.
RTOL, ATOL = 1e-5, 1e-7
# tf_adagrad's Adagrad classes, each with the tf_keras class it replaces.
PEERS = {"tf_adagrad.keras2": "tf_keras", "tf_adagrad.keras2.legacy": "tf_keras.legacy"}
ROWWISE = ["tf_adagrad.keras2.RowwiseAdagrad", "tf_adagrad.keras2.legacy.RowwiseAdagrad"]
# The classes a scenario can train with, in the order it trains them (the
# multi-worker scenario's tests leave the rowwise ones out).
ALL_OPTIMIZERS = [*PEERS, *ROWWISE, *PEERS.values()]
# The MirroredStrategy cases of the fast lane (the others are marked slow).
MIRRORED_IN_FAST_LANE = {"tf_adagrad.keras2", "tf_adagrad.keras2.legacy.RowwiseAdagrad"}
# The fused ops that update the variables in a step of each of tf_adagrad's
# classes; besides them, a step may trace an AssignAddVariableOp, which
# counts the iterations.
FUSED_OP_TYPES = {
    **{name: {"TfAdagrad>ApplyDense", "TfAdagrad>ApplySparse"} for name in PEERS},
    **{name: {"TfAdagrad>RowwiseApplyDense", "TfAdagrad>RowwiseApplySparse"} for name in ROWWISE},
}


def optimizers_to_train(request, results_fixture):
    """--optimizers for the scenario behind `results_fixture`: the classes
    that the session's selected tests of this module that read it are
    parametrized with, and the tf_keras peers they are compared with."""
    names = {
        item.callspec.params["name"]
        for item in request.session.items
        if item.path == request.path and results_fixture in getattr(item, "fixturenames", ())
    }
    names |= {PEERS[name] for name in names if name in PEERS}
    return ",".join(name for name in ALL_OPTIMIZERS if name in names)


def load(out):
    with open(out, "rb") as f:
        return pickle.load(f)


def assert_close(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=RTOL, atol=ATOL)


def assert_fit_matches(results, name, update_devices):
    """tf_adagrad's `name` trained in the strategy as in one process on one
    device and as its tf_keras peer, if it has one, in the same strategy,
    with its fused ops alone updating the variables, on each of
    `update_devices`."""
    result = case_result(results, name)
    distributed = result["distributed"]
    # The Embedding table moved: the run did train.
    assert np.max(np.abs(distributed["weights"][0] - result["initial"][0])) > 1e-3
    assert_close(distributed["weights"], result["one_device"]["weights"])
    assert_close(distributed["accumulators"], result["one_device"]["accumulators"])
    if name in PEERS:
        peer = case_result(results, PEERS[name])["distributed"]
        assert_close(distributed["weights"], peer["weights"])
        assert_close(distributed["accumulators"], peer["accumulators"])
    else:
        # One accumulator value per row of each weight (a bias is one row
        # per element), each shard's rows together.
        assert [a.shape for a in distributed["accumulators"]] == [
            w.shape[:1] for w in distributed["weights"]
        ]

    update_ops = distributed["update_ops"]
    assert {op for op, _ in update_ops} <= FUSED_OP_TYPES[name] | {"AssignAddVariableOp"}, (
        update_ops
    )
    # The Embedding's gradient reached the sparse op, the Dense layers' the
    # dense one, on every device that holds a copy or a shard.
    for op_type in FUSED_OP_TYPES[name]:
        assert {device for op, device in update_ops if op == op_type} == set(update_devices), (
            update_ops
        )


@pytest.fixture(scope="module")
def mirrored_results(request, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("keras2_mirrored")
    out = tmp_path / "mirrored.pkl"
    run_to_completion(
        tmp_path,
        "mirrored",
        SCRIPT,
        "mirrored",
        "--optimizers",
        optimizers_to_train(request, "mirrored_results"),
        "--out",
        str(out),
    )
    return load(out)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=[] if name in MIRRORED_IN_FAST_LANE else [pytest.mark.slow])
        for name in sorted(PEERS) + ROWWISE
    ],
)
def test_mirrored_strategy_fit_equals_one_device(mirrored_results, name):
    """MirroredStrategy over 2 logical CPUs, each global batch split between
    the replicas; each replica's copy updated by the fused ops."""
    assert case_result(mirrored_results, name)["distributed"]["replicas"] == 2
    assert_fit_matches(
        mirrored_results,
        name,
        [f"/job:localhost/replica:0/task:0/device:CPU:{replica}" for replica in range(2)],
    )


@pytest.fixture(scope="module")
def multi_worker_results(request, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("keras2_multi_worker")
    outs = [tmp_path / f"worker{task}.pkl" for task in range(2)]
    optimizers = optimizers_to_train(request, "multi_worker_results")
    run_multi_worker_cluster(tmp_path, SCRIPT, outs, "--optimizers", optimizers)
    return [load(out) for out in outs]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PEERS))
def test_multi_worker_mirrored_strategy_fit_equals_one_process(multi_worker_results, name):
    """MultiWorkerMirroredStrategy over 2 worker processes, each feeding its
    half of every global batch; worker 0 also trained the reference."""
    worker0, worker1 = multi_worker_results
    assert case_result(worker0, name)["distributed"]["replicas"] == 2
    assert_fit_matches(worker0, name, ["/job:worker/replica:0/task:0/device:CPU:0"])
    # Worker 1 updated its own copy, to the same values, bit for bit.
    copy = case_result(worker1, name)["distributed"]
    own = case_result(worker0, name)["distributed"]
    for a, b in zip(copy["weights"] + copy["accumulators"], own["weights"] + own["accumulators"]):
        assert a.tobytes() == b.tobytes()
    assert {device for op, device in copy["update_ops"] if op in FUSED_OP_TYPES[name]} == {
        "/job:worker/replica:0/task:1/device:CPU:0"
    }


@pytest.fixture(scope="module")
def parameter_server_results(request, parameter_server_cluster, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("keras2_parameter_server")
    out = tmp_path / "coordinator.pkl"
    run_to_completion(
        tmp_path,
        "coordinator",
        SCRIPT,
        "coordinator",
        "--optimizers",
        optimizers_to_train(request, "parameter_server_results"),
        "--cluster",
        parameter_server_cluster,
        "--out",
        str(out),
    )
    return load(out)


PARAMETER_SERVERS = [f"/job:ps/replica:0/task:{task}/device:CPU:0" for task in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PEERS) + ROWWISE)
def test_parameter_server_strategy_fit_equals_one_process(parameter_server_results, name):
    """ParameterServerStrategy, 2 workers and 2 parameter servers, the
    variables split in 2 shards: the fused ops ran on both parameter
    servers, and the result is one process' (see the scenario's docstring
    for how the steps are ordered)."""
    assert_fit_matches(parameter_server_results, name, PARAMETER_SERVERS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PEERS) + ROWWISE)
def test_parameter_server_strategy_accumulator_shards_beside_variable_shards(
    parameter_server_results, name
):
    placement = case_result(parameter_server_results, name)["distributed"]["placement"]
    table = placement[0]
    # One shard of the Embedding table per parameter server.
    assert sorted(shard["variable"] for shard in table) == PARAMETER_SERVERS
    for weight in placement:
        for shard in weight:
            assert shard["accumulator"] == shard["variable"]
            assert shard["variable"] in PARAMETER_SERVERS
