"""Bazel macros for TensorFlow op libraries built against the installed TF."""

load("@rules_cc//cc:defs.bzl", "cc_binary", "cc_library")
load("//build_tools:tf_releases.bzl", "TF_RELEASES")

# Bit-exact IEEE math (no FMA contraction, so float32 results match Keras');
# -fno-math-errno lets the compiler vectorize sqrt.
KERNEL_COPTS = [
    "-ffp-contract=off",
    "-fno-math-errno",
    "-Wall",
    "-Wno-sign-compare",
    "-Wno-unknown-pragmas",
]

# Machine code for Volta, Ampere and Hopper, plus Hopper's PTX for the driver
# to compile on newer GPUs.
CUDA_ARCHS = ["sm_70", "sm_80", "sm_90"]
CUDA_PTX_ARCH = "sm_90"

def _cuda_object_impl(ctx):
    compilation = cc_common.merge_cc_infos(
        cc_infos = [dep[CcInfo] for dep in ctx.attr.deps],
    ).compilation_context
    toolkit = ctx.attr._toolkit.label.workspace_root + "/cuda"
    # Position-independent either way; Bazel links x.pic.o files into shared
    # libraries and x.o files into executables, and drops the other kind.
    out = ctx.actions.declare_file(
        ctx.label.name + (".o" if ctx.attr.for_executable else ".pic.o"),
    )

    args = ctx.actions.args()
    args.add_all(["-x", "cuda", "-c", "-fPIC", "--cuda-path=" + toolkit])
    args.add_all(CUDA_ARCHS, format_each = "--cuda-gpu-arch=%s")
    args.add_all(["--no-cuda-include-ptx=all", "--cuda-include-ptx=" + CUDA_PTX_ARCH])

    # clang-16 knows CUDA up to 11.8 and needs telling that CUDA 12's headers
    # may declare variadic functions for the device.
    args.add_all(["-Wno-unknown-cuda-version", "-Xclang", "-fcuda-allow-variadic-functions"])
    args.add_all(["-include", ctx.file._prelude.path])
    args.add("-DGOOGLE_CUDA=1")
    if ctx.var["COMPILATION_MODE"] == "opt":
        args.add("-DNDEBUG")

    # The flags every C++ file gets (from .bazelrc and configure.py).
    args.add_all(ctx.fragments.cpp.copts)
    args.add_all(ctx.fragments.cpp.cxxopts)
    args.add_all(ctx.attr.copts)
    args.add_all(compilation.defines, format_each = "-D%s")
    args.add_all(compilation.includes, before_each = "-I")
    args.add_all(compilation.quote_includes, before_each = "-iquote")
    args.add_all(compilation.system_includes, before_each = "-isystem")
    args.add_all(["-o", out, ctx.file.src])

    ctx.actions.run(
        executable = ctx.executable._clang,
        arguments = [args],
        inputs = depset(
            [ctx.file.src, ctx.file._prelude] + ctx.files.hdrs,
            transitive = [compilation.headers, ctx.attr._toolkit.files],
        ),
        outputs = [out],
        mnemonic = "CudaCompile",
        progress_message = "Compiling CUDA %s" % ctx.file.src.short_path,
    )
    return [DefaultInfo(files = depset([out]))]

cuda_object = rule(
    implementation = _cuda_object_impl,
    doc = "Compiles one CUDA source with clang into a position-independent object.",
    attrs = {
        "src": attr.label(allow_single_file = True, mandatory = True),
        "hdrs": attr.label_list(allow_files = True),
        "deps": attr.label_list(providers = [CcInfo]),
        "copts": attr.string_list(),
        "for_executable": attr.bool(default = False),
        "_clang": attr.label(
            default = "@local_config_cuda//:clang++",
            allow_single_file = True,
            executable = True,
            cfg = "host",
        ),
        "_toolkit": attr.label(default = "@local_config_cuda//:toolkit"),
        "_prelude": attr.label(
            default = "//third_party/cuda:clang_cuda_prelude.h",
            allow_single_file = True,
        ),
    },
    fragments = ["cpp"],
)

def _tf_builds():
    """(target suffix, TensorFlow repository, --define of its version) of
    each TensorFlow the ops are built against: the installed one, and every
    release of TF_RELEASES (for the release wheel)."""
    builds = [("", "@local_config_tf", "tf_version")]
    for minor in TF_RELEASES:
        name = minor.replace(".", "_")
        builds.append(("_tf" + name, "@local_config_tf_" + name, "tf_version_" + name))
    return builds

def tf_kernel_library(name, srcs, deps = [], tf_deps = [], copts = [], cuda_srcs = []):
    """A library of TensorFlow ops or kernels, for `tf_op_library`.

    Compiled with the flags configure.py read from tf.sysconfig. With
    --config=cuda, the `.cu.cc` files of `cuda_srcs` (which may also list
    headers) are compiled for the GPU and linked in, and every file sees
    GOOGLE_CUDA=1; otherwise they are left out. Always linked whole, so that
    its op and kernel registrations reach the op library.

    One library per TensorFlow (`_tf_builds`): `name` for the installed one,
    `name` + `_tf2_18` for release 2.18, and so on; `tf_deps` are other
    `tf_kernel_library` targets, taken for the same TensorFlow.
    """
    for suffix, tf_repo, _ in _tf_builds():
        _tf_kernel_library(
            name = name + suffix,
            srcs = srcs,
            deps = deps + [dep + suffix for dep in tf_deps] + [
                tf_repo + "//:tf_header_lib",
                tf_repo + "//:libtensorflow_framework",
            ],
            copts = copts,
            cuda_srcs = cuda_srcs,
        )

def _tf_kernel_library(name, srcs, deps, copts, cuda_srcs):
    cuda_headers = [src for src in cuda_srcs if not src.endswith(".cu.cc")]
    cuda_objects = []
    for src in cuda_srcs:
        if src.endswith(".cu.cc"):
            object_name = name + "_" + src.replace("/", "_")[:-len(".cu.cc")]
            cuda_object(
                name = object_name,
                src = src,
                hdrs = srcs + cuda_headers,
                deps = deps,
                copts = KERNEL_COPTS + copts,
            )
            cuda_objects.append(":" + object_name)
    using_cuda = "//third_party/cuda:using_cuda"
    cc_library(
        name = name,
        srcs = srcs + select({
            using_cuda: cuda_objects,
            "//conditions:default": [],
        }),
        copts = KERNEL_COPTS + copts + select({
            using_cuda: ["-DGOOGLE_CUDA=1"],
            "//conditions:default": [],
        }),
        alwayslink = True,
        deps = deps,
    )

def tf_op_library(name, deps):
    """The TensorFlow op libraries (.so) of `name`, for `tf.load_op_library`:
    `name` + ".so" against the installed TensorFlow, and `name` + "_tf2_18.so"
    and so on against each release of TF_RELEASES.

    Links the `tf_kernel_library` targets of `deps` (for the same
    TensorFlow) against its libtensorflow_framework. The CUDA code uses the
    CUDA runtime that TensorFlow loads (libtensorflow_framework exports it),
    so the library needs no CUDA of its own to load.
    """
    for suffix, tf_repo, _ in _tf_builds():
        cc_binary(
            name = name + suffix + ".so",
            linkshared = 1,
            linkopts = ["-Wl,--no-undefined"],
            deps = [dep + suffix for dep in deps] + [tf_repo + "//:libtensorflow_framework"],
        )

def _op_library_files_impl(ctx):
    outputs = []
    record = [
        "# Written by Bazel: the TensorFlow release each op library was built",
        "# against, by minor version; the loader picks the installed minor's.",
        "TF_VERSIONS = {",
    ]
    for library, version_define in ctx.attr.libraries.items():
        version = _required_define(ctx, version_define)
        minor = ".".join(version.split(".")[:2])
        out = ctx.actions.declare_file("%s/%s_tf%s.so" % (
            ctx.label.name,
            ctx.attr.library_name,
            minor.replace(".", "_"),
        ))
        ctx.actions.run_shell(
            inputs = library.files.to_list(),
            outputs = [out],
            command = 'cp "$1" "$2"',
            arguments = [library.files.to_list()[0].path, out.path],
            mnemonic = "CopyOpLibrary",
        )
        outputs.append(out)
        record.append('    "%s": "%s",' % (minor, version))
    record.append("}")
    record_file = ctx.actions.declare_file(ctx.label.name + "/_build_info.py")
    ctx.actions.write(record_file, "\n".join(record) + "\n")
    return [DefaultInfo(files = depset(outputs + [record_file]))]

_op_library_files = rule(
    implementation = _op_library_files_impl,
    attrs = {
        "libraries": attr.label_keyed_string_dict(allow_files = [".so"], mandatory = True),
        "library_name": attr.string(mandatory = True),
    },
)

def op_library_files(name, library, releases):
    """A package's op libraries, each named by its TensorFlow minor version
    (`_tf_adagrad_ops_tf2_21.so`), and their build record `_build_info.py`,
    in the folder `name`: the one built against the installed TensorFlow,
    or (`releases = True`) one per release of TF_RELEASES."""
    builds = _tf_builds()
    chosen = builds[1:] if releases else builds[:1]
    _op_library_files(
        name = name,
        libraries = {
            ":%s%s.so" % (library, suffix): version_define
            for suffix, _, version_define in chosen
        },
        library_name = library.split("/")[-1],
    )

def _required_define(ctx, name):
    value = ctx.var.get(name, "")
    if not value:
        fail("--define=%s is not set: run build_tools/configure.py (or `make build`) first." % name)
    return value

def _python_wheel_impl(ctx):
    out_dir = ctx.actions.declare_directory(ctx.attr.out_dir)
    args = ctx.actions.args()
    args.add(ctx.file._builder)
    args.add("--out_dir", out_dir.path)
    args.add("--name", ctx.attr.distribution)
    args.add("--summary", ctx.attr.summary)
    args.add("--license_name", ctx.attr.license_name)
    args.add("--license_file", ctx.file.license_file)
    args.add("--description", ctx.file.description_file)
    args.add("--version_file", ctx.file.version_file)
    op_library_files = ctx.files.op_libraries
    build_records = [f for f in op_library_files if f.basename == "_build_info.py"]
    if len(build_records) != 1:
        fail("op_libraries must hold one _build_info.py, found %s" % build_records)
    args.add("--build_record", build_records[0])
    args.add("--versions_file", ctx.file.versions_file)
    args.add_all(ctx.attr.requires, before_each = "--requires")
    for extra, requirements in ctx.attr.extras.items():
        for requirement in requirements:
            args.add("--extra", "%s=%s" % (extra, requirement))
    args.add_all(ctx.attr.python_versions, before_each = "--python_version")
    args.add("--platform_tag", _required_define(ctx, "platform_tag"))
    package_files = ctx.files.package_files + op_library_files
    for f in package_files:
        # Subpackages keep their folders; generated files sit in the
        # package's folder.
        if f.short_path.startswith(ctx.attr.package + "/"):
            wheel_path = f.short_path
        else:
            wheel_path = "%s/%s" % (ctx.attr.package, f.basename)
        args.add("--file", "%s=%s" % (wheel_path, f.path))
    ctx.actions.run(
        # The Python configure.py ran with; the builder needs only its
        # standard library.
        executable = _required_define(ctx, "build_python"),
        arguments = [args],
        inputs = package_files + [
            ctx.file._builder,
            ctx.file.license_file,
            ctx.file.description_file,
            ctx.file.version_file,
            ctx.file.versions_file,
        ],
        outputs = [out_dir],
        mnemonic = "PythonWheel",
        progress_message = "Building the %s wheel" % ctx.attr.distribution,
    )
    return [DefaultInfo(files = depset([out_dir]))]

_python_wheel = rule(
    implementation = _python_wheel_impl,
    doc = """A wheel of one Python package, in the folder `out_dir`, by build_wheel.py.

    Every file of `package_files` goes into the wheel at its path in the
    source tree (generated files: in the package's folder), and so do the op
    libraries and build record of `op_libraries` (an `op_library_files`);
    nothing else of the package does. The version comes from
    `version_file`'s `__version__`, the TensorFlow requirement from the
    build record's `TF_VERSIONS` (with the other requirements of `requires`,
    and the optional ones of `extras`, where `{tensorflow_minors}` stands for
    the same range of minor versions and `{keras_versions}` for
    `versions_file`'s `KERAS_VERSIONS`),
    `Requires-Python` and the Python classifiers from `python_versions`, and
    the tag, `py3-none-<platform>`, from the define that configure.py writes
    (platform_tag).
    """,
    attrs = {
        "distribution": attr.string(mandatory = True),
        "package": attr.string(mandatory = True),
        "package_files": attr.label_list(allow_files = True, mandatory = True),
        "version_file": attr.label(allow_single_file = True, mandatory = True),
        "op_libraries": attr.label(mandatory = True),
        "versions_file": attr.label(allow_single_file = True, mandatory = True),
        "summary": attr.string(mandatory = True),
        "license_name": attr.string(mandatory = True),
        "license_file": attr.label(allow_single_file = True, mandatory = True),
        "description_file": attr.label(allow_single_file = True, mandatory = True),
        "requires": attr.string_list(),
        "python_versions": attr.string_list(mandatory = True),
        "extras": attr.string_list_dict(),
        "out_dir": attr.string(default = "dist"),
        "_builder": attr.label(default = "//build_tools:build_wheel.py", allow_single_file = True),
    },
)

def python_wheels(name, op_libraries, release_op_libraries, **kwargs):
    """Two wheels of one package: `name` with the op libraries of
    `op_libraries`, in the folder `dist`, and `release_` + `name` with those
    of `release_op_libraries`, in `release_dist`; the other arguments are
    `_python_wheel`'s, for both."""
    _python_wheel(name = name, op_libraries = op_libraries, out_dir = "dist", **kwargs)
    _python_wheel(
        name = "release_" + name,
        op_libraries = release_op_libraries,
        out_dir = "release_dist",
        **kwargs
    )
