"""A TensorFlow Recommenders two-tower retrieval model trained with
tf_adagrad's tf_keras optimizers.

TensorFlow Recommenders (TFRS) is built on tf_keras (Keras 2), so this runs
with `TF_USE_LEGACY_KERAS=1`, set below before TensorFlow is imported; then
`tf.keras` is tf_keras, and `tf_adagrad.keras2` holds the drop-in
replacements for its Adagrads.

The model: a user tower and an item tower (an `Embedding` table followed by
a `Dense` layer each) whose dot product scores a (user, item) pair, trained
by `tfrs.tasks.Retrieval` (a softmax over the items of the batch) and
evaluated by `tfrs.metrics.FactorizedTopK`: for each held-out interaction,
is its item among the k best-scored of all items (recall@k)?

The data are synthetic, with a known structure: users and items belong to
latent clusters; a user picks, with probability IN_CLUSTER, an item of its
own cluster (popular ones more often: a Zipf law within each cluster),
otherwise an item from the whole catalogue (again by popularity). A model
that learns the clusters and the popularity reaches a recall@k far above
chance (k / number of items); the best possible recall@k, that of the true
probabilities, is printed as well.

The same model, from the same initial weights, on the same data in the same
order, is trained three times:

- with `tf_adagrad.keras2.Adagrad` (drop-in for `tf.keras.optimizers.Adagrad`,
  epsilon inside the square root),
- with `tf.keras.optimizers.Adagrad` itself, at the same learning rate,
- with `tfrs.experimental.optimizers.CompositeOptimizer`:
  `tf_adagrad.keras2.legacy.Adagrad` (drop-in for
  `tf.keras.optimizers.legacy.Adagrad`) on the two embedding tables, and
  `tf.keras.optimizers.legacy.Adam` on the dense layers.

Time per step comes from a callback, over each batch of `fit()` after the
first WARMUP_STEPS (tracing and first-call costs).

Usage:
    python examples/tfrs_retrieval.py           # the full run
    python examples/tfrs_retrieval.py --quick   # a small, fast run (tests)
"""

import os

# TFRS needs tf.keras to be tf_keras (Keras 2); TensorFlow reads this
# variable once, when it is imported.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

import tf_adagrad.keras2  # noqa: E402

SEED = 0
EMBEDDING_DIM = 32
IN_CLUSTER = 0.8
ZIPF_EXPONENT = 1.0
KS = (10, 50, 100)
ADAGRAD_LEARNING_RATE = 0.1
ADAM_LEARNING_RATE = 0.001
WARMUP_STEPS = 5


class Sizes:
    """The data's and the run's sizes, for each mode."""

    def __init__(self, users, items, clusters, interactions, held_out, batch_size, epochs):
        self.users, self.items, self.clusters = users, items, clusters
        # `held_out` of the `interactions` are kept for evaluation.
        self.interactions, self.held_out = interactions, held_out
        self.batch_size, self.epochs = batch_size, epochs


FULL = Sizes(
    users=100_000,
    items=20_000,
    clusters=50,
    interactions=1_000_000,
    held_out=20_000,
    batch_size=1024,
    epochs=2,
)
QUICK = Sizes(
    users=2_000,
    items=1_000,
    clusters=10,
    interactions=40_000,
    held_out=4_000,
    batch_size=512,
    epochs=2,
)


def item_probabilities(sizes, rng):
    """The hidden truth: each user's cluster, and for each cluster the
    probability of each item being picked by one of its users."""
    user_cluster = rng.integers(0, sizes.clusters, sizes.users)
    item_cluster = rng.integers(0, sizes.clusters, sizes.items)
    # Popularity: a Zipf law over a random order of the items.
    popularity = 1.0 / (1.0 + rng.permutation(sizes.items)) ** ZIPF_EXPONENT
    overall = popularity / popularity.sum()
    probabilities = np.empty((sizes.clusters, sizes.items))
    for cluster in range(sizes.clusters):
        in_cluster = np.where(item_cluster == cluster, popularity, 0.0)
        probabilities[cluster] = (
            IN_CLUSTER * in_cluster / in_cluster.sum() + (1 - IN_CLUSTER) * overall
        )
    return user_cluster, probabilities


def draw_interactions(sizes, rng, user_cluster, probabilities):
    """(user, item) pairs: users uniformly, items from their cluster's law."""
    users = rng.integers(0, sizes.users, sizes.interactions)
    items = np.empty(sizes.interactions, np.int64)
    for cluster in range(sizes.clusters):
        picks = np.flatnonzero(user_cluster[users] == cluster)
        items[picks] = rng.choice(sizes.items, size=len(picks), p=probabilities[cluster])
    return users, items


def best_possible_recall(probabilities, user_cluster, users, k):
    """The recall@k of ranking each user's items by their true probability:
    the mass of the k most probable items of the user's cluster, averaged
    over the interactions."""
    top_k_mass = -np.sort(-probabilities, axis=1)[:, :k].sum(axis=1)
    return float(top_k_mass[user_cluster[users]].mean())


class TwoTowerModel(tfrs.Model):
    """User and item towers (Embedding, then Dense), trained for retrieval."""

    def __init__(self, sizes):
        super().__init__()
        self.user_tower = tf.keras.Sequential(
            [
                tf.keras.layers.Embedding(sizes.users, EMBEDDING_DIM),
                tf.keras.layers.Dense(EMBEDDING_DIM),
            ]
        )
        self.item_tower = tf.keras.Sequential(
            [
                tf.keras.layers.Embedding(sizes.items, EMBEDDING_DIM),
                tf.keras.layers.Dense(EMBEDDING_DIM),
            ]
        )
        # The top-k metric is computed after training (held_out_recall), not
        # attached here: fit() would show it as zeros, since scoring every
        # item at each step is not worth it.
        self.task = tfrs.tasks.Retrieval()

    def compute_loss(self, features, training=False):
        # The other items of the batch are the negatives, drawn by popularity:
        # passing each item's share of the interactions corrects for that, so
        # that the scores rank by probability, not by popularity-adjusted
        # affinity.
        return self.task(
            self.user_tower(features["user"]),
            self.item_tower(features["item"]),
            candidate_sampling_probability=features["item_share"],
        )

    def embedding_variables(self):
        return [
            self.user_tower.layers[0].embeddings,
            self.item_tower.layers[0].embeddings,
        ]

    def dense_variables(self):
        return self.user_tower.layers[1].trainable_variables + (
            self.item_tower.layers[1].trainable_variables
        )


class StepTimes(tf.keras.callbacks.Callback):
    """Each fit() batch's wall time, from its start to its end, after the
    first WARMUP_STEPS."""

    def __init__(self):
        super().__init__()
        self.times = []
        self._batches = 0

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self._batches > WARMUP_STEPS:
            self.times.append(time.perf_counter() - self._start)


def composite_optimizer(model):
    return tfrs.experimental.optimizers.CompositeOptimizer(
        [
            (
                tf_adagrad.keras2.legacy.Adagrad(ADAGRAD_LEARNING_RATE),
                model.embedding_variables,
            ),
            (tf.keras.optimizers.legacy.Adam(ADAM_LEARNING_RATE), model.dense_variables),
        ]
    )


# Column name -> (what it is, a function of the model returning the optimizer).
OPTIMIZERS = {
    "keras2.Adagrad": (
        "tf_adagrad.keras2.Adagrad",
        lambda model: tf_adagrad.keras2.Adagrad(ADAGRAD_LEARNING_RATE),
    ),
    "tf.keras Adagrad": (
        "tf.keras.optimizers.Adagrad",
        lambda model: tf.keras.optimizers.Adagrad(ADAGRAD_LEARNING_RATE),
    ),
    "composite": (
        "CompositeOptimizer: tf_adagrad.keras2.legacy.Adagrad on the embeddings, "
        "tf.keras.optimizers.legacy.Adam on the dense layers",
        composite_optimizer,
    ),
}


def train_and_evaluate(sizes, make_optimizer, train, held_out):
    """Trains a fresh model (same seed, so the same initial weights) and
    returns its figures: median ms per step and the held-out recall@k for
    each k."""
    tf.keras.utils.set_random_seed(SEED)
    model = TwoTowerModel(sizes)
    model.compile(optimizer=make_optimizer(model))
    timer = StepTimes()
    model.fit(train, epochs=sizes.epochs, callbacks=[timer])
    figures = {"time per step (ms)": 1e3 * statistics.median(timer.times)}
    return figures | held_out_recall(model, sizes, held_out)


def held_out_recall(model, sizes, held_out):
    """recall@k for each k: the share of held-out interactions whose item is
    among the k items the model scores highest for their user."""
    candidates = tf.data.Dataset.range(sizes.items).batch(4096).map(model.item_tower)
    top_k = tfrs.metrics.FactorizedTopK(candidates=candidates, ks=KS)
    for batch in held_out:
        top_k.update_state(model.user_tower(batch["user"]), model.item_tower(batch["item"]))
    return {f"recall@{k}": float(recall) for k, recall in zip(KS, top_k.result())}


def print_table(results, chance, best):
    """Each optimizer's figures; `ratio` is tf.keras.optimizers.Adagrad's
    figure divided by tf_adagrad's."""
    ours, theirs, composite = results
    print(f"\n{'':20s}{ours:>16s}{theirs:>18s}{'ratio':>8s}{composite:>12s}")
    for row in results[ours]:
        spec = ".4f" if row.startswith("recall") else ".2f"
        values = [results[name][row] for name in results]
        print(
            f"{row:20s}{values[0]:>16{spec}}{values[1]:>18{spec}}"
            f"{values[1] / values[0]:>8.3f}{values[2]:>12{spec}}"
        )
    for k in KS:
        print(f"recall@{k}: chance {chance[k]:.4f}, best possible {best[k]:.4f}")
    for name, (description, _) in OPTIMIZERS.items():
        print(f"{name}: {description}")
    print(f"ratio: {theirs} / {ours}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    sizes = QUICK if parser.parse_args().quick else FULL

    rng = np.random.default_rng(SEED)
    user_cluster, probabilities = item_probabilities(sizes, rng)
    users, items = draw_interactions(sizes, rng, user_cluster, probabilities)
    item_share = np.bincount(items[sizes.held_out :], minlength=sizes.items) / (
        sizes.interactions - sizes.held_out
    )
    dataset = tf.data.Dataset.from_tensor_slices(
        {"user": users, "item": items, "item_share": item_share[items].astype(np.float32)}
    )
    train = dataset.skip(sizes.held_out).batch(sizes.batch_size).cache()
    held_out = dataset.take(sizes.held_out).batch(4096).cache()
    chance = {k: k / sizes.items for k in KS}
    best = {
        k: best_possible_recall(probabilities, user_cluster, users[: sizes.held_out], k) for k in KS
    }
    print(
        f"{sizes.interactions - sizes.held_out:,} training interactions, {sizes.held_out:,} held "
        f"out; {sizes.users:,} users, {sizes.items:,} items in {sizes.clusters} clusters; "
        f"embeddings {EMBEDDING_DIM} wide; batch {sizes.batch_size}, {sizes.epochs} epoch(s); "
        f"Adagrad learning rate {ADAGRAD_LEARNING_RATE}",
        flush=True,
    )

    results = {}
    for name, (description, make_optimizer) in OPTIMIZERS.items():
        print(f"\n{description}", flush=True)
        results[name] = train_and_evaluate(sizes, make_optimizer, train, held_out)
    print_table(results, chance, best)


if __name__ == "__main__":
    main()
