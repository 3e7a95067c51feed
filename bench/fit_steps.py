"""Whole training steps, as a user of `model.fit()` feels them.

Keras 3 `fit()` of an Embedding model (`Embedding(rows, 32) -> Flatten ->
Dense(1)`, batch 1024, Zipf ids) with tables of 10k, 1M and 10M rows, for
tf_adagrad.Adagrad, keras.optimizers.Adagrad and keras.optimizers.SGD (Keras'
cheapest sparse update, as a reference); the same model trained by a custom
loop that looks rows up with `tf.nn.embedding_lookup` (a ResourceGather, as
tf_keras and TensorFlow Recommenders do); and the demo's recommender
(examples/recommender.py) with both Adagrads and with an optimizer whose
update does nothing (the model's own share of a step).

A step's time is taken by a callback, from the start of a batch to its end,
after a warm-up; the implementations take turns in rounds. Prints a line per
case and the goals, and writes bench/results/fit.json and fit.md. Run by
bench/bench.py (`make bench`) in a process of its own, or alone: `python
bench/fit_steps.py` (`--variant mirrored` runs the fit() cases under
MirroredStrategy on two logical CPUs and prints them as JSON, in a process
of its own).
"""

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import timing  # noqa: E402  (bench/, beside this file)
from timing import (  # noqa: E402
    fit_on_batches,
    goal_table,
    machine_header,
    print_goals,
    run_info,
    write_results,
    zipf_ids,
)

import tf_adagrad  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR = 0.05
TABLE_ROWS = (10_000, 1_000_000, 10_000_000)
EMBEDDING_DIM, BATCH_SIZE = 32, 1024
ROUNDS, STEPS_PER_ROUND, WARMUP_STEPS = 3, 8, 3
# keras.optimizers.Adagrad takes about half a second per step at 10M rows
# here; fewer of its steps are timed there.
SLOW_STEPS_PER_ROUND = 3
# Untimed steps at the start of each turn: one pass over the batches that
# the timed steps then take. After Keras' Adagrad has run at 10M rows
# (gigabytes allocated and freed per step, the caches flushed), tf_adagrad's
# step took about ten steps to settle back to its steady time on a 2-core VM
# (19.7 ms at the first, 5.3 at the eighth, ~3.3 run alone); a training loop
# runs in that steady state. The slow implementations' turns skip it: one of
# their steps is hundreds of times the settling.
TURN_WARMUP_STEPS = STEPS_PER_ROUND + 1
OPTIMIZERS = {
    "tf_adagrad": lambda: tf_adagrad.Adagrad(LR),
    "keras": lambda: keras.optimizers.Adagrad(LR),
    "keras_sgd": lambda: keras.optimizers.SGD(LR),
}
LABELS = {
    "tf_adagrad": "tf_adagrad.Adagrad",
    "keras": "keras.optimizers.Adagrad",
    "keras_sgd": "keras.optimizers.SGD",
    "no_update": "no update (model only)",
}


class StepTimes(timing.StepTimer, keras.callbacks.Callback):
    """timing.StepTimer as a Keras 3 callback."""


class NoUpdate(keras.optimizers.Optimizer):
    """Computes nothing in its update: what is left of a step is the model's
    forward and backward pass and Keras' own work."""

    def update_step(self, gradient, variable, learning_rate):
        pass


def median_ms(times):
    return 1e3 * statistics.median(times)


def time_fits(fits, slow_steps_per_round):
    """timing.time_fits with this section's rounds, steps and warm-ups:
    fits is name -> callable(num_steps, timer) (timing.fit_on_batches), the
    slow ones named in `slow_steps_per_round`; median ms by name."""
    return timing.time_fits(
        fits,
        StepTimes,
        ROUNDS,
        STEPS_PER_ROUND,
        WARMUP_STEPS,
        TURN_WARMUP_STEPS,
        slow_steps_per_round,
    )


def embedding_model(rows):
    return keras.Sequential(
        [
            keras.Input((1,), dtype="int64"),
            keras.layers.Embedding(rows, EMBEDDING_DIM),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )


def fit_case(rows, jit_compile=False, strategy=None):
    """ms per fit() step of the Embedding model for each optimizer."""
    rng = np.random.default_rng(0)
    num_examples = BATCH_SIZE * (STEPS_PER_ROUND + 1)
    ids = zipf_ids(rng, rows, num_examples).reshape(-1, 1)
    labels = rng.standard_normal((num_examples, 1)).astype(np.float32)
    strategy = strategy or tf.distribute.get_strategy()
    fits = {}
    for name, make_optimizer in OPTIMIZERS.items():
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = embedding_model(rows)
            model.compile(optimizer=make_optimizer(), loss="mse", jit_compile=jit_compile)

        fits[name] = fit_on_batches(model, ids, labels, BATCH_SIZE)
    slow = {"keras": SLOW_STEPS_PER_ROUND} if rows >= 10_000_000 else {}
    return time_fits(fits, slow)


def custom_loop_case(rows):
    """ms per step of a tf.function training step that looks rows up with
    tf.nn.embedding_lookup (ResourceGather), as tf_keras and TensorFlow
    Recommenders do, for each optimizer."""
    rng = np.random.default_rng(0)
    batches = [
        (
            tf.constant(zipf_ids(rng, rows, BATCH_SIZE)),
            tf.constant(rng.standard_normal((BATCH_SIZE, 1)), tf.float32),
        )
        for _ in range(4)
    ]
    initial_table = tf.random.stateless_uniform(
        (rows, EMBEDDING_DIM), seed=[0, 0], minval=-0.05, maxval=0.05
    )
    initial_weights = tf.random.stateless_normal((EMBEDDING_DIM, 1), seed=[1, 0])
    steps = {}
    for name, make_optimizer in OPTIMIZERS.items():
        table, weights = tf.Variable(initial_table), tf.Variable(initial_weights)
        optimizer = make_optimizer()
        optimizer.build([table, weights])

        @tf.function
        def step(ids, labels, table=table, weights=weights, optimizer=optimizer):
            with tf.GradientTape() as tape:
                predictions = tf.matmul(tf.nn.embedding_lookup(table, ids), weights)
                loss = tf.reduce_mean((predictions - labels) ** 2)
            optimizer.apply(tape.gradient(loss, [table, weights]), [table, weights])

        steps[name] = step
    for step in steps.values():
        for ids, labels in batches:
            step(ids, labels)
    times = {name: [] for name in steps}
    gc.collect()
    for _ in range(ROUNDS):
        for name, step in steps.items():
            for k in range(STEPS_PER_ROUND):
                ids, labels = batches[k % len(batches)]
                start = time.perf_counter()
                step(ids, labels)
                times[name].append(time.perf_counter() - start)
    return {name: median_ms(t) for name, t in times.items()}


def demo_case():
    """The demo's recommender, with the demo's data, for both Adagrads and
    an optimizer that updates nothing."""
    sys.path.insert(0, os.path.join(REPO, "examples"))
    import recommender

    rng = np.random.default_rng(recommender.SEED)
    truth = recommender.hidden_click_model(rng)
    num_examples = recommender.BATCH_SIZE * (STEPS_PER_ROUND + 1)
    features, clicks, _ = recommender.interactions(rng, truth, num_examples)
    fits = {}
    optimizers = {
        "tf_adagrad": lambda: tf_adagrad.Adagrad(recommender.LEARNING_RATE),
        "keras": lambda: keras.optimizers.Adagrad(recommender.LEARNING_RATE),
        "no_update": lambda: NoUpdate(recommender.LEARNING_RATE),
    }
    for name, make_optimizer in optimizers.items():
        keras.utils.set_random_seed(recommender.SEED)
        model = recommender.build_model()
        model.compile(optimizer=make_optimizer(), loss="binary_crossentropy", jit_compile=False)

        fits[name] = fit_on_batches(model, features, clicks, recommender.BATCH_SIZE)
    return time_fits(fits, {})


def format_line(case, ms, reference="tf_adagrad"):
    ours = ms[reference]
    parts = [f"{case:44s}"]
    for name, value in ms.items():
        if value is None:
            parts.append(f"{name} n/a")
        elif name == reference:
            parts.append(f"{name} {value:8.2f}")
        else:
            parts.append(f"{name} {value:8.2f} ({value / ours:5.1f}x)")
    return "  ".join(parts)


def fit_cases(jit_compile=False, strategy=None, label="fit()"):
    """{rows: ms by optimizer}, a line printed per case."""
    results = {}
    for rows in TABLE_ROWS:
        results[rows] = fit_case(rows, jit_compile=jit_compile, strategy=strategy)
        print(format_line(f"{label} {rows:>10,} rows", results[rows]), flush=True)
        gc.collect()
    return results


def run_mirrored_in_subprocess():
    """The fit() cases under MirroredStrategy on two logical CPUs, in a
    process of their own (logical devices are fixed at TensorFlow's start)."""
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--variant", "mirrored"],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines = []
    for line in child.stdout:  # a line per case as it comes; the JSON last
        lines.append(line)
        if not line.startswith("{"):
            print(line, end="", flush=True)
    if child.wait() != 0:
        raise RuntimeError(f"the MirroredStrategy cases failed (exit status {child.returncode})")
    return {int(rows): ms for rows, ms in json.loads(lines[-1]).items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=["all", "mirrored"], default="all")
    args = parser.parse_args()
    if args.variant == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        results = fit_cases(strategy=strategy, label="fit() mirrored x2")
        print(json.dumps(results))
        return
    header = machine_header("Keras", keras.__version__)
    print(f"{header}; whole training steps, median ms per step", flush=True)
    record = run_all()
    print_goals(goals(record))
    write_results(
        "fit",
        {**run_info(keras=keras.__version__), **record},
        f"{header}. {__doc__.splitlines()[0]}\n\n" + markdown(record),
    )


def run_all():
    """Every case; returns the results (ms per step by optimizer). The
    MirroredStrategy cases go first: their process needs the memory that
    this one's 10M-row tables take later."""
    record = {"fit_mirrored": run_mirrored_in_subprocess()}
    record["fit"] = fit_cases()
    record["custom_loop"] = {}
    for rows in TABLE_ROWS:
        record["custom_loop"][rows] = custom_loop_case(rows)
        print(
            format_line(f"custom loop (embedding_lookup) {rows:>10,}", record["custom_loop"][rows]),
            flush=True,
        )
        gc.collect()
    record["demo"] = demo_case()
    print(format_line("demo recommender fit()", record["demo"]), flush=True)
    record["fit_jit"] = fit_cases(jit_compile=True, label="fit(jit_compile=True)")
    return record


def goals(record):
    """(description, measured, bound, met) for each goal."""
    fit = record["fit"]
    small, large = min(TABLE_ROWS), max(TABLE_ROWS)
    growth = fit[large]["tf_adagrad"] / fit[small]["tf_adagrad"]
    versus_keras = fit[1_000_000]["keras"] / fit[1_000_000]["tf_adagrad"]
    demo = record["demo"]["keras"] / record["demo"]["tf_adagrad"]
    return [
        (
            f"tf_adagrad fit() step at {large:,} rows / at {small:,} rows",
            growth,
            "<= 1.3",
            growth <= 1.3,
        ),
        (
            "keras.optimizers.Adagrad / tf_adagrad, fit() step at 1,000,000 rows",
            versus_keras,
            ">= 20",
            versus_keras >= 20,
        ),
        (
            "demo recommender: keras.optimizers.Adagrad / tf_adagrad per fit() step",
            demo,
            ">= 15",
            demo >= 15,
        ),
    ]


def markdown(record):
    """Tables of ms per step, ratios against tf_adagrad, and the goals."""
    lines = []

    def table(title, results, names):
        lines.append(f"**{title}**, median ms per step (in brackets: divided by tf_adagrad's)\n")
        lines.append(
            "| table rows | "
            + " | ".join(LABELS[n] for n in names)
            + " | tf_adagrad: step / step at 10k |"
        )
        lines.append("| ---: |" + " ---: |" * (len(names) + 1))
        base = results[min(results)]["tf_adagrad"]
        for rows, ms in sorted(results.items()):
            cells = [f"{ms['tf_adagrad']:.2f}"] + [
                f"{ms[n]:.2f} ({ms[n] / ms['tf_adagrad']:.1f}×)" for n in names[1:]
            ]
            lines.append(
                f"| {rows:,} | " + " | ".join(cells) + f" | {ms['tf_adagrad'] / base:.2f} |"
            )
        lines.append("")

    names = list(OPTIMIZERS)
    table("Keras 3 fit()", record["fit"], names)
    table("Custom loop with tf.nn.embedding_lookup", record["custom_loop"], names)
    table("Keras 3 fit(jit_compile=True)", record["fit_jit"], names)
    table("Keras 3 fit() under MirroredStrategy, 2 logical CPUs", record["fit_mirrored"], names)
    demo = record["demo"]
    lines.append("**Demo recommender fit()**, median ms per step\n")
    lines.append("| " + " | ".join(LABELS[n] for n in demo) + " |")
    lines.append("|" + " ---: |" * len(demo))
    lines.append("| " + " | ".join(f"{demo[n]:.2f}" for n in demo) + " |")
    lines.append("")
    lines.append("**Goals**\n")
    lines += goal_table(goals(record))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
