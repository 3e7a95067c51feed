"""The optimizer-level scenario of tests/test_weight_decay.py and
tests/test_moving_average.py: a (20, 3) table whose batches repeat ids and
never name rows 15 to 19, and a (3,) bias, against float64 NumPy rules."""

import numpy as np

import tf_adagrad

TABLE_SHAPE, BIAS_SHAPE = (20, 3), (3,)
OPTIMIZERS = {
    # (class, initial accumulator, epsilon, rowwise): the defaults.
    "Adagrad": (tf_adagrad.Adagrad, 0.1, 1e-7, False),
    "RowwiseAdagrad": (tf_adagrad.RowwiseAdagrad, 0.0, 1e-8, True),
}


def repeated_id_steps(steps, seed=5, rows=15):
    """Per step, as NumPy: 8 table ids with repeats from rows 0..rows-1,
    their gradient rows, and the bias' dense gradient."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        indices = rng.integers(0, rows, 8)
        assert len(set(indices.tolist())) < 8
        out.append((indices, rng.uniform(-1, 1, (8, 3)), rng.uniform(-1, 1, BIAS_SHAPE)))
    return out


def start_values():
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, TABLE_SHAPE), rng.uniform(-1, 1, BIAS_SHAPE)]
