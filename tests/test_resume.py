"""Exact resume: 200 steps straight equal 100 steps, a CheckpointManager save,
a restore in a fresh process, and 100 more steps, bit for bit, for a dense
and a sparse (Embedding) model, weights and accumulators alike."""

import os
import subprocess
import sys

import numpy as np

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support", "resume_training.py")


def start_training(start, stop, checkpoint_dir, out):
    """A process training steps [start, stop) (tests/support/resume_training.py)."""
    return subprocess.Popen(
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
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(processes, timeout=600):
    """Waits for each process; fails if one fails. Kills those left over."""
    try:
        for process in processes:
            _, stderr = process.communicate(timeout=timeout)
            assert process.returncode == 0, stderr[-4000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


def test_resume_in_a_fresh_process_is_bit_identical(tmp_path):
    # The straight run and the first half are independent: side by side.
    finish(
        [
            start_training(0, 200, tmp_path / "straight", tmp_path / "straight.npz"),
            start_training(0, 100, tmp_path / "split", tmp_path / "first_half.npz"),
        ]
    )
    finish([start_training(100, 200, tmp_path / "split", tmp_path / "resumed.npz")])
    straight, resumed = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")

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
