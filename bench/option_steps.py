"""The options users turn on, in whole training steps.

Keras 3 `fit()` of `Embedding(rows, 32) -> Flatten -> Dense(1)`, batch 1024,
Zipf ids, with tables of 10k, 1M and 10M rows, for each option of Keras'
optimizer base class (clipping, weight decay, EMA, gradient accumulation,
loss scaling): tf_adagrad.Adagrad at every size, keras.optimizers.Adagrad
with the same option at 10k and 1M rows. The ms per step: the median over
5 turns of each turn's mean (8 or 4 consecutive steps a turn: whole
accumulation and overwrite periods).
Prints a line per case and the goals, and writes bench/results/options.json
and options.md. Run by bench/bench.py (`make bench`) in a process of its
own, or alone: `python bench/option_steps.py`.
"""

import gc
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import fit_steps  # noqa: E402  (bench/, beside this file, as timing)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import timing  # noqa: E402
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

LR = 0.05
TABLE_ROWS = (10_000, 1_000_000, 10_000_000)
KERAS_MAX_ROWS = 1_000_000  # Keras' Adagrad takes seconds a step beyond
BATCH_SIZE = 1024  # the model: fit_steps.embedding_model, rows x 32
ROUNDS, STEPS_PER_ROUND, WARMUP_STEPS = 5, 8, 3
# Steps a turn where a step takes longer than SLOW_MS: still whole periods.
SLOW_STEPS_PER_ROUND, SLOW_MS = 4, 50
OPTIONS = {
    "none": {},
    "clipnorm=1.0": {"clipnorm": 1.0},
    "clipvalue=0.1": {"clipvalue": 0.1},
    "global_clipnorm=1.0": {"global_clipnorm": 1.0},
    "weight_decay=1e-4": {"weight_decay": 1e-4},
    # tf_adagrad's opt-in: only the batch's rows decay (not a Keras argument).
    'weight_decay_rows="in_batch"': {"weight_decay": 1e-4, "weight_decay_rows": "in_batch"},
    "use_ema=True": {"use_ema": True},
    # The averages overwrite the weights once or twice a turn (4 or 8 steps:
    # whole periods), every row caught up first.
    "use_ema, ema_overwrite_frequency=4": {"use_ema": True, "ema_overwrite_frequency": 4},
    "gradient_accumulation_steps=2": {"gradient_accumulation_steps": 2},
    "loss_scale_factor=128": {"loss_scale_factor": 128.0},
    # tf_adagrad.Adagrad in tf_adagrad.LossScaleOptimizer, Keras' Adagrad in
    # Keras' (as compile() wraps it under mixed_float16).
    "LossScaleOptimizer": {},
}
# Keras' base class divides each gradient by loss_scale_factor with `/`,
# which tf.IndexedSlices lacks: Keras' Adagrad fails with it here.
# weight_decay_rows is tf_adagrad's own. Why each has no Keras column:
KERAS_CANNOT = {"loss_scale_factor=128": "fails", 'weight_decay_rows="in_batch"': "no such option"}


def make_optimizer(optimizer_class, option):
    optimizer = optimizer_class(LR, **OPTIONS[option])
    if option == "LossScaleOptimizer":
        ours = optimizer_class is tf_adagrad.Adagrad
        wrapper = tf_adagrad.LossScaleOptimizer if ours else keras.optimizers.LossScaleOptimizer
        return wrapper(optimizer)
    return optimizer


def option_case(rows, option):
    """Mean ms per fit() step with `option` for each optimizer."""
    rng = np.random.default_rng(0)
    num_examples = BATCH_SIZE * (STEPS_PER_ROUND + 1)
    ids = zipf_ids(rng, rows, num_examples).reshape(-1, 1)
    labels = rng.standard_normal((num_examples, 1)).astype(np.float32)
    classes = {"tf_adagrad": tf_adagrad.Adagrad}
    if rows <= KERAS_MAX_ROWS and option not in KERAS_CANNOT:
        classes["keras"] = keras.optimizers.Adagrad
    fits, slow = {}, {}
    for name, optimizer_class in classes.items():
        keras.utils.set_random_seed(0)
        model = fit_steps.embedding_model(rows)
        model.compile(optimizer=make_optimizer(optimizer_class, option), loss="mse")
        fits[name] = fit_on_batches(model, ids, labels, BATCH_SIZE)
        # One untimed step tells a slow case, which then times fewer steps.
        probe = fit_steps.StepTimes()
        fits[name](2, probe)
        if 1e3 * probe.times[-1] > SLOW_MS:
            slow[name] = SLOW_STEPS_PER_ROUND
    return timing.time_fits(
        fits,
        fit_steps.StepTimes,
        ROUNDS,
        STEPS_PER_ROUND,
        WARMUP_STEPS,
        slow_steps_per_round=slow,
        turn_means=True,
    )


def table_pass_ms(rows):
    """ms of one in-place read and write of a rows x 32 float32 table (the
    least a whole-table weight decay can take), the median of five."""
    table = np.ones((rows, fit_steps.EMBEDDING_DIM), np.float32)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        np.multiply(table, np.float32(0.999), out=table)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def goals(record):
    """(description, measured, bound, met) for each goal."""
    steps = record["steps"]
    small, large = str(min(TABLE_ROWS)), str(max(TABLE_ROWS))
    out = []
    for option in OPTIONS:
        if option == "weight_decay=1e-4":
            ratio = steps[large][option]["tf_adagrad"] / record["table_pass_ms"]
            out.append(
                (
                    f"{option}: step at {int(large):,} rows / one pass over the table",
                    ratio,
                    "<= 1.5",
                    ratio <= 1.5,
                )
            )
        else:
            growth = steps[large][option]["tf_adagrad"] / steps[small][option]["tf_adagrad"]
            out.append(
                (
                    f"{option}: step at {int(large):,} / {int(small):,} rows",
                    growth,
                    "<= 1.3",
                    growth <= 1.3,
                )
            )
        at_1m = steps[str(KERAS_MAX_ROWS)][option]
        if "keras" not in at_1m:
            continue
        speedup = at_1m["keras"] / at_1m["tf_adagrad"]
        out.append(
            (
                f"{option}: keras.optimizers.Adagrad / tf_adagrad at 1M rows",
                speedup,
                ">= 20",
                speedup >= 20,
            )
        )
    return out


def markdown(record):
    lines = [
        "| option | "
        + " | ".join(f"tf_adagrad {int(r):,} rows" for r in record["steps"])
        + f" | {int(max(TABLE_ROWS)):,} / {int(min(TABLE_ROWS)):,}"
        + f" | keras.optimizers.Adagrad {KERAS_MAX_ROWS:,} rows | ratio |",
        "| --- |" + " ---: |" * (len(record["steps"]) + 3),
    ]
    steps = record["steps"]
    small, large, mid = str(min(TABLE_ROWS)), str(max(TABLE_ROWS)), str(KERAS_MAX_ROWS)
    for option in OPTIONS:
        ours = [steps[r][option]["tf_adagrad"] for r in steps]
        keras_ms = steps[mid][option].get("keras")
        versus_keras = (
            f"{keras_ms:.2f} | {keras_ms / steps[mid][option]['tf_adagrad']:.1f}x"
            if keras_ms
            else f"{KERAS_CANNOT[option]} | n/a"
        )
        lines.append(
            f"| {option} | "
            + " | ".join(f"{ms:.2f}" for ms in ours)
            + f" | {steps[large][option]['tf_adagrad'] / steps[small][option]['tf_adagrad']:.2f}"
            + f" | {versus_keras} |"
        )
    return "\n".join(lines + ["", *goal_table(goals(record))]) + "\n"


def main():
    header = machine_header("Keras", keras.__version__)
    print(f"{header}; fit() steps with each option, mean ms per step", flush=True)
    record = {"steps": {}, "table_pass_ms": table_pass_ms(max(TABLE_ROWS))}
    for rows in TABLE_ROWS:
        record["steps"][str(rows)] = {}
        for option in OPTIONS:
            ms = option_case(rows, option)
            record["steps"][str(rows)][option] = ms
            keras_part = (
                f"  keras {ms['keras']:9.2f} ({ms['keras'] / ms['tf_adagrad']:6.1f}x)"
                if "keras" in ms
                else ""
            )
            print(
                f"{option:32s} {rows:>10,} rows  tf_adagrad {ms['tf_adagrad']:8.2f}{keras_part}",
                flush=True,
            )
            gc.collect()
    print(
        f"one read+write pass over the {max(TABLE_ROWS):,}-row table: {record['table_pass_ms']:.2f} ms"
    )
    print_goals(goals(record))
    write_results(
        "options",
        {**run_info(keras=keras.__version__), **record},
        f"{header}. {__doc__.splitlines()[0]}\n\n" + markdown(record),
    )


if __name__ == "__main__":
    main()
