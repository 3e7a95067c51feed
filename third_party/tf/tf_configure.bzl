"""Repository rules exposing a TensorFlow's headers and framework library.

build_tools/configure.py writes the locations it read from tf.sysconfig into
.tf_configure.bazelrc as --repo_env; these rules symlink them into external
repositories so that Bazel treats the headers as ordinary inputs.

`local_config_tf` is the TensorFlow of the Python that ran configure.py (any
version); `local_config_tf_X_Y`, one per release in TF_RELEASES, are the
TensorFlows the release wheel is built against (`make wheel`).
"""

load("//build_tools:tf_releases.bzl", "TF_RELEASES")

def env_prefix(minor):
    """The --repo_env prefix of a release's TensorFlow: TF_2_18 for "2.18"."""
    return "TF_" + minor.replace(".", "_")

def _env_names(prefix):
    return [prefix + "_HEADER_DIR", prefix + "_SHARED_LIBRARY_DIR", prefix + "_SHARED_LIBRARY_NAME"]

_ALL_ENV = _env_names("TF") + [
    name
    for minor in TF_RELEASES
    for name in _env_names(env_prefix(minor))
]

def _tf_configure_impl(ctx):
    include_env, lib_dir_env, lib_name_env = _env_names(ctx.attr.env_prefix)
    include_dir = ctx.os.environ.get(include_env, "")
    lib_dir = ctx.os.environ.get(lib_dir_env, "")
    lib_name = ctx.os.environ.get(lib_name_env, "")
    if not (include_dir and lib_dir and lib_name):
        # Fails only when a target needs this TensorFlow.
        ctx.file("BUILD", 'fail("%s is not set: run %s first.")\n' % (
            include_env,
            ctx.attr.configure_command,
        ))
        return
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
    attrs = {
        "env_prefix": attr.string(default = "TF"),
        "configure_command": attr.string(
            default = "build_tools/configure.py (or `make build`)",
        ),
    },
    environ = _ALL_ENV,
    local = True,
)

def tf_configure_all():
    """The development TensorFlow's repository and one per release."""
    tf_configure(name = "local_config_tf")
    for minor in TF_RELEASES:
        tf_configure(
            name = "local_config_tf_" + minor.replace(".", "_"),
            env_prefix = env_prefix(minor),
            configure_command = "`make wheel`",
        )
