"""tf_keras `fit()` under ParameterServerStrategy while the test kills a
process of the cluster: the coordinator, run by tests/test_fault_tolerance.py
on a cluster of its own (tests/support/cluster_server.py: 2 workers, 2
parameter servers), with `TF_USE_LEGACY_KERAS=1`.

The model: an Embedding table split in 2 shards (one per parameter server)
and a Dense layer. The coordinator counts the steps each worker completed
(count_steps_by_worker), so a restarted worker can be seen taking work
again. A thread
polls the optimizer's `iterations` (a parameter-server variable) and
prints "iterations N workers A,B at T" (the steps each worker ran; T:
time.time()) whenever it moves, which the
test reads to time its kill and the recovery.

    fault_tolerance.py fit --cluster C --out O [--backup-dir D]
        fits --epochs epochs of --steps steps with tf_adagrad.keras2.Adagrad;
        prints "training" once the first step is applied; with
        --backup-dir, under tf_keras' BackupAndRestore there (a run that
        finds a backup resumes from it), and the optimizer's state beside
        it after each epoch (state_after_epoch_E.npz) and as training
        begins, after any restore (state_at_begin.npz). Writes JSON to
        --out: the steps asked and applied, the per-worker step counts, the
        loss of each epoch and whether every weight and accumulator is
        finite; or {"error": {type, message, raised_at}} if fit raised.
    fault_tolerance.py multi-worker --cluster C --task I --out O [--backup-dir D]
        worker I of a 2-worker MultiWorkerMirroredStrategy job: fits
        --epochs epochs of --steps global batches (each worker its half; every
        epoch the same batches, in order) with tf_adagrad.keras2.Adagrad,
        under BackupAndRestore (an epoch's end saved) with --backup-dir;
        prints "epoch E step S at T" after each step; writes the weights and
        the optimizer's variables to --out (.npz).
"""

import argparse
import json
import os
import sys
import threading
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NUM_ROWS, FIELDS, DIM, BATCH = 4000, 4, 16, 64
LEARNING_RATE = 0.05


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["fit", "multi-worker"])
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--backup-dir")
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--steps", type=int, default=40, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--hold-after-first-epoch-until",
        metavar="FILE",
        help="after the first epoch, wait until FILE exists (the test's sign that a "
        "restarted process serves), so that the epochs after it can use that process",
    )
    args = parser.parse_args()
    {"fit": fit, "multi-worker": multi_worker}[args.scenario](args)


def build_model(tf_keras):
    ids = tf_keras.Input((FIELDS,), dtype="int32", name="ids")
    table = tf_keras.layers.Embedding(
        NUM_ROWS,
        DIM,
        embeddings_initializer=tf_keras.initializers.RandomUniform(-0.05, 0.05, seed=1),
        name="item_embedding",
    )
    hidden = tf_keras.layers.Flatten()(table(ids))
    output = tf_keras.layers.Dense(
        1, activation="sigmoid", kernel_initializer=tf_keras.initializers.GlorotUniform(seed=2)
    )(hidden)
    return tf_keras.Model(ids, output)


def count_steps_by_worker():
    """[steps run by worker 0, by worker 1], kept up to date: counts each
    scheduled step (not the per-worker dataset's creation) that completed
    on a worker, by instrumenting TensorFlow's ClusterCoordinator."""
    from tensorflow.python.distribute.coordinator import cluster_coordinator

    steps = [0, 0]
    execute_on = cluster_coordinator.Closure.execute_on

    def counted(closure, worker):
        execute_on(closure, worker)
        if not isinstance(closure, cluster_coordinator.ResourceClosure):
            steps[worker.worker_index] += 1

    cluster_coordinator.Closure.execute_on = counted
    return steps


def batches(steps):
    """Zipf-distributed ids (so rows repeat within and across batches) and
    a label the ids decide: `steps` batches."""
    import numpy as np

    rng = np.random.default_rng(11)
    ids = np.minimum(rng.zipf(1.3, (BATCH * steps, FIELDS)) - 1, NUM_ROWS - 1).astype(np.int32)
    labels = ((ids % 3).sum(axis=1) > FIELDS).astype(np.float32)
    return ids, labels


def optimizer_state(optimizer):
    """The optimizer's variables (its iterations and accumulator shards), in
    order, as arrays."""
    import numpy as np

    return [np.asarray(v.numpy()) for v in optimizer.variables()]


def fit(args):
    import numpy as np
    import tensorflow as tf
    import tf_keras

    import tf_adagrad

    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(json.loads(args.cluster)), rpc_layer="grpc"
    )
    strategy = tf.distribute.ParameterServerStrategy(
        resolver,
        variable_partitioner=tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=16 << 10, max_shards=2
        ),
    )
    with strategy.scope():
        model = build_model(tf_keras)
        model.compile(
            optimizer=tf_adagrad.keras2.Adagrad(LEARNING_RATE), loss="binary_crossentropy"
        )
    ids, labels = batches(args.steps)
    steps_by_worker = count_steps_by_worker()

    def worker_dataset(context):
        del context  # every worker the same stream
        return tf.data.Dataset.from_tensor_slices((ids, labels)).batch(BATCH).repeat()

    optimizer = model.optimizer
    stop = threading.Event()

    def watch():
        seen = -1
        while not stop.is_set():
            try:
                now = int(optimizer.iterations.numpy())
                by_worker = list(steps_by_worker)
            except Exception:  # noqa: BLE001 - a parameter server may be gone
                now = seen
            if now != seen:
                workers = ",".join(map(str, by_worker))
                print(f"iterations {now} workers {workers} at {time.time():.3f}", flush=True)
                if seen < 1 <= now:
                    print("training", flush=True)
                seen = now
            stop.wait(0.02)

    callbacks = []
    states = {}
    if args.hold_after_first_epoch_until:

        class Hold(tf_keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                deadline = time.monotonic() + 300
                while epoch == 0 and not os.path.exists(args.hold_after_first_epoch_until):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{args.hold_after_first_epoch_until} did not appear")
                    time.sleep(0.05)

        callbacks.append(Hold())
    if args.backup_dir:
        callbacks.append(tf_keras.callbacks.BackupAndRestore(args.backup_dir))

        class RecordState(tf_keras.callbacks.Callback):
            """The optimizer's state as training starts (after
            BackupAndRestore restored it) and after each epoch (when
            BackupAndRestore saved it), written beside the backup."""

            def on_train_begin(self, logs=None):
                states["begin"] = optimizer_state(optimizer)

            def on_epoch_end(self, epoch, logs=None):
                np.savez(
                    os.path.join(args.backup_dir, f"state_after_epoch_{epoch}.npz"),
                    *optimizer_state(optimizer),
                )

        callbacks.append(RecordState())
    watcher = threading.Thread(target=watch, daemon=True)
    started = time.time()
    watcher.start()
    result = {"steps_asked": args.steps * args.epochs}
    try:
        history = model.fit(
            tf_keras.utils.experimental.DatasetCreator(worker_dataset),
            epochs=args.epochs,
            steps_per_epoch=args.steps,
            callbacks=callbacks,
            verbose=0,
        )
    except Exception as error:  # noqa: BLE001 - the test reads what fit raised
        result["error"] = {
            "type": type(error).__name__,
            "message": str(error)[:2000],
            "seconds_to_error": time.time() - started,
            "raised_at": time.time(),
        }
    else:
        table = model.get_layer("item_embedding")
        weights = [np.asarray(w.numpy()) for w in model.weights]
        accumulators = optimizer_state(optimizer)
        result.update(
            iterations=int(optimizer.iterations.numpy()),
            worker_steps=list(steps_by_worker),
            losses=[float(x) for x in history.history["loss"]],
            epochs_run=len(history.history["loss"]),
            finite=bool(all(np.all(np.isfinite(a)) for a in weights + accumulators)),
            table_shards=len(table.weights),
        )
        if "begin" in states:
            np.savez(os.path.join(args.backup_dir, "state_at_begin.npz"), *states["begin"])
    finally:
        stop.set()
        watcher.join()
    with open(args.out, "w") as f:
        json.dump(result, f)


def multi_worker(args):
    import numpy as np

    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": json.loads(args.cluster), "task": {"type": "worker", "index": args.task}}
    )
    import tensorflow as tf
    import tf_keras

    import tf_adagrad

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build_model(tf_keras)
        model.compile(
            optimizer=tf_adagrad.keras2.Adagrad(LEARNING_RATE), loss="binary_crossentropy"
        )
    ids, labels = batches(args.steps)

    def worker_dataset(context):
        per_replica = context.get_per_replica_batch_size(BATCH)
        first = context.input_pipeline_id * per_replica
        rows = np.concatenate(
            [
                np.arange(step * BATCH + first, step * BATCH + first + per_replica)
                for step in range(args.steps)
            ]
        )
        data = (ids[rows], labels[rows])
        return tf.data.Dataset.from_tensor_slices(data).batch(per_replica).repeat()

    class Progress(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            print(f"epoch {self.epoch} step {batch} at {time.time():.3f}", flush=True)

    callbacks = [Progress()]
    if args.backup_dir:
        callbacks.insert(0, tf_keras.callbacks.BackupAndRestore(args.backup_dir))
    history = model.fit(
        tf_keras.utils.experimental.DatasetCreator(worker_dataset),
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        callbacks=callbacks,
        verbose=0,
    )
    state = [np.asarray(w.numpy()) for w in model.weights] + optimizer_state(model.optimizer)
    np.savez(args.out, *state, epochs_run=np.array(len(history.history["loss"])))


if __name__ == "__main__":
    sys.exit(main())
