"""Loading SavedModels whose functions contain tf_adagrad's ops."""

import tensorflow as tf

from tf_adagrad import ops


def load_saved_model(export_dir, tags=None, options=None):
    """`tf.saved_model.load`, with tf_adagrad's ops registered first.

    A SavedModel that exports a training step (for example a `tf.Module`
    whose `tf.function` calls `optimizer.apply` with a `tf_adagrad.Adagrad`)
    contains `TfAdagrad>...` ops, which TensorFlow knows only once the op
    library is loaded; plain `tf.saved_model.load` fails on them with
    "Op type not registered 'TfAdagrad>ApplyDense'". Arguments and return
    value are those of `tf.saved_model.load`. An inference-only export
    (`model.export()`) has no such ops and needs no tf_adagrad.

    Raises:
        OpLibraryError: The op library is missing or was built for another
            TensorFlow.
    """
    ops.load_library()
    return tf.saved_model.load(export_dir, tags=tags, options=options)
