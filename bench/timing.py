"""How bench.py and keras2_steps.py time a step (in turns, median ms), and
the cost of calling one that does nothing (the call floor)."""

import gc
import statistics
import time

import tensorflow as tf

REPEATS, ROUNDS, WARMUP = 50, 5, 5


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
