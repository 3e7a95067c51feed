"""Exact resume: 200 steps straight equal 100 steps, a CheckpointManager save,
a restore in a fresh process, and 100 more steps, bit for bit, for a dense
and a sparse (Embedding) model, weights and accumulators alike."""

import os
import subprocess
import sys

import numpy as np

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support", "resume_training.py")


def train(start, stop, checkpoint_dir, out):
    result = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "--start",
            str(start),
            "--stop",
            str(stop),
            "--checkpoint-dir",
            str(checkpoint_dir),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return np.load(out)


def test_resume_in_a_fresh_process_is_bit_identical(tmp_path):
    straight = train(0, 200, tmp_path / "straight", tmp_path / "straight.npz")
    train(0, 100, tmp_path / "split", tmp_path / "first_half.npz")
    resumed = train(100, 200, tmp_path / "split", tmp_path / "resumed.npz")

    assert sorted(straight.files) == sorted(resumed.files)
    kinds = {name.split(":")[0] for name in straight.files}
    assert kinds == {"dense", "sparse"}
    assert any("accumulator" in name for name in straight.files)
    for name in straight.files:
        assert straight[name].tobytes() == resumed[name].tobytes(), name
    # The second half did train: the first half's weights differ from the end.
    first_half = np.load(tmp_path / "first_half.npz")
    assert any(
        first_half[n].tobytes() != straight[n].tobytes()
        for n in straight.files
        if "accumulator" in n
    )
