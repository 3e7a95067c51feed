"""How the bench sections time a step (in turns, median ms) and a fit()
step (a callback's clock, fit() calls in turns), the cost of calling a step
that does nothing (the call floor), the Zipf ids they train on, and how
each section names its machine and writes its results."""

import gc
import json
import os
import platform
import statistics
import time

import numpy as np
import tensorflow as tf

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

REPEATS, ROUNDS, WARMUP = 50, 5, 5


def machine_header(keras_name, keras_version):
    """The line a section's output and files begin with."""
    return (
        f"TensorFlow {tf.__version__}, {keras_name} {keras_version}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )


def run_info(**keras_version):
    """What a results file records of the run besides its figures."""
    return {
        "tensorflow": tf.__version__,
        **keras_version,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def write_results(name, record, markdown):
    """bench/results/NAME.json (every number) and NAME.md (the tables)."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, f"{name}.json"), "w") as f:
        json.dump(record, f, indent=2)
    with open(os.path.join(RESULTS_DIR, f"{name}.md"), "w") as f:
        f.write(markdown)
    print(f"wrote {RESULTS_DIR}/{name}.json, {name}.md", flush=True)


def graph_step(update):
    """`update` traced once into a tf.function (its return value dropped)."""

    @tf.function
    def step():
        update()

    return step


def median_ms(steps):
    """Median ms per call of each of `steps` (name -> callable). The steps
    take turns in rounds, so a slow spell of a shared machine hits them all
    alike; within a round each runs a block of consecutive calls, the first
    untimed (caches refill after the other steps' work), as a training loop
    calls its step. Python's garbage collector is off meanwhile (as in
    timeit)."""
    for step in steps.values():
        for _ in range(WARMUP):
            step()
    times = {name: [] for name in steps}
    gc.collect()
    gc.disable()
    try:
        for _ in range(ROUNDS):
            for name, step in steps.items():
                step()
                for _ in range(REPEATS // ROUNDS):
                    start = time.perf_counter()
                    step()
                    times[name].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def call_floor_step(variables, grads):
    """A tf.function that takes in the same variables and gradients as the
    optimizer's step and computes nothing (one IdentityN consumes them all):
    what calling a step costs before any work."""
    tensors = []
    for grad in grads:
        tensors += [grad.values, grad.indices] if isinstance(grad, tf.IndexedSlices) else [grad]

    @tf.function
    def step():
        handles = [v.handle if isinstance(v, tf.Variable) else v.value.handle for v in variables]
        inputs = tf.raw_ops.IdentityN(input=handles + tensors)
        return tf.shape(inputs[-1])  # an output, so nothing is pruned

    return step


def goal_table(goals, digits=2):
    """The markdown lines of a section's goals table; `goals` holds
    (description, measured, bound, met) tuples, `digits` the measured
    figures' decimals."""
    lines = ["| goal | measured | bound | |", "| --- | ---: | ---: | --- |"]
    for description, measured, bound, met in goals:
        lines.append(
            f"| {description} | {measured:.{digits}f} | {bound} | {'met' if met else 'MISSED'} |"
        )
    return lines


def print_goals(goals, digits=2):
    """A line per goal: `goal: description: measured (bound) met|MISSED`."""
    for description, measured, bound, met in goals:
        print(f"goal: {description}: {measured:.{digits}f} ({bound}) {'met' if met else 'MISSED'}")


def zipf_ids(rng, rows, count):
    """`count` int64 ids of a `rows`-row table drawn from a Zipf law (a few
    rows very often, many rarely, as in recommender data)."""
    return ((rng.zipf(1.1, count) - 1) % rows).astype(np.int64)


class StepTimer:
    """Mixed into a Keras callback class (Keras 3's or tf_keras'): each
    batch's wall time, from its start to its end, in `times` (defining both
    hooks makes Keras call them in step), the first of each fit() call left
    out."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_begin(self, logs=None):
        self._batches = 0

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        elapsed = time.perf_counter() - self._start
        self._batches += 1
        if self._batches > 1:
            self.times.append(elapsed)


def fit_on_batches(model, x, y, batch_size):
    """callable(num_steps, timer): one epoch of `model.fit()` on the first
    `num_steps` batches of (x, y) in order, `timer` its callback. `x` is an
    array or a dict of arrays (a model with named inputs)."""

    def fit(num_steps, timer):
        count = num_steps * batch_size
        model.fit(
            {k: v[:count] for k, v in x.items()} if isinstance(x, dict) else x[:count],
            y[:count],
            batch_size=batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[timer],
        )

    return fit


def time_fits(
    fits,
    new_timer,
    rounds,
    steps_per_round,
    warmup_steps,
    turn_warmup_steps=0,
    slow_steps_per_round=None,
    statistic=statistics.median,
    turn_means=False,
):
    """Median ms per fit() step of each of `fits` (name -> callable(num_steps,
    timer), as fit_on_batches returns), timed by `new_timer()` (a StepTimer
    callback). Warms each up with `warmup_steps` steps, then runs them in
    turns, `rounds` rounds; each turn times `steps_per_round` steps (the
    first of a fit() call is left out, so it runs one more), after
    `turn_warmup_steps` untimed ones. The slow ones, named in
    `slow_steps_per_round` (name -> steps), time fewer steps a turn, with no
    untimed ones. `statistic` of the step times, in ms; with `turn_means`,
    the median over turns of each turn's mean (for steps that differ within
    a period: each turn times whole periods, and one disturbed turn does not
    move the result)."""
    slow_steps_per_round = slow_steps_per_round or {}
    for fit in fits.values():
        fit(warmup_steps, new_timer())
    timers = {name: new_timer() for name in fits}
    gc.collect()
    for _ in range(rounds):
        for name, fit in fits.items():
            if turn_warmup_steps and name not in slow_steps_per_round:
                fit(turn_warmup_steps, new_timer())
            fit(slow_steps_per_round.get(name, steps_per_round) + 1, timers[name])
    if not turn_means:
        return {name: 1e3 * statistic(timer.times) for name, timer in timers.items()}
    result = {}
    for name, timer in timers.items():
        per_turn = slow_steps_per_round.get(name, steps_per_round)
        turns = [timer.times[i : i + per_turn] for i in range(0, len(timer.times), per_turn)]
        result[name] = 1e3 * statistics.median(statistics.mean(turn) for turn in turns)
    return result
