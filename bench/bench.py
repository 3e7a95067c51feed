"""Times one Adagrad step of tf_adagrad.Adagrad against keras.optimizers.Adagrad,
TensorFlow's raw fused ops and the memory roofline, in the same process and
the same run.

Run with `make bench`. Each implementation gets its own variables; a step is
one call of a tf.function (the optimizer's `apply`, or the raw ops), timed
after a warm-up, the implementations in turns (five rounds of ten timed
consecutive steps each); the median of the 50 steps is reported. The roofline is the bytes a step must move (read var,
accum, grad; write var, accum; for sparse steps only the touched rows, plus
the gradient and the indices) divided by the memory bandwidth, measured in
turns with each case's steps. The call floor is a tf.function that takes in
the same variables and gradients as tf_adagrad's step and computes nothing.

Prints a line per case, then writes bench/results/bench.json, bench.md (a
markdown table with the ratios) and bench.png (a bar chart). Then runs the
other sections, each in a process of its own that prints a line per case
and its goals and writes its results beside these: whole training steps
(fit_steps.py: Keras `fit()` and a custom loop with tables of 10k to 10M
rows, and the demo's recommender; fit.json, fit.md), tf_adagrad's tf_keras
(Keras 2) optimizers against tf_keras' own (keras2_steps.py, with
TF_USE_LEGACY_KERAS=1; keras2.json, keras2.md), and rowwise Adagrad against
elementwise Adagrad and Keras' with their accumulators' bytes
(rowwise_steps.py; rowwise.json, rowwise.md), and fit() steps with each
option of Keras' optimizer base class, clipping to loss scaling, at 10k to
10M rows (option_steps.py; options.json, options.md), and the sparse update
of a 10M-row bfloat16 table (bfloat16 or float32 accumulators, rowwise;
stochastic or nearest rounding) against a float32 one, with their bytes
(half_tables.py; half.json, half.md).
bench/results/ is git-ignored: the figures the documentation shows are
copied from a run by hand, a separate and deliberate step.
"""

import gc
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import (  # noqa: E402
    REPEATS,
    RESULTS_DIR,
    WARMUP,
    call_floor_step,
    graph_step,
    machine_header,
    median_ms,
    run_info,
    write_results,
    zipf_ids,
)

import tf_adagrad  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
LR, EPSILON = 0.01, 1e-7
IMPLEMENTATIONS = ("tf_adagrad", "keras", "tf_raw")
LABELS = {
    "tf_adagrad": "tf_adagrad.Adagrad",
    "keras": "keras.optimizers.Adagrad",
    "tf_raw": "TF raw fused ops",
    "roofline": "memory roofline",
}


class BandwidthProbe:
    """TF's multi-threaded in-place add `x += y` over 64 MiB float32 arrays
    (reads x and y, writes x): what a streaming one-pass kernel reaches on
    this machine with all its threads. Timed in turns with each case."""

    def __init__(self):
        n = 16 * 2**20
        self.x = tf.Variable(tf.zeros([n]))
        self.y = tf.ones([n])
        self.bytes = 3 * 4 * n
        self.step = graph_step(lambda: self.x.assign_add(self.y))


def optimizer_steps(make_optimizer_vars, grads):
    """tf_adagrad.Adagrad and keras.optimizers.Adagrad, each on its own copy
    of the variables, applying `grads`."""
    steps = {}
    for impl, optimizer_class in (
        ("tf_adagrad", tf_adagrad.Adagrad),
        ("keras", keras.optimizers.Adagrad),
    ):
        variables = make_optimizer_vars()
        optimizer = optimizer_class(LR, epsilon=EPSILON)
        optimizer.build(variables)
        steps[impl] = graph_step(
            lambda optimizer=optimizer, variables=variables: optimizer.apply(grads, variables)
        )
        if impl == "tf_adagrad":
            steps["floor"] = call_floor_step(variables + optimizer.variables, grads)
    return steps


def dense_case(sizes, dtype=np.float32):
    """One dense variable per entry of `sizes` (a shape each)."""
    rng = np.random.default_rng(0)
    initial = [rng.standard_normal(shape).astype(dtype) for shape in sizes]
    tf_dtype = tf.as_dtype(dtype)
    grads = [tf.constant(rng.standard_normal(shape), tf_dtype) for shape in sizes]

    def make_vars():
        return [tf.Variable(x) for x in initial]

    steps = optimizer_steps(make_vars, grads)
    variables = make_vars()
    accums = [tf.Variable(tf.fill(shape, tf.constant(0.1, tf_dtype))) for shape in sizes]
    lr, eps = tf.constant(LR, tf_dtype), tf.constant(EPSILON, tf_dtype)

    def raw_step():
        for var, accum, grad in zip(variables, accums, grads):
            tf.raw_ops.ResourceApplyAdagradV2(
                var=var.handle, accum=accum.handle, lr=lr, epsilon=eps, grad=grad
            )

    steps["tf_raw"] = graph_step(raw_step)
    bytes_moved = sum(5 * int(np.prod(shape)) * np.dtype(dtype).itemsize for shape in sizes)
    return steps, bytes_moved


def sparse_case(num_rows, row, nnz, zipf):
    rng = np.random.default_rng(0)
    initial = rng.standard_normal((num_rows, row)).astype(np.float32)
    if zipf:
        indices = zipf_ids(rng, num_rows, nnz)
    else:
        indices = rng.integers(0, num_rows, nnz)
    num_unique = len(np.unique(indices))
    indices = tf.constant(indices, tf.int64)
    grad = tf.constant(rng.standard_normal((nnz, row)).astype(np.float32))
    slices = tf.IndexedSlices(grad, indices, tf.constant([num_rows, row], tf.int64))

    steps = optimizer_steps(lambda: [tf.Variable(initial)], [slices])
    var = tf.Variable(initial)
    accum = tf.Variable(tf.fill([num_rows, row], 0.1))
    lr, eps = tf.constant(LR), tf.constant(EPSILON)
    # TF's raw op applies duplicates one by one: give it unique indices (and
    # summed rows, computed outside the timed step) to be fair to it.
    unique, position = tf.unique(indices)
    summed = tf.math.unsorted_segment_sum(grad, position, tf.size(unique))
    steps["tf_raw"] = graph_step(
        lambda: tf.raw_ops.ResourceSparseApplyAdagradV2(
            var=var.handle, accum=accum.handle, lr=lr, epsilon=eps, grad=summed, indices=unique
        )
    )
    # Gradient rows and indices read; each touched row of var and accum read
    # and written once.
    bytes_moved = nnz * row * 4 + nnz * 8 + 4 * num_unique * row * 4
    return steps, bytes_moved


M = 2**20
CASES = [
    ("dense 16M float32", lambda: dense_case([(16 * M,)])),
    ("dense 1M float32", lambda: dense_case([(M,)])),
    ("dense 1M bfloat16", lambda: dense_case([(M,)], dtype=tf.bfloat16.as_numpy_dtype)),
    ("sparse 1Mx64, 8192 zipf indices", lambda: sparse_case(M, 64, 8192, zipf=True)),
    ("sparse 100kx128, 4096 uniform indices", lambda: sparse_case(100_000, 128, 4096, zipf=False)),
    ("200 variables of 64x64", lambda: dense_case([(64, 64)] * 200)),
    ("20 variables of 1M", lambda: dense_case([(M,)] * 20)),
]


def ratio(x, y):
    return None if x is None or y is None else x / y


def _versus(ms, ours_ms):
    """A time, and in brackets the time divided by tf_adagrad's."""
    if ms is None:
        return "n/a"
    return f"{ms:.3f} ({ms / ours_ms:.1f}×)"


def markdown_table(results):
    """ms per step; in brackets, each time divided by tf_adagrad's (above 1:
    slower than tf_adagrad), and tf_adagrad's divided by the roofline."""
    lines = [
        "| case | tf_adagrad.Adagrad | keras.optimizers.Adagrad | TF raw fused ops | memory roofline | call floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        ms = r["ms"]
        ours = ms["tf_adagrad"]
        keras_ms, tf_raw_ms = (_versus(ms[impl], ours) for impl in ("keras", "tf_raw"))
        lines.append(
            f"| {r['case']} | {ours:.3f} | {keras_ms} | {tf_raw_ms} | "
            f"{ms['roofline']:.3f} (ours {ours / ms['roofline']:.2f}×) | {ms['floor']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def bar_chart(results, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    impls = IMPLEMENTATIONS + ("roofline",)
    colors = {
        "tf_adagrad": "#1f77b4",
        "keras": "#ff7f0e",
        "tf_raw": "#2ca02c",
        "roofline": "#7f7f7f",
    }
    width = 0.2
    fig, ax = plt.subplots(figsize=(12, 5.5))
    for k, impl in enumerate(impls):
        xs = [i + (k - 1.5) * width for i in range(len(results))]
        ys = [r["ms"][impl] or 0 for r in results]
        ax.bar(xs, ys, width, label=LABELS[impl], color=colors[impl])
    ax.set_yscale("log")
    ax.set_ylabel("ms per step (median, log scale)")
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([r["case"].replace(", ", ",\n") for r in results], fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    header = machine_header("Keras", keras.__version__)
    print(header + "; median ms per step", flush=True)
    probe = BandwidthProbe()
    results = []
    for name, make in CASES:
        steps, bytes_moved = make()
        runnable = {}
        ms = {}
        for impl in IMPLEMENTATIONS:
            try:
                steps[impl]()
                runnable[impl] = steps[impl]
            except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as e:
                # TF registers no raw kernel for some dtypes.
                print(f"  {impl}: not run ({type(e).__name__})", flush=True)
                ms[impl] = None
        runnable["floor"] = steps["floor"]
        runnable["bandwidth"] = probe.step
        ms.update(median_ms(runnable))
        bandwidth = probe.bytes / (ms.pop("bandwidth") * 1e-3)
        ms["roofline"] = 1e3 * bytes_moved / bandwidth
        results.append(
            {"case": name, "bytes_moved": bytes_moved, "bandwidth_bytes_per_s": bandwidth, "ms": ms}
        )
        ours = ms["tf_adagrad"]
        parts = [f"{name:38s} tf_adagrad {ours:7.3f}"]
        for impl in ("keras", "tf_raw"):
            if ms[impl] is not None:
                parts.append(f"{impl} {ms[impl]:7.3f} ({ms[impl] / ours:5.1f}x)")
        parts.append(
            f"roofline {ms['roofline']:6.3f} (ours {ours / ms['roofline']:.2f}x, {bandwidth / 1e9:.0f} GB/s)"
        )
        parts.append(f"call floor {ms['floor']:6.3f}")
        print("  ".join(parts), flush=True)
        del steps, runnable
        gc.collect()

    record = {
        **run_info(keras=keras.__version__),
        "repeats": REPEATS,
        "warmup": WARMUP,
        "cases": results,
    }
    write_results(
        "bench",
        record,
        f"{header}; median ms per step of {REPEATS}, after {WARMUP} warm-up steps; in "
        f"brackets, the time divided by tf_adagrad's; the roofline at the memory "
        f"bandwidth measured with each case "
        f"({min(r['bandwidth_bytes_per_s'] for r in results) / 1e9:.0f} to "
        f"{max(r['bandwidth_bytes_per_s'] for r in results) / 1e9:.0f} GB/s).\n\n"
        + markdown_table(results),
    )
    bar_chart(results, os.path.join(RESULTS_DIR, "bench.png"), header)
    print(f"wrote {RESULTS_DIR}/bench.png", flush=True)

    del probe
    print(flush=True)
    run_section("fit_steps.py")
    print(flush=True)
    run_section("keras2_steps.py", TF_USE_LEGACY_KERAS="1")
    print(flush=True)
    run_section("rowwise_steps.py")
    print(flush=True)
    run_section("option_steps.py")
    print(flush=True)
    run_section("half_tables.py")


def run_section(script, **environment):
    """One section of the bench, in a process of its own, so each starts
    with the machine's whole memory (the 10M-row cases need it; a process
    keeps what its earlier cases allocated) and its own TensorFlow settings
    (tf.keras is tf_keras only when TF_USE_LEGACY_KERAS=1 is set before
    TensorFlow is imported)."""
    subprocess.run(
        [sys.executable, os.path.join(BENCH_DIR, script)],
        env=dict(os.environ, **environment),
        check=True,
    )


if __name__ == "__main__":
    main()
