"""The demo (`make demo`, examples/recommender.py) in its quick mode, plain and
under MirroredStrategy, and its quality check."""

import os
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)

import recommender  # noqa: E402

TABLE_ROWS = (
    "time per step (ms)",
    "examples/s",
    "final train loss",
    "held-out loss",
    "held-out AUC",
    "accumulator bytes",
)


# The quick runs, by test id: the demo's flags.
QUICK_RUNS = {"default": [], "mirrored": ["--mirrored", "2"], "rowwise": ["--rowwise"]}


@pytest.fixture(scope="module")
def quick_run_outputs(request):
    """{run: (exit status, stdout, stderr)} of the quick runs that the
    session's selected tests check, one after the other: each fit() of
    Keras' Adagrad on the 1M-row table uses the whole machine (on two cores,
    the three runs side by side took 131 s, one after the other 85 s)."""
    selected = {
        item.callspec.params["run"]
        for item in request.session.items
        if item.path == request.path and "quick_run_outputs" in getattr(item, "fixturenames", ())
    }
    outputs = {}
    for run, flags in QUICK_RUNS.items():
        if run in selected:
            child = subprocess.run(
                [sys.executable, os.path.join(EXAMPLES, "recommender.py"), "--quick", *flags],
                capture_output=True,
                text=True,
                timeout=600,
            )
            outputs[run] = (child.returncode, child.stdout, child.stderr)
    return outputs


@pytest.mark.slow  # each run trains on a 1M-row table 2 or 3 times: about 25 s
@pytest.mark.parametrize("run", QUICK_RUNS)
def test_quick_demo_prints_the_comparison_and_passes_its_check(quick_run_outputs, run):
    flags = QUICK_RUNS[run]
    returncode, stdout, stderr = quick_run_outputs[run]
    assert returncode == 0, stdout[-3000:] + stderr[-3000:]
    lines = stdout.splitlines()
    header = next(
        line for line in lines if "tf_adagrad" in line and "keras" in line and "Adagrad" not in line
    )
    columns = ["tf_adagrad", "keras"] + (["rowwise"] if "--rowwise" in flags else [])
    assert header.split() == columns
    table = {}
    for row in TABLE_ROWS:
        (line,) = [line for line in lines if line.startswith(row)]
        values = [float(v.replace(",", "")) for v in line[len(row) :].split()]
        assert len(values) == len(columns), line
        assert all(v > 0 for v in values), line
        table[row] = dict(zip(columns, values))
    # Keras' Adagrad keeps the same accumulators as tf_adagrad's; the
    # rowwise one a value per table row (users 16, items 32, categories 8
    # wide, and the MLP's layers).
    assert table["accumulator bytes"]["tf_adagrad"] == table["accumulator bytes"]["keras"]
    if "--rowwise" in flags:
        assert table["accumulator bytes"]["rowwise"] < table["accumulator bytes"]["tf_adagrad"] / 16
        assert table["held-out AUC"]["rowwise"] >= recommender.QUICK[2]
    assert any(line.startswith("speed-up: ") for line in lines)
    assert "quality matches" in stdout
    # Keras' progress bars were shown.
    assert "/59" in stdout and "step - auc:" in stdout
    if "--mirrored" in flags:
        assert "MirroredStrategy over /cpu:0, /cpu:1" in stdout


def results(auc=0.8, loss=0.5, scores=(0.2, 0.7)):
    return {"held-out AUC": auc, "held-out loss": loss, "held-out scores": np.array(scores)}


def test_quality_check_passes_close_models():
    problems, gap = recommender.quality_problems(
        {
            "tf_adagrad.Adagrad": results(),
            "keras.optimizers.Adagrad": results(auc=0.804, loss=0.504, scores=(0.204, 0.696)),
        },
        min_auc=0.75,
    )
    assert problems == []
    assert gap == pytest.approx(0.004)


@pytest.mark.parametrize(
    "keras_result, expected",
    [
        (results(auc=0.806), "held-out AUCs differ by 0.0060 (allowed: 0.005)"),
        (results(loss=0.494), "held-out losses differ by 0.0060 (allowed: 0.005)"),
        (
            results(scores=(0.2, 0.722)),
            "held-out click probabilities differ by 0.0110 on average (allowed: 0.01)",
        ),
        (results(auc=0.70), "keras.optimizers.Adagrad did not learn: held-out AUC 0.7000 < 0.75"),
    ],
    ids=["auc", "loss", "probabilities", "not-learned"],
)
def test_quality_check_names_each_mismatch(keras_result, expected):
    problems, _ = recommender.quality_problems(
        {"tf_adagrad.Adagrad": results(), "keras.optimizers.Adagrad": keras_result}, min_auc=0.75
    )
    assert any(expected in problem for problem in problems), problems


def test_exact_auc_against_pairwise_count():
    rng = np.random.default_rng(3)
    labels = (rng.random(300) < 0.4).astype(np.float32)
    scores = np.round(rng.random(300), 1)  # many ties
    positives, negatives = scores[labels == 1], scores[labels == 0]
    pairwise = (positives[:, None] > negatives[None, :]).mean() + 0.5 * (
        positives[:, None] == negatives[None, :]
    ).mean()
    assert recommender.exact_auc(labels, scores) == pytest.approx(pairwise, rel=1e-12)


@pytest.mark.slow  # four quick trainings of the demo's model: about 10 s
def test_half_tables_example_prints_its_table_and_goals():
    """examples/half_tables.py --quick: the bfloat16 configurations train
    (its exit status says each learned), and it reports every
    configuration's AUC and bytes, and each goal."""
    child = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "half_tables.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-3000:]
    lines = child.stdout.splitlines()
    for name in ("float32", "(a) bf16 items", "(b) bf16 items", "(c) bf16 items"):
        assert any(line.startswith(name) for line in lines), name
    goals = [line for line in lines if line.startswith("goal: ")]
    assert len(goals) == 5, goals
    # The bytes are arithmetic, not measurement: (b) keeps 3/4 of the item
    # table's float32 bytes, (c) 1/4 plus a float32 per row.
    assert any("(b) bytes / float32's, item table + slot: 0.75000" in g for g in goals)
