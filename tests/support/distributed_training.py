"""Training scenarios under tf.distribute, one per subcommand, each run in
its own process by tests/test_distribute.py (a strategy's devices and
cluster are fixed when TensorFlow starts).

Every scenario trains the same small recommender-style model (an Embedding
table, whose gradient is a tf.IndexedSlices, and Dense layers) from the same
initial weights on the same global batches, distributed and on one device,
and writes both results to an .npz file for the test to compare.
"""

import argparse
import collections
import json
import os
import sys

import scenario_model  # tests/support/, beside this file

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NUM_ROWS, FIELDS, DIM, GLOBAL_BATCH, STEPS = 2000, 4, 8, 32, 6
LEARNING_RATE = 0.05


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--out")
    parser.add_argument("--out-dir", help="the coordinator's: one .npz per optimizer")
    parser.add_argument("--cluster", help="JSON cluster spec")
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--checkpoint-dir")
    parser.add_argument(
        "--optimizers",
        default="Adagrad",
        help="the coordinator's: names from OPTIMIZERS, by commas",
    )
    args = parser.parse_args()
    SCENARIOS[args.scenario](args)


# tf_adagrad's optimizers by class name, and the op each sends sparse
# gradients to.
OPTIMIZERS = {
    "Adagrad": "sparse_apply_adagrad",
    "RowwiseAdagrad": "sparse_rowwise_apply_adagrad",
}


def make_optimizer(name):
    import tf_adagrad

    return getattr(tf_adagrad, name)(LEARNING_RATE)


# Imported inside the scenarios: TF_CONFIG and the logical devices must be
# set before TensorFlow starts.


def batches():
    """STEPS global batches; ids from a Zipf law, so many repeat in a batch."""
    import numpy as np

    rng = np.random.default_rng(7)
    x = np.minimum(rng.zipf(1.3, (STEPS * GLOBAL_BATCH, FIELDS)) - 1, NUM_ROWS - 1).astype(np.int32)
    y = ((x % 3).sum(axis=1, keepdims=True) > FIELDS).astype(np.float32)
    return x, y


def build_model():
    import keras

    return scenario_model.build_model(keras, NUM_ROWS, FIELDS, DIM, hidden=16)


def initial_weights():
    import keras

    return scenario_model.initial_weights(keras, build_model)


# Each optimizer's calls of its sparse op (at trace time), by optimizer name,
# once count_sparse_updates() has run.
SPARSE_CALLS = collections.Counter()


def count_sparse_updates():
    """Makes each of tf_adagrad's sparse ops count its calls in SPARSE_CALLS."""
    import tf_adagrad

    def counting(optimizer_name, sparse_apply):
        def counted(*args, **kwargs):
            SPARSE_CALLS[optimizer_name] += 1
            return sparse_apply(*args, **kwargs)

        return counted

    for optimizer_name, op_name in OPTIMIZERS.items():
        setattr(tf_adagrad.ops, op_name, counting(optimizer_name, getattr(tf_adagrad.ops, op_name)))


def per_example_loss(model, x, y):
    import tensorflow as tf

    return tf.keras.losses.binary_crossentropy(y, model(x, training=True))


def distributed_train_step(strategy, model, optimizer):
    """One synchronous step per call on the next batch of a distributed
    iterator, the loss averaged over the global batch."""
    import tensorflow as tf

    @tf.function
    def train_step(iterator):
        def step_fn(xb, yb):
            with tf.GradientTape() as tape:
                loss = tf.nn.compute_average_loss(
                    per_example_loss(model, xb, yb), global_batch_size=GLOBAL_BATCH
                )
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)

        strategy.run(step_fn, args=next(iterator))

    return train_step


def train_custom_loop_single(weights, x, y, steps=STEPS, optimizer_name="Adagrad"):
    """The reference: plain training on one device."""
    import tensorflow as tf

    model = build_model()
    model.set_weights(weights)
    optimizer = make_optimizer(optimizer_name)

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(per_example_loss(model, xb, yb))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)

    for step in range(steps):
        rows = slice(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)
        train_step(x[rows], y[rows])
    return model.get_weights()


def fit(weights, x, y, strategy):
    """fit() from `weights`; the model and optimizer made in `strategy`'s scope."""
    import tf_adagrad

    with strategy.scope():
        model = build_model()
        model.set_weights(weights)
        model.compile(optimizer=tf_adagrad.Adagrad(LEARNING_RATE), loss="binary_crossentropy")
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    model.fit(dataset, epochs=1, verbose=0)
    return model.get_weights()


def save(out, **groups):
    import numpy as np

    arrays = {}
    for group, values in groups.items():
        if isinstance(values, dict):
            arrays.update({f"{group}:{k}": np.asarray(v) for k, v in values.items()})
        else:
            arrays.update({f"{group}:{i}": np.asarray(v) for i, v in enumerate(values)})
    np.savez(out, **arrays)


def mirrored(args):
    """MirroredStrategy over 2 logical CPUs: fit(), a custom loop, and a
    CheckpointManager save and restore halfway through the custom loop; and
    tests/test_rowwise_optimizer.py's fit() with RowwiseAdagrad, mirrored
    and on one device."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    import keras

    import tf_adagrad

    count_sparse_updates()
    x, y = batches()
    weights = initial_weights()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    fit_single = fit(weights, x, y, tf.distribute.get_strategy())
    fit_mirrored = fit(weights, x, y, strategy)
    fit_sparse_calls = SPARSE_CALLS["Adagrad"]

    def custom_loop(first_step, last_step, checkpoint_dir):
        """Steps [first_step, last_step) in the strategy; restores the latest
        checkpoint first if there is one and saves one at the end."""
        with strategy.scope():
            model = build_model()
            model.set_weights(weights)
            optimizer = tf_adagrad.Adagrad(LEARNING_RATE)
            optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=1)
        if manager.latest_checkpoint:
            checkpoint.restore(manager.latest_checkpoint).assert_consumed()

        train_step = distributed_train_step(strategy, model, optimizer)

        rows = slice(first_step * GLOBAL_BATCH, last_step * GLOBAL_BATCH)
        dataset = tf.data.Dataset.from_tensor_slices((x[rows], y[rows])).batch(GLOBAL_BATCH)
        iterator = iter(strategy.experimental_distribute_dataset(dataset))
        for _ in range(first_step, last_step):
            train_step(iterator)
        manager.save()
        return model.get_weights() + [v.numpy() for v in optimizer.variables]

    straight = custom_loop(0, STEPS, os.path.join(args.checkpoint_dir, "straight"))
    custom_sparse_calls = SPARSE_CALLS["Adagrad"] - fit_sparse_calls
    custom_loop(0, STEPS // 2, os.path.join(args.checkpoint_dir, "split"))
    resumed = custom_loop(STEPS // 2, STEPS, os.path.join(args.checkpoint_dir, "split"))
    save(
        args.out,
        clipped_fit_ours=clipped_fit(strategy, tf_adagrad.Adagrad),
        clipped_fit_keras=clipped_fit(strategy, keras.optimizers.Adagrad),
        unclipped_fit=clipped_fit(strategy, tf_adagrad.Adagrad, global_clipnorm=None),
        decayed_fit_ours=clipped_fit(strategy, tf_adagrad.Adagrad, None, weight_decay=0.05),
        decayed_fit_keras=clipped_fit(strategy, keras.optimizers.Adagrad, None, weight_decay=0.05),
        ema_fit_ours=clipped_fit(strategy, tf_adagrad.Adagrad, None, **EMA),
        ema_fit_keras=clipped_fit(strategy, keras.optimizers.Adagrad, None, **EMA),
        in_batch_fit_mirrored=clipped_fit(strategy, tf_adagrad.Adagrad, None, **IN_BATCH_DECAY),
        in_batch_fit_one_device=clipped_fit(
            tf.distribute.OneDeviceStrategy("/cpu:0"), tf_adagrad.Adagrad, None, **IN_BATCH_DECAY
        ),
        rowwise_fit_mirrored=rowwise_fit(strategy),
        rowwise_fit_one_device=rowwise_fit(tf.distribute.OneDeviceStrategy("/cpu:0")),
        initial=weights,
        fit_single=fit_single,
        fit_mirrored=fit_mirrored,
        custom_single=train_custom_loop_single(weights, x, y),
        custom_mirrored=straight[: len(weights)],
        custom_straight=straight,
        custom_resumed=resumed,
        counts={"fit_sparse_calls": fit_sparse_calls, "custom_sparse_calls": custom_sparse_calls},
        replicas={"n": strategy.num_replicas_in_sync},
    )


# tf_adagrad's rows-in-batch weight decay (tests/test_weight_decay.py).
IN_BATCH_DECAY = dict(weight_decay=0.05, weight_decay_rows="in_batch")
# Moving averages, written over the weights at the end of fit(). (With
# ema_overwrite_frequency, Keras 3.15's own fit() fails under
# MirroredStrategy: its overwrite runs a merge_call inside a cond.)
EMA = dict(use_ema=True, ema_momentum=0.9)


def clipped_fit(strategy, optimizer_class, global_clipnorm=0.05, **options):
    """tests/test_sparse_options.py's case: fit() of a small Embedding model
    with global-norm clipping (which Keras applies to each replica's
    gradients) and the optimizer's other `options` in `strategy`, 6 batches
    of 32 ids, no id twice in a batch, so that Keras' own sparse clipping is
    the dense one too; the weights."""
    import keras
    import numpy as np

    rng = np.random.default_rng(3)
    ids = np.concatenate([rng.permutation(100)[:32] for _ in range(6)]).reshape(-1, 1)
    labels = rng.uniform(0, 1, (ids.shape[0], 1)).astype("float32")
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = scenario_model.embedding_regressor(keras, 100, 1, 4)
        optimizer = optimizer_class(learning_rate=0.5, global_clipnorm=global_clipnorm, **options)
        model.compile(optimizer=optimizer, loss="mse")
    model.fit(ids.astype("int32"), labels, batch_size=32, shuffle=False, verbose=0)
    return model.get_weights()


def rowwise_fit(strategy):
    """tests/test_rowwise_optimizer.py's case: fit() of a small Embedding
    model with tf_adagrad.RowwiseAdagrad in `strategy`, 2 epochs of 8
    batches of 64 over a 300-row table; the weights, then the rowwise
    accumulators."""
    import keras
    import numpy as np

    import tf_adagrad

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 300, (512, 2)).astype("int32")
    labels = rng.random((512, 1)).astype("float32")
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = scenario_model.embedding_regressor(keras, 300, 2, 8)
        model.compile(optimizer=tf_adagrad.RowwiseAdagrad(0.1), loss="mse")
    model.fit(ids, labels, batch_size=64, epochs=2, shuffle=False, verbose=0)
    return model.get_weights() + [a.numpy() for a in model.optimizer._rowwise_accumulators]


def multi_worker(args):
    """One worker of a MultiWorkerMirroredStrategy cluster.

    fit() first, with Keras' own Adagrad and with tf_adagrad's: Keras 3
    cannot fit under this strategy (keras-team/keras#20585), so both fail,
    and the failures are recorded for the test. Then a custom loop trains on
    the global batches, each worker taking its half of every batch; worker 0
    also trains the one-device reference.
    """
    import numpy as np

    cluster = json.loads(args.cluster)
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": args.task}}
    )
    import traceback

    import keras
    import tensorflow as tf

    import tf_adagrad

    count_sparse_updates()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x, y = batches()
    weights = initial_weights()

    keras.config.disable_traceback_filtering()  # record where fit() fails
    fit_failures = {}
    for name, make_optimizer in [
        ("keras", keras.optimizers.Adagrad),
        ("tf_adagrad", tf_adagrad.Adagrad),
    ]:
        with strategy.scope():
            model = build_model()
            model.compile(optimizer=make_optimizer(LEARNING_RATE), loss="binary_crossentropy")
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
        try:
            model.fit(dataset, epochs=1, verbose=0)
            fit_failures[name] = "fit() ran"
        except Exception as e:  # noqa: BLE001 - the test inspects what failed where
            frames = [
                f"{frame.filename}: {frame.name}" for frame in traceback.extract_tb(e.__traceback__)
            ]
            fit_failures[name] = f"{type(e).__name__}: {str(e)[:200]}\n" + "\n".join(frames)

    with strategy.scope():
        model = build_model()
        model.set_weights(weights)
        optimizer = tf_adagrad.Adagrad(LEARNING_RATE)

    def worker_dataset(context):
        """This worker's half of each global batch, in order."""
        per_replica = context.get_per_replica_batch_size(GLOBAL_BATCH)
        first = context.input_pipeline_id * per_replica
        rows = np.concatenate(
            [
                np.arange(step * GLOBAL_BATCH + first, step * GLOBAL_BATCH + first + per_replica)
                for step in range(STEPS)
            ]
        )
        return tf.data.Dataset.from_tensor_slices((x[rows], y[rows])).batch(per_replica)

    train_step = distributed_train_step(strategy, model, optimizer)

    iterator = iter(strategy.distribute_datasets_from_function(worker_dataset))
    for _ in range(STEPS):
        train_step(iterator)
    results = {
        "worker": model.get_weights(),
        "counts": {"sparse_calls": SPARSE_CALLS["Adagrad"]},
        "replicas": {"n": strategy.num_replicas_in_sync},
        "fit_failures": fit_failures,
        "initial": weights,
    }
    if args.task == 0:
        results["single"] = train_custom_loop_single(weights, x, y)
    save(args.out, **results)


def coordinator(args):
    """The coordinator of a ParameterServerStrategy cluster, training with
    each optimizer of --optimizers in turn, and writing its results to
    `--out-dir/NAME.npz` (or the traceback, if that optimizer's run raised,
    so that a broken case fails its own test only): the Embedding table is
    sharded over 2 parameter servers; a custom loop schedules one step at a
    time on the workers (so the steps run in order, as in the reference);
    then a CheckpointManager save and restore into new objects resumes
    exactly."""
    import traceback

    import tensorflow as tf

    count_sparse_updates()
    x, y = batches()
    weights = initial_weights()
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(json.loads(args.cluster)), rpc_layer="grpc"
    )
    # Tables of 16 KiB and more are split in 2; the Dense layers are not.
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=16 << 10, max_shards=2
    )
    strategy = tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
    cluster = tf.distribute.coordinator.ClusterCoordinator(strategy)
    for optimizer_name in args.optimizers.split(","):
        out = os.path.join(args.out_dir, f"{optimizer_name}.npz")
        checkpoint_dir = os.path.join(args.checkpoint_dir, optimizer_name)
        try:
            results = train_sharded(
                strategy, cluster, optimizer_name, weights, x, y, checkpoint_dir
            )
        except Exception:  # noqa: BLE001 - reported to the test, case by case
            save(out, error={"traceback": traceback.format_exc()})
            continue
        save(out, **results)


def train_sharded(strategy, cluster, optimizer_name, weights, x, y, checkpoint_dir):
    """The coordinator's training with one optimizer; the results by group."""
    import tensorflow as tf
    from tensorflow.python.distribute.sharded_variable import ShardedVariable

    import tf_adagrad

    def build(restore_from=None):
        with strategy.scope():
            model = build_model()
            model.set_weights(weights)
            optimizer = make_optimizer(optimizer_name)
            optimizer.build(model.trainable_variables)
        # tf.train.Checkpoint(model=model) fails for a Keras variable backed
        # by a ShardedVariable (Keras hands the ShardedVariable to the saver
        # as one tensor); the backing variables checkpoint shard by shard.
        checkpoint = tf.train.Checkpoint(
            model=[v.value for v in model.variables],
            optimizer=[v.value for v in optimizer.variables],
        )
        if restore_from:
            checkpoint.restore(restore_from).assert_consumed()

        @tf.function
        def train_step(xb, yb):
            def step_fn(xb, yb):
                with tf.GradientTape() as tape:
                    loss = tf.reduce_mean(per_example_loss(model, xb, yb))
                grads = tf_adagrad.sharded_gradients(tape, loss, model.trainable_variables)
                optimizer.apply(grads, model.trainable_variables)
                return loss

            return strategy.run(step_fn, args=(xb, yb))

        return model, optimizer, checkpoint, train_step

    def run_steps(train_step, first, last):
        for step in range(first, last):
            rows = slice(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)
            cluster.schedule(train_step, args=(tf.constant(x[rows]), tf.constant(y[rows])))
            cluster.join()

    model, optimizer, checkpoint, train_step = build()
    table = model.get_layer("item_embedding").embeddings
    accumulator = [v for v in optimizer.variables if "item_embedding" in v.path][0]
    placement = {
        "table_is_sharded": isinstance(table._value, ShardedVariable),
        "accumulator_is_sharded": isinstance(accumulator._value, ShardedVariable),
    }
    if placement["table_is_sharded"] and placement["accumulator_is_sharded"]:
        placement["table_shards"] = [v.device for v in table._value.variables]
        placement["accumulator_shards"] = [v.device for v in accumulator._value.variables]
    print(optimizer_name, json.dumps(placement), flush=True)
    try:
        tf.train.Checkpoint(model=model).save(os.path.join(checkpoint_dir, "keras_model"))
        keras_checkpoint = "saved"
    except AttributeError as e:
        keras_checkpoint = f"AttributeError: {e}"

    run_steps(train_step, 0, STEPS // 2)
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=1)
    manager.save()
    run_steps(train_step, STEPS // 2, STEPS)
    straight = model.get_weights() + [v.numpy() for v in optimizer.variables]

    model, optimizer, _, train_step = build(restore_from=manager.latest_checkpoint)
    run_steps(train_step, STEPS // 2, STEPS)
    resumed = model.get_weights() + [v.numpy() for v in optimizer.variables]

    single = train_custom_loop_single(weights, x, y, optimizer_name=optimizer_name)
    return dict(
        initial=weights,
        single=single,
        sharded=straight[: len(weights)],
        straight=straight,
        resumed=resumed,
        counts={"sparse_calls": SPARSE_CALLS[optimizer_name]},
        placement={"json": json.dumps(placement)},
        keras_checkpoint={"error": keras_checkpoint},
    )


SCENARIOS = {
    "mirrored": mirrored,
    "multi-worker": multi_worker,
    "coordinator": coordinator,
}

if __name__ == "__main__":
    sys.exit(main())
