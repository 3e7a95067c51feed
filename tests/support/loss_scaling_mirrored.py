"""fit() with loss scaling under MirroredStrategy over 2 logical CPUs, and on
one device, for tests/test_loss_scaling.py (the devices are fixed when
TensorFlow starts, hence a process of its own).

Usage: python loss_scaling_mirrored.py OUT.npz. Per case, the weights after
fit() mirrored and on one device, and the loss scale where there is one.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import keras  # noqa: E402
import scenario_model  # noqa: E402  (tests/support/, beside this file)

import tf_adagrad  # noqa: E402

CASES = {
    "factor": lambda: tf_adagrad.Adagrad(0.1, loss_scale_factor=128.0),
    "optimizer": lambda: tf_adagrad.LossScaleOptimizer(
        tf_adagrad.Adagrad(0.1), initial_scale=2.0**10, dynamic_growth_steps=2
    ),
}


def fit(strategy, make_optimizer):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (128, 3)).astype(np.int32)  # repeats in every batch
    targets = rng.uniform(-1, 1, (128, 1)).astype(np.float32)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = scenario_model.embedding_regressor(keras, 50, 3, 4)
        optimizer = make_optimizer()
        model.compile(optimizer=optimizer, loss="mse")
    model.fit(ids, targets, batch_size=32, shuffle=False, verbose=0)
    scale = getattr(optimizer, "dynamic_scale", None)
    return [w.numpy() for w in model.weights], None if scale is None else float(scale.numpy())


def main(out):
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    arrays = {"replicas": np.asarray(mirrored.num_replicas_in_sync)}
    for case, make_optimizer in CASES.items():
        for where, strategy in (("mirrored", mirrored), ("single", tf.distribute.get_strategy())):
            weights, scale = fit(strategy, make_optimizer)
            arrays.update({f"{case}:{where}:{i}": w for i, w in enumerate(weights)})
            if scale is not None:
                arrays[f"{case}:{where}:scale"] = np.asarray(scale)
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
