"""Repository rule exposing the installed TensorFlow's headers and library.

build_tools/configure.py writes the locations it read from tf.sysconfig into
.tf_configure.bazelrc as --repo_env; this rule symlinks them into an external
repository so that Bazel treats the headers as ordinary inputs.
"""

_ENV_INCLUDE = "TF_HEADER_DIR"
_ENV_LIB_DIR = "TF_SHARED_LIBRARY_DIR"
_ENV_LIB_NAME = "TF_SHARED_LIBRARY_NAME"

def _required_env(ctx, name):
    value = ctx.os.environ.get(name, "")
    if not value:
        fail("%s is not set: run build_tools/configure.py (or `make build`) first." % name)
    return value

def _tf_configure_impl(ctx):
    include_dir = _required_env(ctx, _ENV_INCLUDE)
    lib_dir = _required_env(ctx, _ENV_LIB_DIR)
    lib_name = _required_env(ctx, _ENV_LIB_NAME)
    ctx.symlink(include_dir, "include")
    ctx.symlink(lib_dir + "/" + lib_name, lib_name)
    ctx.file("BUILD", """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "tf_header_lib",
    hdrs = glob(["include/**/*"], exclude = ["include/**/*.py"]),
    includes = ["include"],
)

cc_library(
    name = "libtensorflow_framework",
    srcs = ["{lib}"],
)
""".format(lib = lib_name))

tf_configure = repository_rule(
    implementation = _tf_configure_impl,
    environ = [_ENV_INCLUDE, _ENV_LIB_DIR, _ENV_LIB_NAME],
    local = True,
)
