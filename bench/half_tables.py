"""Times the sparse update of a bfloat16 embedding table against a float32
one, with each kind of optimizer state and rounding, and counts the bytes
of the table and its optimizer state.

A 10,000,000 x 64 table, 8,192 Zipf-distributed ids a step (a new batch of
ids each call, from 64, as in rowwise_steps.py), the op alone in a
tf.function (tf_adagrad.ops.sparse_apply_adagrad, or
sparse_rowwise_apply_adagrad):
- (f32) float32 table, float32 accumulator, elementwise: the reference;
- (a) bfloat16 table, bfloat16 accumulator, rounded to nearest;
- (b) bfloat16 table, float32 accumulator, stochastic rounding;
- (b') the same, rounded to nearest (what the rounding itself costs);
- (c) bfloat16 table, rowwise (a float32 accumulator per row), stochastic
  rounding;
- (c') the same, rounded to nearest.
Every step draws the next step number, the stochastic cases' rounding key
(seed, step) with it. The bytes are the table's and its accumulator's.

The float32 case runs in a child process, then the bfloat16 cases in
another (a 10M x 64 float32 tensor is 2.56 GB, which a process does not
give back to the system): these share one bfloat16 table (timing does not
depend on the values), each with its own accumulator, and take turns
(timing.median_ms), so that each stochastic case and its nearest-rounding
twin meet the same spells of a shared machine.

Goals: stochastic rounding's update takes at most 1.1x the time of the same
configuration rounded to nearest ((b) / (b'), (c) / (c')); (b) takes at
most 0.75x the float32 case's bytes, (c) at most 0.27x.

Run by bench.py (`make bench`) in a process of its own, or alone:
`python bench/half_tables.py`. Prints a line per case and the goals and
writes bench/results/half.json and half.md.
"""

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import (  # noqa: E402
    REPEATS,
    WARMUP,
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

ROWS, WIDTH, SPARSE_IDS = 10_000_000, 64, 8192
ID_BATCHES = 64
LR, EPSILON = 0.05, 1e-7
ROUNDING_SEED = 1234
REFERENCE = "f32"
# case -> (group, table dtype, optimizer state, rounding)
CASES = {
    REFERENCE: ("float32", "float32", "float32 accumulator", "nearest"),
    "a": ("bfloat16", "bfloat16", "bfloat16 accumulator", "nearest"),
    "b": ("bfloat16", "bfloat16", "float32 accumulator", "stochastic"),
    "b'": ("bfloat16", "bfloat16", "float32 accumulator", "nearest"),
    "c": ("bfloat16", "bfloat16", "rowwise float32 accumulator", "stochastic"),
    "c'": ("bfloat16", "bfloat16", "rowwise float32 accumulator", "nearest"),
}
GROUPS = ("float32", "bfloat16")
# (stochastic case, its nearest-rounding twin)
ROUNDING_PAIRS = (("b", "b'"), ("c", "c'"))
MAX_ROUNDING_COST = 1.1
MAX_BYTES_RATIO = {"b": 0.75, "c": 0.27}


def _bytes(variable):
    return int(np.prod(variable.shape)) * variable.dtype.size


def run_group(group):
    """{"ms": case -> median ms per update, "bytes": case -> bytes of the
    table and its accumulator} of the cases of `group`."""
    rng = np.random.default_rng(0)
    id_batches = tf.constant(np.stack([zipf_ids(rng, ROWS, SPARSE_IDS) for _ in range(ID_BATCHES)]))
    dtype = tf.as_dtype(group)
    values = tf.constant(rng.standard_normal((SPARSE_IDS, WIDTH)), dtype)
    table = tf.Variable(tf.random.stateless_normal((ROWS, WIDTH), seed=[0, 0], dtype=dtype))

    def accumulator(state):
        if state.startswith("rowwise"):
            return tf.Variable(tf.zeros((ROWS,)))
        accum_dtype = tf.as_dtype(state.split()[0])
        return tf.Variable(tf.fill((ROWS, WIDTH), tf.constant(0.1, accum_dtype)))

    def update(accum, op, stochastic):
        """A step: the next batch of ids and step number, then the op."""
        step_count = tf.Variable(0, dtype=tf.int64)

        def step():
            step_number = step_count.assign_add(1)
            ids = tf.gather(id_batches, step_number % ID_BATCHES)
            key = tf.stack([tf.constant(ROUNDING_SEED, tf.int64), step_number])
            op(table, accum, LR, EPSILON, values, ids, rounding_key=key if stochastic else None)

        return graph_step(step)

    steps, table_bytes = {}, {}
    accumulators = {}
    for case, (case_group, _, state, rounding) in CASES.items():
        if case_group != group:
            continue
        # The twins (b, b') and (c, c') share their accumulator too.
        if state not in accumulators:
            accumulators[state] = accumulator(state)
        accum = accumulators[state]
        op = (
            tf_adagrad.ops.sparse_rowwise_apply_adagrad
            if state.startswith("rowwise")
            else tf_adagrad.ops.sparse_apply_adagrad
        )
        steps[case] = update(accum, op, rounding == "stochastic")
        table_bytes[case] = _bytes(table) + _bytes(accum)
    return {"ms": median_ms(steps), "bytes": table_bytes}


def run_group_in_child(group):
    """Runs one group in a fresh process; its result, from the child's last
    output line."""
    output = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--group", group],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def describe(case):
    _, table, state, rounding = CASES[case]
    return f"({case}) {table} table, {state}, {rounding}"


def run_all():
    ms, table_bytes = {}, {}
    for group in GROUPS:
        result = run_group_in_child(group)
        ms.update(result["ms"])
        table_bytes.update(result["bytes"])
        for case in result["ms"]:
            print(
                f"{describe(case):60s} {ms[case]:8.3f} ms ({ms[case] / ms[REFERENCE]:.2f}x f32)  "
                f"{table_bytes[case]:>14,} bytes ({table_bytes[case] / table_bytes[REFERENCE]:.4f}x f32)",
                flush=True,
            )
    return {
        "cases": [
            {
                "case": case,
                "description": describe(case),
                "ms": ms[case],
                "bytes": table_bytes[case],
            }
            for case in CASES
        ]
    }


def goals(record):
    """(description, measured, bound, met) for each goal."""
    ms = {c["case"]: c["ms"] for c in record["cases"]}
    table_bytes = {c["case"]: c["bytes"] for c in record["cases"]}
    listed = []
    for stochastic, nearest in ROUNDING_PAIRS:
        ratio = ms[stochastic] / ms[nearest]
        listed.append(
            (
                f"({stochastic}) stochastic / ({nearest}) nearest rounding, update time",
                ratio,
                f"<= {MAX_ROUNDING_COST}",
                ratio <= MAX_ROUNDING_COST,
            )
        )
    for case, bound in MAX_BYTES_RATIO.items():
        ratio = table_bytes[case] / table_bytes[REFERENCE]
        listed.append(
            (
                f"({case}) / (f32) table and optimizer state bytes",
                ratio,
                f"<= {bound}",
                ratio <= bound,
            )
        )
    return listed


def markdown(record):
    reference = record["cases"][0]
    lines = [
        "| case | ms | / f32 | table + accumulator bytes | / f32 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for c in record["cases"]:
        lines.append(
            f"| {c['description']} | {c['ms']:.3f} | {c['ms'] / reference['ms']:.2f} | "
            f"{c['bytes']:,} | {c['bytes'] / reference['bytes']:.4f} |"
        )
    lines += ["", *goal_table(goals(record), digits=4)]
    return "\n".join(lines) + "\n"


def main():
    header = machine_header("Keras", keras.__version__)
    title = (
        f"sparse update of a {ROWS:,}x{WIDTH} table, {SPARSE_IDS} zipf ids: bfloat16 against "
        f"float32, median ms per step of {REPEATS}, after {WARMUP} warm-up steps"
    )
    print(f"{header}; {title}", flush=True)
    record = {**run_info(keras=keras.__version__), **run_all()}
    print_goals(goals(record), digits=4)
    write_results(
        "half", record, f"{header}. {title[0].upper()}{title[1:]}.\n\n" + markdown(record)
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--group", choices=GROUPS, help="run one group of cases (a child)")
    args = parser.parse_args()
    if args.group:
        print(json.dumps(run_group(args.group)))
    else:
        main()
