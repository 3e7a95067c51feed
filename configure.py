#!/usr/bin/env python3
"""Writes .tf_configure.bazelrc from the installed TensorFlow.

Every compiler and linker flag comes from ``tf.sysconfig``; nothing is
hard-coded. Run it with the Python whose TensorFlow the ops must match
(``make build`` uses ``.venv/bin/python``).
"""

import os
import sys

OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".tf_configure.bazelrc")


def _split_flags(flags, prefix):
    """Returns the values of the flags that start with ``prefix``."""
    return [f[len(prefix):] for f in flags if f.startswith(prefix)]


def tf_build_settings():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    compile_flags = tf.sysconfig.get_compile_flags()
    link_flags = tf.sysconfig.get_link_flags()
    (include_dir,) = _split_flags(compile_flags, "-I")
    (lib_dir,) = _split_flags(link_flags, "-L")
    (lib_name,) = _split_flags(link_flags, "-l:")
    other_compile_flags = [f for f in compile_flags if not f.startswith("-I")]
    return {
        "version": tf.__version__,
        "include_dir": include_dir,
        "lib_dir": lib_dir,
        "lib_name": lib_name,
        "compile_flags": other_compile_flags,
    }


def bazelrc_lines(settings):
    lines = [
        "# Written by configure.py from tf.sysconfig; do not edit.",
        f"build --repo_env=TF_HEADER_DIR={settings['include_dir']}",
        f"build --repo_env=TF_SHARED_LIBRARY_DIR={settings['lib_dir']}",
        f"build --repo_env=TF_SHARED_LIBRARY_NAME={settings['lib_name']}",
        f"build --define=tf_version={settings['version']}",
    ]
    for flag in settings["compile_flags"]:
        # The C++ standard flag applies to C++ only; the rest (ABI, Eigen
        # alignment) must match TF's in every translation unit.
        option = "cxxopt" if "std=" in flag else "copt"
        lines.append(f"build --{option}={flag}")
    return lines


def main():
    settings = tf_build_settings()
    with open(OUTPUT, "w") as f:
        f.write("\n".join(bazelrc_lines(settings)) + "\n")
    print(f"configure.py: TensorFlow {settings['version']} at {settings['include_dir']}")
    print(f"configure.py: wrote {OUTPUT}")


if __name__ == "__main__":
    sys.exit(main())
