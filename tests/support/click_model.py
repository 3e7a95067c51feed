"""A small click model with an Embedding table, and data for it, shared by
the tests that train with `fit()`."""

import keras
import numpy as np

DIM, FIELDS = 8, 4


def click_model(num_rows):
    """FIELDS ids -> Embedding(num_rows, DIM) -> Dense(16) -> sigmoid."""
    inputs = keras.Input((FIELDS,), dtype="int32")
    x = keras.layers.Embedding(num_rows, DIM)(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def click_data(num_rows, num_examples=512, seed=0):
    """Zipf-like ids (many duplicates per batch) and a label the ids predict."""
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.3, (num_examples, FIELDS)) - 1, num_rows - 1).astype(np.int32)
    row_score = np.random.default_rng(99).standard_normal(num_rows)
    labels = (row_score[ids].sum(axis=1) > 0).astype(np.float32)
    return ids, labels
