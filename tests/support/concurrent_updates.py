"""Counts, on the parameter servers of a ParameterServerStrategy cluster,
whether every worker's sparse update of the same rows arrives: run by
tests/test_fault_tolerance.py as the coordinator of the cluster of
tests/support/cluster_server.py (2 workers, 2 parameter servers).

The model sums the Embedding rows of a batch that names the same HOT_ROWS
rows, each once, at every step: the loss is that sum, so every element of a
hot row gets the gradient 1.0 at every step, whatever the weights. The
accumulators start at 1.0, so after the run a hot row's accumulator is
exactly 1.0 plus the number of updates that reached it: nothing lost means
it equals 1.0 plus the steps applied (tf_keras: the optimizer's
`iterations`; Keras 3: the steps scheduled, all of which ran).
The table is split in 2 shards, one per parameter server, and both workers
run steps at once, so their updates of the same rows meet on the parameter
servers.

    concurrent_updates.py keras2 --cluster C --out O --optimizers A,B
        tf_keras `fit()` (TF_USE_LEGACY_KERAS=1) with each optimizer of
        OPTIMIZERS_KERAS2 in turn
    concurrent_updates.py keras3 --cluster C --out O
        a Keras 3 custom loop with tf_adagrad.Adagrad, its steps scheduled
        on the workers without waiting for one another

Writes {optimizer: result} as JSON to --out; a result holds the steps
asked and applied, the count the accumulators show (min and max over the
hot rows' elements), the updates lost, and the untouched rows' maximum
change; or {"error": traceback}.
"""

import argparse
import json
import os
import sys
import traceback

NUM_ROWS, DIM, HOT_ROWS, STEPS = 8192, 64, 4096, 80
LEARNING_RATE = 0.01


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("framework", choices=["keras2", "keras3"])
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--optimizers", default="")
    args = parser.parse_args()
    if args.framework == "keras2":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(json.loads(args.cluster)), rpc_layer="grpc"
    )
    strategy = tf.distribute.ParameterServerStrategy(
        resolver,
        variable_partitioner=tf.distribute.experimental.partitioners.FixedShardsPartitioner(2),
    )
    results = {}
    if args.framework == "keras2":
        for name in args.optimizers.split(","):
            results[name] = guarded(fit_keras2, strategy, name)
    else:
        results["tf_adagrad.Adagrad"] = guarded(custom_loop_keras3, strategy)
    with open(args.out, "w") as f:
        json.dump(results, f)


def guarded(function, *args):
    try:
        return function(*args)
    except Exception:  # noqa: BLE001 - reported to the test, case by case
        return {"error": traceback.format_exc()}


def hot_batch():
    import numpy as np

    return np.arange(HOT_ROWS, dtype=np.int32)[:, None]


def counts(table_shards, accumulator_shards, iterations, applied=None):
    """What the accumulators show against the steps applied (`applied`, by
    default the optimizer's `iterations`)."""
    import numpy as np

    table = np.concatenate([v.numpy() for v in table_shards])
    accumulator = np.concatenate([v.numpy() for v in accumulator_shards])
    hot, cold = accumulator[:HOT_ROWS], accumulator[HOT_ROWS:]
    arrived = hot - 1.0
    applied = int(iterations) if applied is None else applied
    return {
        "steps_asked": STEPS,
        "steps_applied": applied,
        "iterations": int(iterations),
        "min_count": float(arrived.min()),
        "max_count": float(arrived.max()),
        "lost_updates": float((applied - arrived).sum()),
        "elements": int(arrived.size),
        "exact_integers": bool(np.all(arrived == np.round(arrived))),
        "cold_rows_unchanged": bool(np.all(cold == 1.0)) and bool(np.all(np.isfinite(table))),
    }


# tf_keras' optimizers by name, and how they are made.
OPTIMIZERS_KERAS2 = {
    "tf_adagrad.keras2.Adagrad": lambda: keras2_class("Adagrad")(
        LEARNING_RATE, initial_accumulator_value=1.0
    ),
    "tf_adagrad.keras2.Adagrad(use_locking=True)": lambda: keras2_class("Adagrad")(
        LEARNING_RATE, initial_accumulator_value=1.0, use_locking=True
    ),
    "tf_adagrad.keras2.legacy.Adagrad": lambda: keras2_class("legacy.Adagrad")(
        LEARNING_RATE, initial_accumulator_value=1.0
    ),
    "tf_keras.optimizers.Adagrad": lambda: tf_keras_class("Adagrad")(
        LEARNING_RATE, initial_accumulator_value=1.0
    ),
    "tf_keras.optimizers.legacy.Adagrad": lambda: tf_keras_class("legacy.Adagrad")(
        LEARNING_RATE, initial_accumulator_value=1.0
    ),
}


def keras2_class(path):
    import tf_adagrad.keras2

    module = tf_adagrad.keras2
    for part in path.split("."):
        module = getattr(module, part)
    return module


def tf_keras_class(path):
    import tf_keras

    module = tf_keras.optimizers
    for part in path.split("."):
        module = getattr(module, part)
    return module


def fit_keras2(strategy, name):
    import tensorflow as tf
    import tf_keras

    ids = hot_batch()
    with strategy.scope():
        inputs = tf_keras.Input((1,), dtype="int32")
        table = tf_keras.layers.Embedding(
            NUM_ROWS, DIM, embeddings_initializer="zeros", name="table"
        )
        summed = tf_keras.layers.Lambda(lambda rows: tf.reduce_sum(rows, axis=[1, 2]))(
            table(inputs)
        )
        model = tf_keras.Model(inputs, summed)
        # The loss is the sum itself: each hot element's gradient is 1.0.
        model.compile(
            optimizer=OPTIMIZERS_KERAS2[name](),
            loss=lambda y_true, y_pred: tf.reduce_sum(y_pred),
        )

    def worker_dataset(context):
        del context  # every worker the same batch, over and over
        return tf.data.Dataset.from_tensors((ids, tf.zeros([HOT_ROWS]))).repeat()

    model.fit(
        tf_keras.utils.experimental.DatasetCreator(worker_dataset),
        epochs=1,
        steps_per_epoch=STEPS,
        verbose=0,
    )
    optimizer = model.optimizer
    shards = table.weights  # tf_keras lists each shard of the table
    if isinstance(optimizer, tf_keras.optimizers.legacy.Optimizer):
        accumulators = [optimizer.get_slot(shard, "accumulator") for shard in shards]
    else:  # kept in variable order; no public accessor
        accumulators = [
            optimizer._accumulators[optimizer._index_dict[optimizer._var_key(shard)]]
            for shard in shards
        ]
    return counts(shards, accumulators, optimizer.iterations.numpy())


def custom_loop_keras3(strategy):
    import keras
    import tensorflow as tf

    import tf_adagrad

    ids = tf.constant(hot_batch())
    with strategy.scope():
        table = keras.layers.Embedding(NUM_ROWS, DIM, embeddings_initializer="zeros")
        table.build((None, 1))
        optimizer = tf_adagrad.Adagrad(LEARNING_RATE, initial_accumulator_value=1.0)
        optimizer.build(table.trainable_variables)

    @tf.function
    def train_step():
        def step_fn():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(table(ids))
            grads = tf_adagrad.sharded_gradients(tape, loss, table.trainable_variables)
            optimizer.apply(grads, table.trainable_variables)

        strategy.run(step_fn)

    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    for _ in range(STEPS):  # not joined one by one: both workers at once
        coordinator.schedule(train_step)
    # Every scheduled step ran once (join raises otherwise). Keras 3's
    # `iterations` is no count of them here: its `assign_add` reads, adds
    # and assigns, so two workers' increments can overwrite each other.
    coordinator.join()
    embeddings = table.embeddings.value
    accumulator = [v for v in optimizer.variables if "accumulator" in v.path][0].value
    return counts(
        embeddings.variables, accumulator.variables, optimizer.iterations.numpy(), applied=STEPS
    )


if __name__ == "__main__":
    sys.exit(main())
