"""SavedModel export, each side in a fresh process (tests/support/export_model.py):
a training step exported with tf_adagrad.Adagrad or RowwiseAdagrad reloads, after
`import tf_adagrad`, with `tf.saved_model.load` and trains the same, bit for
bit; an inference export needs no tf_adagrad."""

import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support", "export_model.py")
TRAIN_DIR, INFERENCE_DIR = "train_module", "inference"
# Each optimizer's op name prefix, and the sparse op its Embedding table uses.
OPS = {
    "Adagrad": ("TfAdagrad>Apply", "TfAdagrad>ApplySparse"),
    "RowwiseAdagrad": ("TfAdagrad>RowwiseApply", "TfAdagrad>RowwiseApplySparse"),
}


def run(*args, expect_rc=0):
    result = subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == expect_rc, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module", params=sorted(OPS))
def exported(request, tmp_path_factory):
    """(directory, the save side's results, the optimizer's name)."""
    directory = tmp_path_factory.mktemp("export")
    run(
        "save",
        "--dir",
        str(directory),
        "--out",
        str(directory / "expected.npz"),
        "--optimizer",
        request.param,
    )
    return directory, np.load(directory / "expected.npz"), request.param


def by_prefix(npz, prefix):
    return {k.split(":", 1)[1]: npz[k] for k in npz.files if k.startswith(prefix + ":")}


def test_train_step_reloads_in_a_fresh_process_and_trains_the_same(exported):
    directory, expected, _ = exported
    run("load", "--dir", str(directory), "--out", str(directory / "loaded.npz"))
    loaded = np.load(directory / "loaded.npz")
    before, after = by_prefix(loaded, "before"), by_prefix(loaded, "after")
    # Model weights, iterations, learning rate and accumulators all travel.
    assert len(after) == 12 and after.keys() == by_prefix(expected, "after").keys()
    for name, value in by_prefix(expected, "before").items():
        assert before[name].tobytes() == value.tobytes(), name
    for name, value in by_prefix(expected, "after").items():
        assert after[name].tobytes() == value.tobytes(), name
    assert loaded["loss"].tobytes() == expected["loss"].tobytes()
    # The step did train: the Embedding table and the step counter moved.
    assert np.abs(after["v000"] - before["v000"]).max() > 1e-3
    assert int(after["v005"]) == int(before["v005"]) + 1


def test_import_tf_adagrad_is_all_loading_a_train_step_needs(exported):
    """A fresh process that imports tf_adagrad and nothing else of it: the
    import registers the ops, so plain `tf.saved_model.load` finds them."""
    directory, _, _ = exported
    script = (
        "import sys\n"
        "import tensorflow as tf\n"
        "import tf_adagrad\n"
        "loaded = tf.saved_model.load(sys.argv[1])\n"
        "print(sorted(loaded.signatures))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(directory / TRAIN_DIR)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "['state', 'train_step']"


def test_loading_a_train_step_without_tf_adagrad_names_the_missing_op(exported):
    """No code of ours runs in a process that has not imported tf_adagrad,
    so the message is TensorFlow's; it names the op, and README's Export
    section gives this text with the fix (`import tf_adagrad` first)."""
    directory, _, optimizer = exported
    output = run("load-plain", "--dir", str(directory), expect_rc=3)
    op_prefix = OPS[optimizer][0]
    assert f"LOAD FAILED: RuntimeError: Op type not registered '{op_prefix}" in output


def test_inference_export_has_no_custom_op_and_serves_without_tf_adagrad(exported):
    directory, expected, optimizer = exported
    with open(directory / INFERENCE_DIR / "saved_model.pb", "rb") as f:
        assert b"TfAdagrad" not in f.read()
    with open(directory / TRAIN_DIR / "saved_model.pb", "rb") as f:
        assert OPS[optimizer][1].encode() in f.read()  # the check above can fail
    run("serve", "--dir", str(directory), "--out", str(directory / "served.npz"))
    served = np.load(directory / "served.npz")
    assert not served["tf_adagrad_imported"]
    np.testing.assert_allclose(served["predictions"], expected["predictions"], rtol=1e-6, atol=1e-7)
