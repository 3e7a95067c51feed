"""Times rowwise Adagrad (tf_adagrad.RowwiseAdagrad and its sparse op)
against elementwise Adagrad (tf_adagrad.Adagrad and its op) and
keras.optimizers.Adagrad, and counts their accumulators' bytes.

Cases, for 1,000,000 x 64 and 10,000,000 x 64 float32 tables:
- the sparse update alone, 8,192 Zipf-distributed ids (a new batch of ids
  each call, from 64): the rowwise op, the
  elementwise op, and Keras' Adagrad's `apply` (all three update one shared
  table, each with its own accumulator: timing does not depend on the
  values, and the 10M table is 2.56 GB);
- a `fit()` step of `Embedding(rows, 64) -> Flatten -> Dense(1)`, batch
  1,024, with each optimizer;
- the bytes of each optimizer's accumulator of that model's table.

Goals: the rowwise accumulators take 1/64 of the elementwise ones' bytes;
the rowwise sparse op takes at most 0.6x the elementwise op's time.

Run by bench.py (`make bench`) in a process of its own; each case runs in
a child process (a 10M-row case holds several 2.56 GB tables, which a
process does not give back to the system); prints a line per case and
writes bench/results/rowwise.json and rowwise.md.
"""

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import fit_steps  # noqa: E402  (bench/, beside this file)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import (  # noqa: E402
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

import tf_adagrad  # noqa: E402

TABLE_ROWS = (1_000_000, 10_000_000)
WIDTH, SPARSE_IDS, BATCH_SIZE = 64, 8192, 1024
ID_BATCHES = 64
LR, EPSILON = 0.05, 1e-7
ROWWISE, ELEMENTWISE, KERAS = "rowwise", "elementwise", "keras"
LABELS = {
    ROWWISE: "tf_adagrad.RowwiseAdagrad",
    ELEMENTWISE: "tf_adagrad.Adagrad",
    KERAS: "keras.optimizers.Adagrad",
}
OPTIMIZERS = {
    ROWWISE: lambda: tf_adagrad.RowwiseAdagrad(LR),
    ELEMENTWISE: lambda: tf_adagrad.Adagrad(LR),
    KERAS: lambda: keras.optimizers.Adagrad(LR),
}


def sparse_case(rows):
    """ms per sparse update of `rows` x WIDTH with SPARSE_IDS Zipf ids.

    Each call takes the next of ID_BATCHES id batches, as training steps
    do: with one batch over and over, the rows it names would stay in the
    caches and hide the memory traffic that rowwise Adagrad saves."""
    rng = np.random.default_rng(0)
    id_batches = tf.constant(np.stack([zipf_ids(rng, rows, SPARSE_IDS) for _ in range(ID_BATCHES)]))
    values = tf.constant(rng.standard_normal((SPARSE_IDS, WIDTH)).astype(np.float32))
    table = keras.Variable(tf.random.stateless_normal((rows, WIDTH), seed=[0, 0]), name="table")
    rowwise_accum = tf.Variable(tf.zeros((rows,)))
    elementwise_accum = tf.Variable(tf.fill((rows, WIDTH), 0.1))
    keras_optimizer = keras.optimizers.Adagrad(LR)
    keras_optimizer.build([table])

    def next_ids_for_each_step():
        counter = tf.Variable(0, dtype=tf.int32)
        return lambda: tf.gather(id_batches, counter.assign_add(1) % ID_BATCHES)

    rowwise_ids, elementwise_ids, keras_ids = (next_ids_for_each_step() for _ in range(3))
    steps = {
        ROWWISE: graph_step(
            lambda: tf_adagrad.ops.sparse_rowwise_apply_adagrad(
                table, rowwise_accum, LR, EPSILON, values, rowwise_ids()
            )
        ),
        ELEMENTWISE: graph_step(
            lambda: tf_adagrad.ops.sparse_apply_adagrad(
                table, elementwise_accum, LR, EPSILON, values, elementwise_ids()
            )
        ),
        KERAS: graph_step(
            lambda: keras_optimizer.apply(
                [tf.IndexedSlices(values, keras_ids(), tf.constant([rows, WIDTH], tf.int64))],
                [table],
            )
        ),
    }
    return median_ms(steps)


def fit_case(rows):
    """ms per fit() step and accumulator bytes, for each optimizer."""
    rng = np.random.default_rng(0)
    num_examples = BATCH_SIZE * (fit_steps.STEPS_PER_ROUND + 1)
    ids = zipf_ids(rng, rows, num_examples).reshape(-1, 1)
    labels = rng.standard_normal((num_examples, 1)).astype(np.float32)
    fits, accumulator_bytes = {}, {}
    for name, make_optimizer in OPTIMIZERS.items():
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((1,), dtype="int64"),
                keras.layers.Embedding(rows, WIDTH),
                keras.layers.Flatten(),
                keras.layers.Dense(1),
            ]
        )
        model.compile(optimizer=make_optimizer(), loss="mse", jit_compile=False)
        model.optimizer.build(model.trainable_variables)
        # The table's accumulator (the Dense layer's are a few hundred bytes).
        accumulator_bytes[name] = sum(
            int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
            for v in model.optimizer.variables
            if "embeddings" in v.path and "accumulator" in v.path
        )

        fits[name] = fit_on_batches(model, ids, labels, BATCH_SIZE)
    slow = {KERAS: fit_steps.SLOW_STEPS_PER_ROUND} if rows >= 10_000_000 else {}
    return fit_steps.time_fits(fits, slow), accumulator_bytes


def format_line(case, ms):
    rowwise = ms[ROWWISE]
    parts = [f"{case:34s}"]
    for name in (ROWWISE, ELEMENTWISE, KERAS):
        parts.append(
            f"{name} {ms[name]:9.3f}" + ("" if name == ROWWISE else f" ({ms[name] / rowwise:.2f}x)")
        )
    return "  ".join(parts)


def run_case_in_child(kind, rows):
    """Runs one case in a fresh process; its result, from the child's last
    output line."""
    output = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--case", kind, "--rows", str(rows)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def run_case(kind, rows):
    if kind == "sparse":
        return {"ms": sparse_case(rows)}
    ms, accumulator_bytes = fit_case(rows)
    return {"ms": ms, "accumulator_bytes": accumulator_bytes}


def run_all():
    record = {"cases": []}
    for rows in TABLE_ROWS:
        case = f"sparse update {rows:,}x{WIDTH}, {SPARSE_IDS} zipf ids"
        ms = run_case_in_child("sparse", rows)["ms"]
        print(format_line(case, ms), flush=True)
        record["cases"].append({"case": case, "kind": "sparse", "rows": rows, "ms": ms})
        case = f"fit() Embedding {rows:,}x{WIDTH}"
        result = run_case_in_child("fit", rows)
        ms, accumulator_bytes = result["ms"], result["accumulator_bytes"]
        print(format_line(case, ms), flush=True)
        print(
            f"{'table accumulator bytes':34s}  "
            + "  ".join(
                f"{name} {accumulator_bytes[name]:,}" for name in (ROWWISE, ELEMENTWISE, KERAS)
            ),
            flush=True,
        )
        record["cases"].append(
            {
                "case": case,
                "kind": "fit",
                "rows": rows,
                "ms": ms,
                "accumulator_bytes": accumulator_bytes,
            }
        )
    return record


def goals(record):
    """(description, measured, bound, met) for each goal."""
    listed = []
    for case in record["cases"]:
        if case["kind"] == "sparse":
            ratio = case["ms"][ROWWISE] / case["ms"][ELEMENTWISE]
            listed.append(
                (f"rowwise / elementwise time, {case['case']}", ratio, "<= 0.6", ratio <= 0.6)
            )
        else:
            memory = case["accumulator_bytes"]
            ratio = memory[ROWWISE] / memory[ELEMENTWISE]
            listed.append(
                (
                    f"rowwise / elementwise table accumulator bytes, {case['case']}",
                    ratio,
                    f"= 1/{WIDTH}",
                    memory[ROWWISE] * WIDTH == memory[ELEMENTWISE],
                )
            )
    return listed


def markdown(record):
    lines = [
        "| case | RowwiseAdagrad | Adagrad | keras Adagrad | table accumulator bytes (rowwise / elementwise / keras) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for case in record["cases"]:
        ms = case["ms"]
        memory = case.get("accumulator_bytes")
        memory_text = (
            " / ".join(f"{memory[n]:,}" for n in (ROWWISE, ELEMENTWISE, KERAS)) if memory else ""
        )
        lines.append(
            f"| {case['case']} | {ms[ROWWISE]:.3f} | {ms[ELEMENTWISE]:.3f} "
            f"({ms[ELEMENTWISE] / ms[ROWWISE]:.2f}×) | {ms[KERAS]:.3f} "
            f"({ms[KERAS] / ms[ROWWISE]:.2f}×) | {memory_text} |"
        )
    lines += ["", *goal_table(goals(record), digits=5)]
    return "\n".join(lines) + "\n"


def main():
    header = machine_header("Keras", keras.__version__)
    print(f"{header}; rowwise against elementwise Adagrad, median ms per step", flush=True)
    record = {**run_info(keras=keras.__version__), **run_all()}
    print_goals(goals(record), digits=5)
    write_results(
        "rowwise",
        record,
        f"{header}. Rowwise against elementwise Adagrad, median ms per step.\n\n"
        + markdown(record),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=("sparse", "fit"), help="run one case (a child)")
    parser.add_argument("--rows", type=int)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.rows)))
    else:
        main()
