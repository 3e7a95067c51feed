"""A recommender trained with `model.fit()`: tf_adagrad.Adagrad side by side
with keras.optimizers.Adagrad.

The model is the usual click-through shape: three `Embedding` tables (users,
items with 1,000,000 rows, item categories) feeding an MLP with a sigmoid
click output. The data are synthetic interactions drawn from a hidden
logistic model (popular items and active users follow Zipf laws; the click
probability depends on the category, the user and a user-item affinity), so
there is a signal to learn, and the best possible AUC is known.

The same model, with the same initial weights, is trained twice on the same
data in the same order: once with `tf_adagrad.Adagrad`, once with
`keras.optimizers.Adagrad`. Both use the same learning rate, run without XLA
(`jit_compile=False`; custom ops cannot be compiled by XLA) and with the
same callbacks. Time per step comes from a callback, after the first
`WARMUP_STEPS` steps (tracing and first-call costs) are left out.

Keras 3's Adagrad reads the whole 1M-row table and its accumulator every
step and computes over all of it (`sqrt(accumulator + epsilon)`), then writes
the rows in the batch; tf_adagrad reads and writes only the rows in the
batch, in place. The results are not bit-identical: for an index that
appears several times in a batch, tf_adagrad adds the square of the summed
gradient to the accumulator (the dense-equivalent update), Keras' sparse path
the sum of the squares. The demo therefore checks that the two models
match on held-out data within bounds that allow for this (`MAX_AUC_GAP`,
`MAX_LOSS_GAP`, `MAX_MEAN_PROBABILITY_GAP`) and that both learned (a held-out
AUC well above chance); it exits with an error if not.

With `--rowwise`, a third run trains with `tf_adagrad.RowwiseAdagrad` (one
accumulator per table row, another algorithm): it must learn too, and the
table shows its held-out AUC and its accumulators' bytes beside the others.

Usage:
    python examples/recommender.py              # the full demo (`make demo`)
    python examples/recommender.py --quick      # a short run, for tests
    python examples/recommender.py --mirrored 2 # under MirroredStrategy on 2
        replicas (GPUs if there are that many, otherwise logical CPUs)
    python examples/recommender.py --rowwise    # also tf_adagrad.RowwiseAdagrad
"""

import argparse
import os
import sys
import time

# Hide TF start-up logs (such as cuInit failing on a machine without a GPU).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_adagrad  # noqa: E402

NUM_USERS, NUM_ITEMS, NUM_CATEGORIES = 20_000, 1_000_000, 1_000
USER_DIM, ITEM_DIM, CATEGORY_DIM = 16, 32, 8
HIDDEN_DIM = 8  # of the hidden user-item affinity that generates the clicks
BATCH_SIZE = 1024
LEARNING_RATE = 0.2
SEED = 0
WARMUP_STEPS = 10

# Training examples, epochs, and the held-out AUC that shows a run learned
# (chance is 0.5; the best possible is printed, about 0.88), for each mode.
FULL = (400_000, 2, 0.75)
QUICK = (60_000, 1, 0.65)
HELD_OUT = 50_000

# How close the two models must be. The only difference in their math is
# the duplicate-index update explained above. On the full run it moves the
# held-out AUC and loss by about 1e-4, and the held-out click probabilities by
# 0.002 on average (popular items, many times in a batch, get different
# accumulators). Training tf_adagrad with a 1.5x learning rate instead moves
# the probabilities by 0.011, with initial_accumulator_value 0.5 instead of
# 0.1 by 0.028.
MAX_AUC_GAP = 0.005
MAX_LOSS_GAP = 0.005
MAX_MEAN_PROBABILITY_GAP = 0.01


def hidden_click_model(rng):
    """The hidden truth: per-category and per-user biases, and latent vectors
    whose dot product is the user-item affinity. Items inherit most of their
    latent vector from their category, so it can be learned from few clicks."""
    item_category = rng.integers(0, NUM_CATEGORIES, NUM_ITEMS).astype(np.int32)
    category_bias = rng.normal(0.0, 1.5, NUM_CATEGORIES)
    category_vec = rng.normal(0.0, 1.0, (NUM_CATEGORIES, HIDDEN_DIM))
    item_vec = (
        category_vec[item_category] + 0.5 * rng.normal(0.0, 1.0, (NUM_ITEMS, HIDDEN_DIM))
    ).astype(np.float32)
    user_bias = rng.normal(0.0, 1.0, NUM_USERS)
    user_vec = rng.normal(0.0, 1.0, (NUM_USERS, HIDDEN_DIM)).astype(np.float32)
    # Popularity ranks of users and items: popular ids are spread over the
    # tables, not packed at their start.
    user_by_rank = rng.permutation(NUM_USERS).astype(np.int32)
    item_by_rank = rng.permutation(NUM_ITEMS).astype(np.int32)
    return item_category, category_bias, item_vec, user_bias, user_vec, user_by_rank, item_by_rank


def interactions(rng, truth, num_examples):
    """Zipf-distributed users and items, and clicks drawn from the truth."""
    item_category, category_bias, item_vec, user_bias, user_vec, user_by_rank, item_by_rank = truth
    users = user_by_rank[(rng.zipf(1.2, num_examples) - 1) % NUM_USERS]
    items = item_by_rank[(rng.zipf(1.1, num_examples) - 1) % NUM_ITEMS]
    categories = item_category[items]
    affinity = np.einsum("ij,ij->i", user_vec[users], item_vec[items]) / np.sqrt(HIDDEN_DIM)
    logits = category_bias[categories] + user_bias[users] + affinity - 0.5
    probability = 1.0 / (1.0 + np.exp(-logits))
    clicks = (rng.random(num_examples) < probability).astype(np.float32)
    features = {"user": users, "item": items, "category": categories}
    return features, clicks, probability


def exact_auc(labels, scores):
    """The AUC by ranks (Mann-Whitney), ties counted half."""
    ranks = np.empty(len(scores))
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # Average ranks over ties.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    positives = labels > 0.5
    num_pos, num_neg = positives.sum(), (~positives).sum()
    return (ranks[positives].sum() - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg)


def item_table(item_dtype=None):
    """The item `Embedding`, float32 or of `item_dtype` (such as
    `"bfloat16"`). A 16-bit table draws the float32 table's initial weights
    (its initializer, made here as the float32 table's would be, takes the
    same seed) and rounds them to nearest."""
    if item_dtype is None:
        return keras.layers.Embedding(NUM_ITEMS, ITEM_DIM, name="item_table")
    uniform = keras.initializers.get("uniform")  # Embedding's default

    def drawn_in_float32(shape, dtype=None):
        return keras.ops.cast(uniform(shape, dtype="float32"), dtype)

    return keras.layers.Embedding(
        NUM_ITEMS,
        ITEM_DIM,
        name="item_table",
        dtype=item_dtype,
        embeddings_initializer=drawn_in_float32,
    )


def build_model(item_dtype=None):
    """The click model; `item_dtype` as in `item_table` (the other weights
    are float32, and the same whatever the item table's dtype)."""
    inputs = {
        name: keras.Input((), dtype="int32", name=name) for name in ("user", "item", "category")
    }
    embedded = [
        keras.layers.Embedding(NUM_USERS, USER_DIM, name="user_table")(inputs["user"]),
        item_table(item_dtype)(inputs["item"]),
        keras.layers.Embedding(NUM_CATEGORIES, CATEGORY_DIM, name="category_table")(
            inputs["category"]
        ),
    ]
    x = keras.layers.Concatenate()(embedded)
    x = keras.layers.Dense(64, activation="relu")(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    click = keras.layers.Dense(1, activation="sigmoid", name="click")(x)
    return keras.Model(inputs, click, name="recommender")


class StepTimer(keras.callbacks.Callback):
    """Wall time of each training step, from the end of one to the end of
    the next (defining on_train_batch_end makes Keras call it in step, after
    the step's results are ready). Steps before `warmup` are left out."""

    def __init__(self, warmup):
        super().__init__()
        self.warmup = warmup
        self.step_times = []
        self._steps_seen = 0
        self._last_end = None

    def on_epoch_begin(self, epoch, logs=None):
        self._last_end = None

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self._last_end is not None and self._steps_seen >= self.warmup:
            self.step_times.append(now - self._last_end)
        self._last_end = now
        self._steps_seen += 1


def train(name, make_optimizer, strategy, train_data, held_out, epochs, item_dtype=None):
    print(f"\n== {name}", flush=True)
    keras.utils.set_random_seed(SEED)  # the same initial weights for both
    with strategy.scope():
        model = build_model(item_dtype)
        model.compile(
            optimizer=make_optimizer(),
            loss="binary_crossentropy",
            metrics=[keras.metrics.AUC(name="auc")],
            jit_compile=False,
        )
    timer = StepTimer(WARMUP_STEPS)
    features, clicks = train_data
    history = model.fit(
        features, clicks, batch_size=BATCH_SIZE, epochs=epochs, shuffle=False, callbacks=[timer]
    )
    held_out_features, held_out_clicks = held_out
    scores = model.predict(held_out_features, batch_size=8192, verbose=0)[:, 0].astype(np.float64)
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    held_out_loss = -np.mean(
        held_out_clicks * np.log(clipped) + (1 - held_out_clicks) * np.log(1 - clipped)
    )
    step_time = float(np.mean(timer.step_times))
    accumulator_bytes = sum(
        int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
        for v in model.optimizer.variables
        if "accumulator" in v.path
    )
    return {
        "time per step (ms)": 1e3 * step_time,
        "examples/s": BATCH_SIZE / step_time,
        "final train loss": history.history["loss"][-1],
        "held-out loss": held_out_loss,
        "held-out AUC": exact_auc(held_out_clicks, scores),
        "accumulator bytes": accumulator_bytes,
        "held-out scores": scores,
        "model": model,
    }


def distribution_strategy(replicas):
    """MirroredStrategy over `replicas` GPUs, or logical CPUs if the machine
    has fewer GPUs than that; the default strategy if `replicas` is 0. Also
    says which, in words."""
    if not replicas:
        return tf.distribute.get_strategy(), "no distribution strategy"
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) >= replicas:
        devices = [f"/gpu:{i}" for i in range(replicas)]
    else:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
        )
        devices = [f"/cpu:{i}" for i in range(replicas)]
    return tf.distribute.MirroredStrategy(devices), f"MirroredStrategy over {', '.join(devices)}"


# Column headings of the table, by optimizer.
COLUMNS = {
    "tf_adagrad.Adagrad": "tf_adagrad",
    "keras.optimizers.Adagrad": "keras",
    "tf_adagrad.RowwiseAdagrad": "rowwise",
}


def print_table(results, best_auc):
    ours, theirs = results["tf_adagrad.Adagrad"], results["keras.optimizers.Adagrad"]
    print()
    print(f"{'':22}" + "".join(f"{COLUMNS[name]:>14}" for name in results))
    for key, fmt in (
        ("time per step (ms)", "14.2f"),
        ("examples/s", "14,.0f"),
        ("final train loss", "14.4f"),
        ("held-out loss", "14.4f"),
        ("held-out AUC", "14.4f"),
        ("accumulator bytes", "14,d"),
    ):
        print(f"{key:22}" + "".join(f"{result[key]:{fmt}}" for result in results.values()))
    speedup = theirs["time per step (ms)"] / ours["time per step (ms)"]
    print(
        f"speed-up: {speedup:.1f}x per step; best possible held-out AUC (true click probabilities): {best_auc:.4f}"
    )


def quality_problems(results, min_auc):
    ours, theirs = results["tf_adagrad.Adagrad"], results["keras.optimizers.Adagrad"]
    problems = []
    for name, result in results.items():
        if not result["held-out AUC"] >= min_auc:
            problems.append(
                f"{name} did not learn: held-out AUC {result['held-out AUC']:.4f} < {min_auc}"
            )
    auc_gap = abs(ours["held-out AUC"] - theirs["held-out AUC"])
    if not auc_gap <= MAX_AUC_GAP:
        problems.append(f"held-out AUCs differ by {auc_gap:.4f} (allowed: {MAX_AUC_GAP})")
    loss_gap = abs(ours["held-out loss"] - theirs["held-out loss"])
    if not loss_gap <= MAX_LOSS_GAP:
        problems.append(f"held-out losses differ by {loss_gap:.4f} (allowed: {MAX_LOSS_GAP})")
    probability_gap = np.mean(np.abs(ours["held-out scores"] - theirs["held-out scores"]))
    if not probability_gap <= MAX_MEAN_PROBABILITY_GAP:
        problems.append(
            f"held-out click probabilities differ by {probability_gap:.4f} on average "
            f"(allowed: {MAX_MEAN_PROBABILITY_GAP})"
        )
    return problems, probability_gap


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="train on fewer examples (for tests)")
    parser.add_argument(
        "--mirrored",
        type=int,
        default=0,
        metavar="N",
        help="train under MirroredStrategy on N replicas",
    )
    parser.add_argument(
        "--rowwise",
        action="store_true",
        help="also train with tf_adagrad.RowwiseAdagrad (one accumulator per table row)",
    )
    args = parser.parse_args(argv)
    if args.mirrored < 0:
        parser.error(f"--mirrored takes a number of replicas, got {args.mirrored}")
    start = time.perf_counter()
    strategy, strategy_description = distribution_strategy(args.mirrored)
    num_examples, epochs, min_auc = QUICK if args.quick else FULL

    rng = np.random.default_rng(SEED)
    truth = hidden_click_model(rng)
    features, clicks, _ = interactions(rng, truth, num_examples)
    held_out_features, held_out_clicks, held_out_probability = interactions(rng, truth, HELD_OUT)
    print(
        f"{num_examples:,} training interactions ({clicks.mean():.1%} clicks), {HELD_OUT:,} held out; "
        f"tables {NUM_USERS:,}x{USER_DIM} users, {NUM_ITEMS:,}x{ITEM_DIM} items, "
        f"{NUM_CATEGORIES:,}x{CATEGORY_DIM} categories; batch {BATCH_SIZE}, {epochs} epoch(s), "
        f"learning rate {LEARNING_RATE}; "
        f"{strategy_description}"
    )

    optimizers = {
        "tf_adagrad.Adagrad": lambda: tf_adagrad.Adagrad(LEARNING_RATE),
        "keras.optimizers.Adagrad": lambda: keras.optimizers.Adagrad(LEARNING_RATE),
    }
    if args.rowwise:
        optimizers["tf_adagrad.RowwiseAdagrad"] = lambda: tf_adagrad.RowwiseAdagrad(LEARNING_RATE)
    results = {
        name: train(
            name, make, strategy, (features, clicks), (held_out_features, held_out_clicks), epochs
        )
        for name, make in optimizers.items()
    }
    print_table(results, exact_auc(held_out_clicks, held_out_probability))
    print(f"demo time: {time.perf_counter() - start:.0f} s")
    problems, probability_gap = quality_problems(results, min_auc)
    print(f"held-out click probabilities differ by {probability_gap:.4f} on average")
    if problems:
        print(
            "DEMO FAILED: the two optimizers' models do not match:",
            *problems,
            sep="\n  ",
            file=sys.stderr,
        )
        return 1
    print(
        "quality matches: the models trained with tf_adagrad.Adagrad and keras.optimizers.Adagrad agree."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
