"""Bazel macro for TensorFlow op libraries built against the installed TF."""

load("@rules_cc//cc:defs.bzl", "cc_binary")

# Bit-exact IEEE math (no FMA contraction, so float32 results match Keras');
# -fno-math-errno lets the compiler vectorize sqrt.
KERNEL_COPTS = [
    "-ffp-contract=off",
    "-fno-math-errno",
    "-Wall",
    "-Wno-sign-compare",
    "-Wno-unknown-pragmas",
]

def tf_op_library(name, srcs, deps = [], copts = []):
    """A TensorFlow op library `name` (a .so) for `tf.load_op_library`.

    Compiled with the flags configure.py read from tf.sysconfig and linked
    against the installed libtensorflow_framework.
    """
    cc_binary(
        name = name,
        srcs = srcs,
        copts = KERNEL_COPTS + copts,
        linkshared = 1,
        linkopts = ["-Wl,--no-undefined"],
        deps = deps + [
            "@local_config_tf//:tf_header_lib",
            "@local_config_tf//:libtensorflow_framework",
        ],
    )
