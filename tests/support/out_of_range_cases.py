"""Sparse updates with an index outside the table, run in child processes.

A kernel that lost its index check would read and write outside the table,
which can crash the process; run in pytest's own process, such a crash
would abort the whole run and hide every test after it. `run_cases` runs
the named cases in a child process (`python -m support.out_of_range_cases
CASE ...` from tests/), and when the child dies, records which case it died
in and goes on with the cases after it in a new child.

The child prints, for each case, `start: CASE` before running it and
`outcome: {json}` after: the error class name and message (None if nothing
was raised) and whether var and accum are bit-identical to before.
"""

import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

import tf_adagrad
from support.adagrad_reference import bits
from support.keras_reference import make_variables

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, OUTCOME = "start: ", "outcome: "


def raw_sparse(shape, grad, indices, index_dtype=tf.int64):
    """A raw TfAdagrad>ApplySparse call (no Python-side checks in the way)
    on a fresh float32 var/accum pair of `shape`."""
    var0 = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 7
    accum0 = np.full(shape, 0.25, np.float32)
    var, accum = tf.Variable(var0), tf.Variable(accum0)

    def call():
        tf_adagrad.ops.load_library().tf_adagrad_apply_sparse(
            var=var.handle,
            accum=accum.handle,
            lr=tf.constant(0.1),
            epsilon=tf.constant(1e-7),
            grad=tf.constant(grad, tf.float32),
            indices=tf.constant(indices, index_dtype),
            rounding_key=[],
        )

    return call, [var, accum], [var0, accum0]


def optimizer_step():
    """tf_adagrad.Adagrad's sparse step inside a tf.function."""
    variables = make_variables([(10, 2)])
    optimizer = tf_adagrad.Adagrad(learning_rate=1.0)
    optimizer.build(variables)
    watched = variables + [v for v in optimizer.variables if "iteration" not in v.path]
    before = [v.numpy() for v in watched]
    grad = tf.IndexedSlices(tf.ones((3, 2)), tf.constant([1, 10, 4]), tf.constant([10, 2]))
    step = tf.function(lambda g: optimizer.apply([g], variables))
    return lambda: step(grad), watched, before


CASES = {
    "sparse-index-too-large": lambda: raw_sparse((5, 3), np.ones((3, 3)), [0, 4, 5]),
    "sparse-index-negative": lambda: raw_sparse((5, 3), np.ones((2, 3)), [-1, 2], tf.int32),
    "sparse-index-int64-max": lambda: raw_sparse((5, 3), np.ones((2, 3)), [1, 2**63 - 1]),
    "sparse-index-int64-min": lambda: raw_sparse((5, 3), np.ones((1, 3)), [-(2**63)]),
    "after-valid-indices": lambda: raw_sparse((100, 8), np.ones((100, 8)), list(range(99)) + [100]),
    "empty-table": lambda: raw_sparse((0, 2), np.ones((1, 2)), [0]),
    "optimizer-step": optimizer_step,
}


def run_case(name):
    call, variables, before = CASES[name]()
    outcome = {"case": name, "error": None, "message": None}
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the test reads class and message
        outcome.update(error=type(e).__name__, message=getattr(e, "message", str(e)))
    outcome["untouched"] = all(
        np.array_equal(bits(v.numpy()), bits(b)) for v, b in zip(variables, before)
    )
    return outcome


def run_cases(names, timeout=300):
    """{case: outcome} for `names`, each run in a child process; a case in
    which the child died gets {"crash": what the child left}."""
    outcomes, pending = {}, list(names)
    while pending:
        child = subprocess.run(
            [sys.executable, "-m", "support.out_of_range_cases", *pending],
            cwd=TESTS_DIR,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        running = None
        for line in child.stdout.splitlines():
            if line.startswith(START):
                running = line[len(START) :]
            elif line.startswith(OUTCOME):
                outcome = json.loads(line[len(OUTCOME) :])
                outcomes[outcome["case"]] = outcome
                running = None
        if child.returncode == 0 and all(name in outcomes for name in pending):
            break
        died_in = running or next(name for name in pending if name not in outcomes)
        outcomes[died_in] = {
            "crash": f"the child process died in this case (exit status {child.returncode}): "
            f"{child.stderr[-3000:]}"
        }
        pending = pending[pending.index(died_in) + 1 :]
    return outcomes


def main(names):
    for name in names:
        print(START + name, flush=True)
        print(OUTCOME + json.dumps(run_case(name)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
