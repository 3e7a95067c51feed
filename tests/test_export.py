"""SavedModel export, each side in a fresh process (tests/support/export_model.py),
which handles both optimizers: a training step exported with tf_adagrad.Adagrad
or RowwiseAdagrad reloads, after `import tf_adagrad`, with `tf.saved_model.load`
and trains the same, bit for bit; an inference export needs no tf_adagrad.
The fast lane runs the save and reload sides; the other checks, a process
each, are marked slow."""

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


# Each scenario runs once, in one process for both optimizers, each in its
# directory under the module's.


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """The save side's directory; `export_dir / OPTIMIZER` holds each
    optimizer's exports and expected.npz, its results."""
    directory = tmp_path_factory.mktemp("export")
    run("save", "--dir", str(directory), "--optimizers", ",".join(OPS))
    return directory


@pytest.fixture(scope="module")
def loaded_dir(export_dir):
    """After the load side ran: each optimizer's loaded.npz."""
    run("load", "--dir", str(export_dir), "--optimizers", ",".join(OPS))
    return export_dir


@pytest.fixture(scope="module")
def plain_load_output(export_dir):
    return run("load-plain", "--dir", str(export_dir), "--optimizers", ",".join(OPS), expect_rc=3)


@pytest.fixture(scope="module")
def served_dir(export_dir):
    """After the inference exports served: each optimizer's served.npz."""
    run("serve", "--dir", str(export_dir), "--optimizers", ",".join(OPS))
    return export_dir


@pytest.fixture(scope="module")
def signatures_after_import_tf_adagrad(export_dir):
    """{optimizer: its train module's signatures} as a fresh process that
    imports tf_adagrad and nothing else of it sees them."""
    script = (
        "import sys\n"
        "import tensorflow as tf\n"
        "import tf_adagrad\n"
        "for directory in sys.argv[1:]:\n"
        "    loaded = tf.saved_model.load(directory)\n"
        "    print(directory, sorted(loaded.signatures))\n"
    )
    directories = {name: str(export_dir / name / TRAIN_DIR) for name in OPS}
    result = subprocess.run(
        [sys.executable, "-c", script, *directories.values()],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    return {name: printed.get(directory) for name, directory in directories.items()}


def by_prefix(npz, prefix):
    return {k.split(":", 1)[1]: npz[k] for k in npz.files if k.startswith(prefix + ":")}


@pytest.mark.parametrize("optimizer", sorted(OPS))
def test_train_step_reloads_in_a_fresh_process_and_trains_the_same(loaded_dir, optimizer):
    expected = np.load(loaded_dir / optimizer / "expected.npz")
    loaded = np.load(loaded_dir / optimizer / "loaded.npz")
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


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", sorted(OPS))
def test_import_tf_adagrad_is_all_loading_a_train_step_needs(
    signatures_after_import_tf_adagrad, optimizer
):
    """A fresh process that imports tf_adagrad and nothing else of it: the
    import registers the ops, so plain `tf.saved_model.load` finds them."""
    assert signatures_after_import_tf_adagrad[optimizer] == "['state', 'train_step']"


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", sorted(OPS))
def test_loading_a_train_step_without_tf_adagrad_names_the_missing_op(plain_load_output, optimizer):
    """No code of ours runs in a process that has not imported tf_adagrad,
    so the message is TensorFlow's; it names the op, and README's Export
    section gives this text with the fix (`import tf_adagrad` first)."""
    op_prefix = OPS[optimizer][0]
    assert (
        f"{optimizer}: LOAD FAILED: RuntimeError: Op type not registered '{op_prefix}"
        in plain_load_output
    )


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", sorted(OPS))
def test_inference_export_has_no_custom_op_and_serves_without_tf_adagrad(served_dir, optimizer):
    directory = served_dir / optimizer
    expected = np.load(directory / "expected.npz")
    with open(directory / INFERENCE_DIR / "saved_model.pb", "rb") as f:
        assert b"TfAdagrad" not in f.read()
    with open(directory / TRAIN_DIR / "saved_model.pb", "rb") as f:
        assert OPS[optimizer][1].encode() in f.read()  # the check above can fail
    served = np.load(directory / "served.npz")
    assert not served["tf_adagrad_imported"]
    np.testing.assert_allclose(served["predictions"], expected["predictions"], rtol=1e-6, atol=1e-7)
