"""tf_adagrad's tf_keras (Keras 2) optimizers against tf_keras' own.

Each case times one of tf_adagrad's classes against its tf_keras
counterpart, in turns, median ms per step:

- `fit()` steps of `Embedding(1,000,000, 64) -> Flatten -> Dense(1)` (batch
  1024, Zipf ids): `tf_adagrad.keras2.Adagrad` against
  `tf_keras.optimizers.Adagrad`, and `tf_adagrad.keras2.legacy.Adagrad`
  against `tf_keras.optimizers.legacy.Adagrad`;
- the sparse update alone, for a 1,000,000 x 64 table and 8192 Zipf ids:
  the fused sparse op with epsilon outside the square root against the
  legacy optimizer's path (`tf.unique`, `tf.math.unsorted_segment_sum`, then
  TensorFlow's `ResourceSparseApplyAdagradV2`), on the same gradient;
- one optimizer step over 200 dense float32 variables of 64 x 64, each class
  against its counterpart.

tf_keras is `tf.keras` only when TF_USE_LEGACY_KERAS=1 is set before
TensorFlow is imported, so this runs in a process of its own, which sets it.
Prints a line per case and the goals, and writes bench/results/keras2.json
and keras2.md. Run by bench/bench.py (`make bench`), or alone:
`python bench/keras2_steps.py`.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import gc  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
import timing  # noqa: E402  (bench/, beside this file)
from timing import (  # noqa: E402
    call_floor_step,
    fit_on_batches,
    goal_table,
    graph_step,
    machine_header,
    median_ms,
    print_goals,
    run_info,
    write_results,
    zipf_ids,
)

import tf_adagrad.keras2  # noqa: E402
from tf_adagrad import ops  # noqa: E402

TABLE_ROWS, EMBEDDING_DIM, BATCH_SIZE = 1_000_000, 64, 1024
SPARSE_IDS = 8192
DENSE_VARIABLES, DENSE_SHAPE = 200, (64, 64)
LR, EPSILON = 0.05, 1e-7
FIT_ROUNDS, FIT_STEPS_PER_ROUND, FIT_WARMUP_STEPS = 3, 8, 3

# (ours, counterpart) for each kind of tf_keras optimizer.
PAIRS = {
    "new": (
        ("tf_adagrad.keras2.Adagrad", tf_adagrad.keras2.Adagrad),
        ("tf_keras.optimizers.Adagrad", tf_keras.optimizers.Adagrad),
    ),
    "legacy": (
        ("tf_adagrad.keras2.legacy.Adagrad", tf_adagrad.keras2.legacy.Adagrad),
        ("tf_keras.optimizers.legacy.Adagrad", tf_keras.optimizers.legacy.Adagrad),
    ),
}
FUSED_SPARSE = "TfAdagrad>ApplySparse, epsilon outside"
LEGACY_SPARSE = "tf.unique + unsorted_segment_sum + ResourceSparseApplyAdagradV2"
CALL_FLOOR = "call floor"


class StepTimes(timing.StepTimer, tf_keras.callbacks.Callback):
    """timing.StepTimer as a tf_keras callback."""


def fit_case(kind):
    """ms per fit() step of the Embedding model, for the `kind` pair."""
    rng = np.random.default_rng(0)
    num_examples = BATCH_SIZE * (FIT_STEPS_PER_ROUND + 1)
    ids = zipf_ids(rng, TABLE_ROWS, num_examples).reshape(-1, 1)
    labels = rng.standard_normal((num_examples, 1)).astype(np.float32)
    fits = {}
    for name, optimizer_class in PAIRS[kind]:
        tf_keras.utils.set_random_seed(0)
        model = tf_keras.Sequential(
            [
                tf_keras.Input((1,), dtype="int64"),
                tf_keras.layers.Embedding(TABLE_ROWS, EMBEDDING_DIM),
                tf_keras.layers.Flatten(),
                tf_keras.layers.Dense(1),
            ]
        )
        model.compile(optimizer=optimizer_class(LR), loss="mse", jit_compile=False)

        fits[name] = fit_on_batches(model, ids, labels, BATCH_SIZE)
    return timing.time_fits(fits, StepTimes, FIT_ROUNDS, FIT_STEPS_PER_ROUND, FIT_WARMUP_STEPS)


def sparse_update_case():
    """ms per sparse update, the fused op against the legacy optimizer's
    path, each on its own copy of the table and accumulator."""
    rng = np.random.default_rng(0)
    initial = rng.standard_normal((TABLE_ROWS, EMBEDDING_DIM)).astype(np.float32)
    indices = tf.constant(zipf_ids(rng, TABLE_ROWS, SPARSE_IDS))
    grad = tf.constant(rng.standard_normal((SPARSE_IDS, EMBEDDING_DIM)).astype(np.float32))
    lr, epsilon = tf.constant(LR), tf.constant(EPSILON)

    def table_and_accumulator():
        return tf.Variable(initial), tf.Variable(tf.fill(initial.shape, 0.1))

    fused_var, fused_accum = table_and_accumulator()
    legacy_var, legacy_accum = table_and_accumulator()

    def legacy_update():
        # What OptimizerV2 does before its _resource_apply_sparse: sum the
        # rows of duplicate indices (TensorFlow's op would apply them one
        # after another).
        unique, positions = tf.unique(indices)
        summed = tf.math.unsorted_segment_sum(grad, positions, tf.shape(unique)[0])
        tf.raw_ops.ResourceSparseApplyAdagradV2(
            var=legacy_var.handle,
            accum=legacy_accum.handle,
            lr=lr,
            epsilon=epsilon,
            grad=summed,
            indices=unique,
        )

    return median_ms(
        {
            FUSED_SPARSE: graph_step(
                lambda: ops.sparse_apply_adagrad(
                    fused_var,
                    fused_accum,
                    lr,
                    epsilon,
                    grad,
                    indices,
                    epsilon_placement="outside_sqrt",
                )
            ),
            LEGACY_SPARSE: graph_step(legacy_update),
        }
    )


def dense_step_case(kind):
    """ms per apply_gradients() over DENSE_VARIABLES variables, for the
    `kind` pair, each optimizer on its own copy of the variables, and the
    call floor: a step taking in as many variables, accumulators and
    gradients that computes nothing."""
    rng = np.random.default_rng(0)
    initial = [rng.standard_normal(DENSE_SHAPE).astype(np.float32) for _ in range(DENSE_VARIABLES)]
    grads = [tf.constant(rng.standard_normal(DENSE_SHAPE), tf.float32) for _ in initial]
    steps = {}
    for name, optimizer_class in PAIRS[kind]:
        variables = [tf.Variable(x) for x in initial]
        optimizer = optimizer_class(LR)
        steps[name] = graph_step(
            lambda optimizer=optimizer, variables=variables: optimizer.apply_gradients(
                zip(grads, variables)
            )
        )
    accumulators = [tf.Variable(tf.fill(DENSE_SHAPE, 0.1)) for _ in initial]
    steps[CALL_FLOOR] = call_floor_step(variables + accumulators, grads)
    return median_ms(steps)


CASES = [
    (f"fit() Embedding {TABLE_ROWS:,}x{EMBEDDING_DIM}, keras2.Adagrad", lambda: fit_case("new")),
    (
        f"fit() Embedding {TABLE_ROWS:,}x{EMBEDDING_DIM}, keras2.legacy.Adagrad",
        lambda: fit_case("legacy"),
    ),
    (
        f"sparse update {TABLE_ROWS:,}x{EMBEDDING_DIM}, {SPARSE_IDS} zipf ids, legacy math",
        sparse_update_case,
    ),
    (f"{DENSE_VARIABLES} variables of 64x64, keras2.Adagrad", lambda: dense_step_case("new")),
    (
        f"{DENSE_VARIABLES} variables of 64x64, keras2.legacy.Adagrad",
        lambda: dense_step_case("legacy"),
    ),
]


def run_all():
    """Every case, a line printed for each; returns a list of
    {"case", "ours", "counterpart", "ms": {name: ms}}, where "ms" may also
    hold the call floor."""
    results = []
    for case, run in CASES:
        ms = run()
        ours, counterpart = list(ms)[:2]  # each case times tf_adagrad first
        results.append({"case": case, "ours": ours, "counterpart": counterpart, "ms": ms})
        print(format_line(results[-1]), flush=True)
        gc.collect()
    return results


def speed_up(result):
    """The counterpart's time divided by tf_adagrad's."""
    return result["ms"][result["counterpart"]] / result["ms"][result["ours"]]


def format_line(result):
    ms = result["ms"]
    line = (
        f"{result['case']:60s} tf_adagrad {ms[result['ours']]:7.3f}  "
        f"tf_keras {ms[result['counterpart']]:7.3f} ({speed_up(result):.2f}x)"
    )
    if CALL_FLOOR in ms:
        line += f"  call floor {ms[CALL_FLOOR]:6.3f}"
    return line


def goals(results):
    """(description, measured, bound, met) for each goal, measured as the
    tf_keras counterpart's time over tf_adagrad's."""
    _, fit_legacy, sparse, dense_new, dense_legacy = results  # in the order of CASES
    listed = [(f"never slower than tf_keras: {r['case']}", speed_up(r), 1.0) for r in results]
    listed += [
        (f"speed-up, {fit_legacy['case']}", speed_up(fit_legacy), 1.3),
        (f"speed-up, {sparse['case']}", speed_up(sparse), 2.0),
        (f"speed-up, {dense_new['case']}", speed_up(dense_new), 2.0),
        (f"speed-up, {dense_legacy['case']}", speed_up(dense_legacy), 2.0),
    ]
    return [
        (description, measured, f">= {bound}", measured >= bound)
        for description, measured, bound in listed
    ]


def markdown(results):
    """A table of ms per step and speed-ups, and the goals."""
    lines = [
        "| case | tf_adagrad | ms | tf_keras | ms | speed-up | call floor |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for result in results:
        ms = result["ms"]
        floor = f"{ms[CALL_FLOOR]:.3f}" if CALL_FLOOR in ms else ""
        lines.append(
            f"| {result['case']} | `{result['ours']}` | {ms[result['ours']]:.3f} | "
            f"`{result['counterpart']}` | {ms[result['counterpart']]:.3f} | "
            f"{speed_up(result):.2f}× | {floor} |"
        )
    lines += ["", *goal_table(goals(results))]
    return "\n".join(lines) + "\n"


def main():
    if tf.keras.optimizers.Adagrad is not tf_keras.optimizers.Adagrad:
        raise RuntimeError(
            "tf.keras is not tf_keras: TF_USE_LEGACY_KERAS=1 must be set before TensorFlow is "
            f"imported (tf.keras is {tf.keras.__name__})."
        )
    header = machine_header("tf_keras", tf_keras.__version__)
    print(f"{header}; tf_keras optimizers, median ms per step", flush=True)
    results = run_all()
    print_goals(goals(results))
    record = {
        **run_info(tf_keras=tf_keras.__version__),
        "cases": results,
        "goals": [
            {"goal": description, "measured": measured, "bound": bound, "met": met}
            for description, measured, bound, met in goals(results)
        ],
    }
    write_results(
        "keras2",
        record,
        f"{header}. {__doc__.splitlines()[0]} Median ms per step.\n\n" + markdown(results),
    )


if __name__ == "__main__":
    main()
