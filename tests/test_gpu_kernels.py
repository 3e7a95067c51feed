"""The op library's GPU kernels: registered in a CUDA build, for every type.

They run only on a GPU (tests/cuda/ checks their math there); what a machine
without one can check is that the library it loads has them, with the
scalars in host memory as the OpKernels read them.
"""

import pytest
import tensorflow as tf
from tensorflow.python.framework import kernels

import tf_adagrad.ops

TYPES = ["float16", "bfloat16", "float32", "float64"]
INDEX_TYPES = ["int32", "int64"]


def registered(op_name, device_type):
    tf_adagrad.ops.load_library()
    found = []
    for kernel in kernels.get_registered_kernels_for_op(op_name).kernel:
        if kernel.device_type != device_type:
            continue
        constraints = {
            c.name: [tf.as_dtype(t).name for t in c.allowed_values.list.type]
            for c in kernel.constraint
        }
        found.append((constraints, sorted(kernel.host_memory_arg)))
    return found


@pytest.fixture(autouse=True)
def skip_without_cuda_build(cuda_build):
    if not cuda_build:
        pytest.skip("configure.py found no CUDA toolchain, so the build has no GPU kernels")


# The inputs each op reads on the host: the scalars, and the stochastic
# rounding key (seed, step) where the op takes one.
HOST_INPUTS = {
    "TfAdagrad>ApplyDense": ["epsilon", "lr", "rounding_key"],
    "TfAdagrad>MultiApplyDense": ["epsilon", "lr"],
    "TfAdagrad>ApplySparse": ["epsilon", "lr", "rounding_key"],
}


@pytest.mark.parametrize("op_name", ["TfAdagrad>ApplyDense", "TfAdagrad>MultiApplyDense"])
def test_dense_gpu_kernels_for_every_type(op_name):
    found = registered(op_name, "GPU")
    assert sorted(c["T"] for c, _ in found) == sorted([t] for t in TYPES)
    assert all(host == HOST_INPUTS[op_name] for _, host in found)


def test_sparse_gpu_kernels_for_every_type_and_index_type():
    found = registered("TfAdagrad>ApplySparse", "GPU")
    pairs = sorted(c["T"] + c["Tindices"] for c, _ in found)
    assert pairs == sorted([t, i] for t in TYPES for i in INDEX_TYPES)
    assert all(host == HOST_INPUTS["TfAdagrad>ApplySparse"] for _, host in found)
