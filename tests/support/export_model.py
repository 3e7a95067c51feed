"""SavedModel export scenarios, one per subcommand, each run in a fresh
process by tests/test_export.py, for each optimizer of --optimizers
(Adagrad, RowwiseAdagrad) in turn, in its directory `--dir/OPTIMIZER`:

  save        a tf.Module holding a model and the tf_adagrad optimizer, with
              a `train_step` signature, and `model.export()` for inference;
              then one train_step here, whose result is written to
              expected.npz
  load        `import tf_adagrad` (which registers the ops), then
              `tf.saved_model.load`, the same train_step on the same batch,
              written to loaded.npz
  load-plain  `tf.saved_model.load` without tf_adagrad, which fails: prints
              "OPTIMIZER: LOAD FAILED: ..." and exits with 3 if every load
              failed
  serve       the inference export, without tf_adagrad, written to served.npz
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

NUM_ROWS, FIELDS, BATCH = 5000, 3, 64
TRAIN_DIR, INFERENCE_DIR = "train_module", "inference"


class TrainModule(tf.Module):
    """A model and its optimizer, with a training step to export."""

    def __init__(self, model, optimizer):
        super().__init__()
        self.model = model
        self.optimizer = optimizer

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, FIELDS], tf.int32),
            tf.TensorSpec([None, 1], tf.float32),
        ]
    )
    def train_step(self, x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(y, self.model(x, training=True)))
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply(grads, self.model.trainable_variables)
        return {"loss": loss}

    @tf.function(input_signature=[])
    def state(self):
        """Every model and optimizer variable, in a fixed order."""
        variables = self.model.variables + self.optimizer.variables
        return {f"v{i:03d}": tf.identity(v.value) for i, v in enumerate(variables)}


def batch():
    rng = np.random.default_rng(3)
    x = np.minimum(rng.zipf(1.3, (BATCH, FIELDS)) - 1, NUM_ROWS - 1).astype(np.int32)
    y = (x.sum(axis=1, keepdims=True) % 2).astype(np.float32)
    return x, y


def state_arrays(state):
    return {name: value.numpy() for name, value in state.items()}


def save(directory, optimizer_name):
    import tf_adagrad

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((FIELDS,), dtype="int32"),
            keras.layers.Embedding(NUM_ROWS, 8),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    optimizer = getattr(tf_adagrad, optimizer_name)(learning_rate=0.1)
    optimizer.build(model.trainable_variables)
    module = TrainModule(model, optimizer)
    tf.saved_model.save(
        module,
        os.path.join(directory, TRAIN_DIR),
        signatures={"train_step": module.train_step, "state": module.state},
    )
    model.export(os.path.join(directory, INFERENCE_DIR), verbose=False)

    x, y = batch()
    predictions = model.predict(x, verbose=0)
    before = state_arrays(module.state())
    loss = module.train_step(x, y)["loss"].numpy()
    after = state_arrays(module.state())
    np.savez(
        os.path.join(directory, "expected.npz"),
        loss=loss,
        predictions=predictions,
        **{f"before:{k}": v for k, v in before.items()},
        **{f"after:{k}": v for k, v in after.items()},
    )


def load(directory, optimizer_name):
    import tf_adagrad  # noqa: F401 - registers the TfAdagrad ops

    loaded = tf.saved_model.load(os.path.join(directory, TRAIN_DIR))
    x, y = batch()
    before = state_arrays(loaded.signatures["state"]())
    loss = loaded.signatures["train_step"](x=tf.constant(x), y=tf.constant(y))["loss"].numpy()
    after = state_arrays(loaded.signatures["state"]())
    np.savez(
        os.path.join(directory, "loaded.npz"),
        loss=loss,
        **{f"before:{k}": v for k, v in before.items()},
        **{f"after:{k}": v for k, v in after.items()},
    )


def load_plain(directory, optimizer_name):
    """Whether the train step loaded; prints why not."""
    try:
        tf.saved_model.load(os.path.join(directory, TRAIN_DIR))
    except Exception as e:  # noqa: BLE001 - the test reads the message
        print(f"{optimizer_name}: LOAD FAILED: {type(e).__name__}: {e}")
        return False
    print(f"{optimizer_name}: LOADED")
    return True


def serve(directory, optimizer_name):
    loaded = tf.saved_model.load(os.path.join(directory, INFERENCE_DIR))
    x, _ = batch()
    predictions = loaded.serve(tf.constant(x)).numpy()
    np.savez(
        os.path.join(directory, "served.npz"),
        predictions=predictions,
        tf_adagrad_imported="tf_adagrad" in sys.modules,
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["save", "load", "load-plain", "serve"])
    parser.add_argument("--dir", required=True, help="holds a directory per optimizer")
    parser.add_argument(
        "--optimizers", default="Adagrad,RowwiseAdagrad", help="Adagrad, RowwiseAdagrad, by commas"
    )
    args = parser.parse_args()
    scenarios = {"save": save, "load": load, "load-plain": load_plain, "serve": serve}
    outcomes = [
        scenarios[args.scenario](os.path.join(args.dir, name), name)
        for name in args.optimizers.split(",")
    ]
    if args.scenario == "load-plain" and not any(outcomes):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
