"""How the bench sections time a step (in turns, median ms), the cost of
calling one that does nothing (the call floor), and how each section names
its machine and writes its results."""

import gc
import json
import os
import platform
import statistics
import time

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
