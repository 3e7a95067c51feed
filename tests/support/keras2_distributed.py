"""tf_keras `fit()` under tf.distribute with Adagrad optimizers, one scenario
per subcommand, each run in processes of its own by
tests/test_keras2_distribute.py with `TF_USE_LEGACY_KERAS=1` (set here,
before TensorFlow is imported; a strategy's devices and cluster are fixed
when TensorFlow starts). The coordinator's parameter servers and workers
are tests/support/cluster_server.py's.

Every scenario fits the same small recommender-style model (an Embedding
table, whose gradient is a `tf.IndexedSlices`, and Dense layers) from the
same initial weights on the same global batches, once per optimizer named
with `--optimizers`, in the strategy and in one process on one device, and
pickles {optimizer name: result} to `--out`. A result holds the weights and
accumulators of both runs, the types and devices of the update ops in the
traced train function, and the devices of the variables and accumulators;
or {"error": traceback} if that optimizer's run raised, so one broken case
fails its own test only. The assertions are in the test module.
"""

import argparse
import json
import os
import pickle
import sys
import traceback

import scenario_model  # tests/support/, beside this file

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NUM_ROWS, FIELDS, DIM, GLOBAL_BATCH, STEPS = 64, 4, 4, 16, 4
LEARNING_RATE = 0.05
# The ops that can update a variable: tf_adagrad's fused ops, and those
# tf_keras' own Adagrads run (the legacy one's ResourceApplyAdagradV2, the
# new one's plain arithmetic ending in an assignment).
UPDATE_OP_TYPES = (
    "TfAdagrad>ApplyDense",
    "TfAdagrad>ApplySparse",
    "TfAdagrad>MultiApplyDense",
    "TfAdagrad>RowwiseApplyDense",
    "TfAdagrad>RowwiseApplySparse",
    "ResourceApplyAdagradV2",
    "ResourceSparseApplyAdagradV2",
    "AssignAddVariableOp",
    "AssignSubVariableOp",
    "AssignVariableOp",
    "ResourceScatterAdd",
    "ResourceScatterSub",
    "ResourceScatterUpdate",
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--out")
    parser.add_argument("--optimizers", help="comma-separated names from OPTIMIZERS")
    parser.add_argument("--cluster", help="JSON cluster spec")
    parser.add_argument("--task", type=int, default=0)
    args = parser.parse_args()
    SCENARIOS[args.scenario](args)


# TensorFlow is imported inside the scenarios: TF_CONFIG and the logical
# devices must be set before it starts.


def optimizer_classes():
    """{name: class}: tf_adagrad's tf_keras optimizers, and the tf_keras
    Adagrads that the first two replace (rowwise Adagrad has no peer in
    tf_keras)."""
    import tf_keras

    import tf_adagrad

    return {
        "tf_adagrad.keras2": tf_adagrad.keras2.Adagrad,
        "tf_adagrad.keras2.legacy": tf_adagrad.keras2.legacy.Adagrad,
        "tf_adagrad.keras2.RowwiseAdagrad": tf_adagrad.keras2.RowwiseAdagrad,
        "tf_adagrad.keras2.legacy.RowwiseAdagrad": tf_adagrad.keras2.legacy.RowwiseAdagrad,
        "tf_keras": tf_keras.optimizers.Adagrad,
        "tf_keras.legacy": tf_keras.optimizers.legacy.Adagrad,
    }


def batches():
    """STEPS global batches of ids, each naming rows of both halves of the
    table and many rows more than once."""
    import numpy as np

    rng = np.random.default_rng(7)
    x = rng.integers(0, NUM_ROWS, (STEPS * GLOBAL_BATCH, FIELDS)).astype(np.int32)
    y = ((x % 3).sum(axis=1, keepdims=True) > FIELDS).astype(np.float32)
    return x, y


def build_model():
    import tf_keras

    return scenario_model.build_model(tf_keras, NUM_ROWS, FIELDS, DIM, hidden=8)


def initial_weights():
    import tf_keras

    return scenario_model.initial_weights(tf_keras, build_model)


def compiled_model(weights, optimizer_class, **compile_kwargs):
    """The model from `weights`, compiled with a new `optimizer_class`, in
    the current strategy's scope."""
    import tensorflow as tf

    with tf.distribute.get_strategy().scope():
        model = build_model()
        for variable, value in zip(model_weights(model), weights):
            variable.assign(value)
        model.compile(
            optimizer=optimizer_class(LEARNING_RATE),
            loss="binary_crossentropy",
            **compile_kwargs,
        )
    return model


def model_weights(model):
    """The model's weights in `get_weights()` order, a sharded one as its
    `ShardedVariable` (tf_keras lists each shard as a weight)."""
    weights = []
    for weight in model.weights:
        container = getattr(weight, "_sharded_container", None)
        weight = container() if container else weight
        if not any(weight is seen for seen in weights):
            weights.append(weight)
    return weights


def shards(weight):
    """The variables behind a model weight: its shards, or itself."""
    import tensorflow as tf

    if isinstance(weight, tf.__internal__.distribute.ShardedVariable):
        return list(weight.variables)
    return [weight]


def accumulator(optimizer, variable):
    """The optimizer's accumulator of one (unsharded) variable: an element's
    for Adagrad, a row's for RowwiseAdagrad."""
    import tf_keras

    import tf_adagrad

    rowwise = isinstance(
        optimizer, (tf_adagrad.keras2.RowwiseAdagrad, tf_adagrad.keras2.legacy.RowwiseAdagrad)
    )
    if isinstance(optimizer, tf_keras.optimizers.legacy.Optimizer):
        return optimizer.get_slot(variable, "rowwise_accumulator" if rowwise else "accumulator")
    # The new optimizer keeps them in variable order; no public accessor.
    accumulators = optimizer._rowwise_accumulators if rowwise else optimizer._accumulators
    return accumulators[optimizer._index_dict[optimizer._var_key(variable)]]


def trained_state(model):
    """The model's weights and accumulators as NumPy arrays, shards joined,
    and the devices of the variables behind them."""
    import tensorflow as tf

    weights = model_weights(model)
    return {
        "weights": [tf.convert_to_tensor(w).numpy() for w in weights],
        "accumulators": [
            tf.concat([accumulator(model.optimizer, s) for s in shards(w)], axis=0).numpy()
            for w in weights
        ],
        "placement": [
            [
                {"variable": s.device, "accumulator": accumulator(model.optimizer, s).device}
                for s in shards(w)
            ]
            for w in weights
        ],
    }


def update_ops(function):
    """(op type, device) of every op in UPDATE_OP_TYPES in the graphs traced
    by the tf.function `function`, nested functions (a loop's body) included."""
    found = []
    for concrete in function._list_all_concrete_functions():
        graph_def = concrete.graph.as_graph_def()
        nodes = list(graph_def.node)
        for library_function in graph_def.library.function:
            nodes.extend(library_function.node_def)
        found.extend((n.op, n.device) for n in nodes if n.op in UPDATE_OP_TYPES)
    return sorted(set(found))


def fit_one_device(weights, optimizer_class, x, y):
    """The reference: fit() on one device, one step per global batch."""
    import tensorflow as tf

    model = compiled_model(weights, optimizer_class)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    model.fit(dataset, epochs=1, verbose=0)
    return trained_state(model)


def run_cases(out, names, fit_distributed, with_reference=True):
    """For each optimizer name: `fit_distributed(weights, class, x, y)` (a
    dict), and the one-device reference; pickles {name: result} to `out`."""
    x, y = batches()
    weights = initial_weights()
    classes = optimizer_classes()
    results = {}
    for name in names:
        try:
            result = {
                "initial": weights,
                "distributed": fit_distributed(weights, classes[name], x, y),
            }
            if with_reference:
                result["one_device"] = fit_one_device(weights, classes[name], x, y)
        except Exception:  # noqa: BLE001 - reported to the test, case by case
            result = {"error": traceback.format_exc()}
        results[name] = result
    with open(out, "wb") as f:
        pickle.dump(results, f)


def mirrored(args):
    """MirroredStrategy over 2 logical CPUs: each global batch is split
    between the 2 replicas."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def fit_mirrored(weights, optimizer_class, x, y):
        with strategy.scope():
            model = compiled_model(weights, optimizer_class)
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
        model.fit(dataset, epochs=1, verbose=0)
        return {
            **trained_state(model),
            "replicas": strategy.num_replicas_in_sync,
            "update_ops": update_ops(model.train_function),
        }

    run_cases(args.out, args.optimizers.split(","), fit_mirrored)


def multi_worker(args):
    """One worker of a 2-worker MultiWorkerMirroredStrategy cluster: each
    worker feeds its half of every global batch. Worker 0 also fits the
    one-device reference."""
    import numpy as np

    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": json.loads(args.cluster), "task": {"type": "worker", "index": args.task}}
    )
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()

    def fit_multi_worker(weights, optimizer_class, x, y):
        def worker_dataset(context):
            per_replica = context.get_per_replica_batch_size(GLOBAL_BATCH)
            first = context.input_pipeline_id * per_replica
            rows = np.concatenate(
                [
                    np.arange(
                        step * GLOBAL_BATCH + first, step * GLOBAL_BATCH + first + per_replica
                    )
                    for step in range(STEPS)
                ]
            )
            return tf.data.Dataset.from_tensor_slices((x[rows], y[rows])).batch(per_replica)

        with strategy.scope():
            model = compiled_model(weights, optimizer_class)
        model.fit(
            tf.keras.utils.experimental.DatasetCreator(worker_dataset),
            epochs=1,
            steps_per_epoch=STEPS,
            verbose=0,
        )
        return {
            **trained_state(model),
            "replicas": strategy.num_replicas_in_sync,
            "update_ops": update_ops(model.train_function),
        }

    run_cases(args.out, args.optimizers.split(","), fit_multi_worker, with_reference=args.task == 0)


def coordinator(args):
    """The coordinator of a ParameterServerStrategy cluster of 2 workers and
    2 parameter servers; every variable with 2 rows or more, the Embedding
    table among them, is split in 2 shards, one per parameter server.

    Workers run scheduled steps asynchronously, each on its own copy of the
    data, against parameters that other steps may be updating. For a result
    equal to one process', all STEPS steps are one scheduled function
    (`steps_per_execution=STEPS`): one worker runs them in order on its copy
    of the global batches, while the other worker waits.
    """
    import tensorflow as tf

    # The reference first, before the strategy connects this process to the
    # cluster.
    x, y = batches()
    weights = initial_weights()
    classes = optimizer_classes()
    names = args.optimizers.split(",")
    references = {}
    for name in names:
        try:
            references[name] = fit_one_device(weights, classes[name], x, y)
        except Exception:  # noqa: BLE001 - reported to the test, case by case
            references[name] = traceback.format_exc()

    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(json.loads(args.cluster)), rpc_layer="grpc"
    )
    strategy = tf.distribute.ParameterServerStrategy(
        resolver,
        variable_partitioner=tf.distribute.experimental.partitioners.FixedShardsPartitioner(2),
    )

    def fit_parameter_servers(weights, optimizer_class, x, y):
        def worker_dataset(context):
            del context  # every worker gets all global batches, in order
            return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)

        with strategy.scope():
            model = compiled_model(weights, optimizer_class, steps_per_execution=STEPS)
        model.fit(
            tf.keras.utils.experimental.DatasetCreator(worker_dataset),
            epochs=1,
            steps_per_epoch=STEPS,
            verbose=0,
        )
        table = model.get_layer("item_embedding").embeddings
        return {
            **trained_state(model),
            "table_is_sharded": len(shards(table)) > 1,
            "update_ops": update_ops(model.train_tf_function),
        }

    results = {}
    for name in names:
        if isinstance(references[name], str):
            results[name] = {"error": references[name]}
            continue
        try:
            results[name] = {
                "initial": weights,
                "distributed": fit_parameter_servers(weights, classes[name], x, y),
                "one_device": references[name],
            }
        except Exception:  # noqa: BLE001 - reported to the test, case by case
            results[name] = {"error": traceback.format_exc()}
    with open(args.out, "wb") as f:
        pickle.dump(results, f)


SCENARIOS = {
    "mirrored": mirrored,
    "multi-worker": multi_worker,
    "coordinator": coordinator,
}

if __name__ == "__main__":
    sys.exit(main())
