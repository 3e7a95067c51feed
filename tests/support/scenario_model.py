"""The small recommender-style models that the distribution scenarios and
the option tests train, with Keras 3 (distributed_training.py,
loss_scaling_mirrored.py, test_sparse_options.py) or tf_keras
(keras2_distributed.py): an Embedding table, whose gradient is a
`tf.IndexedSlices`, and Dense layers. Imports no Keras itself: the caller
passes its module."""


def build_model(keras, num_rows, fields, dim, hidden):
    """`fields` int32 ids -> Embedding(num_rows, dim), named "item_embedding"
    -> Flatten -> Dense(hidden, relu) -> Dense(1, sigmoid), built with
    `keras` (the keras or the tf_keras module)."""
    return keras.Sequential(
        [
            keras.Input((fields,), dtype="int32"),
            keras.layers.Embedding(num_rows, dim, name="item_embedding"),
            keras.layers.Flatten(),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )


def embedding_regressor(keras, num_rows, fields, dim):
    """`fields` int32 ids -> Embedding(num_rows, dim) -> Flatten -> Dense(1),
    built with `keras`: the smallest model with a sparse gradient."""
    return keras.Sequential(
        [
            keras.Input((fields,), dtype="int32"),
            keras.layers.Embedding(num_rows, dim),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )


def initial_weights(keras, build_model):
    """The weights of `build_model()` after seeding `keras` with 1: where
    every run of a scenario starts."""
    keras.utils.set_random_seed(1)
    return build_model().get_weights()
