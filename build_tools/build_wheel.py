#!/usr/bin/env python3
"""Writes the tf-adagrad wheel (run by Bazel's `//:wheel`; standard library only).

The wheel holds the `tf_adagrad` package (its Python modules, the op library
and its build record) and a `.dist-info` with METADATA, WHEEL, LICENSE and
RECORD (sha256 of every file), as the wheel format (PEP 427) asks. It is
reproducible: entries in a fixed order with a fixed date.

- The version is `__version__` of the package's `__init__.py`, read without
  importing it.
- `Requires-Dist` keeps TensorFlow within the minor versions the op
  libraries were built for, read from the build record (`_build_info.py`'s
  `TF_VERSIONS`, such as `tensorflow>=2.18,<2.22` for 2.18 to 2.21), so pip
  keeps them together; every `--requires` adds one more `Requires-Dist`,
  and every `--extra NAME=REQUIREMENT` one that pip installs only for
  `tf_adagrad[NAME]` (with `Provides-Extra: NAME`). In both,
  `{tensorflow_minors}` stands for the same range (tf_keras' minor versions
  follow TensorFlow's) and `{keras_versions}` for the Keras 3 releases the
  package supports (`KERAS_VERSIONS` of `--versions_file`).
- The tag is `py3-none-<platform>` (`--platform_tag`, which configure.py
  takes from the Python that builds, such as `linux_x86_64`): the op library
  does not call Python's C API, so one wheel serves every Python 3 that
  TensorFlow ships for; the `Requires-Dist` range keeps it with the
  TensorFlow minor versions it was built against. `--python_version` (repeated) names
  the Python versions it is tested with: one classifier each, and
  `Requires-Python` from the lowest. The platform is plain `linux_x86_64`,
  not `manylinux`: the library is compiled by the local toolchain and not
  audited for older Linux systems.
"""

import argparse
import ast
import base64
import hashlib
import os
import stat
import sys
import zipfile

# Zip entries get this date (the earliest a zip file can hold), so the same
# inputs give the same wheel bytes.
FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def module_value(path, name):
    """The literal assigned to `name` at the top level of the module at `path`."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [
            name
        ]:
            return ast.literal_eval(node.value)
    raise SystemExit(f"build_wheel.py: {path} assigns nothing to {name}")


def module_string(path, name):
    value = module_value(path, name)
    if not isinstance(value, str):
        raise SystemExit(f"build_wheel.py: {path} assigns no string to {name}")
    return value


def tensorflow_minors(build_record):
    """The version specifier `>=X.A,<X.B+1` of the TensorFlow minor versions
    X.A to X.B that the build record's TF_VERSIONS names (they must follow
    each other: the range admits every minor between)."""
    versions = module_value(build_record, "TF_VERSIONS")
    minors = []
    for minor, version in sorted(versions.items()):
        parts = minor.split(".")
        if (
            len(parts) != 2
            or not all(p.isdigit() for p in parts)
            or not version.startswith(minor + ".")
        ):
            raise SystemExit(
                f"build_wheel.py: {build_record} maps {minor!r} to {version!r}, expected "
                '"X.Y": "X.Y.Z"'
            )
        minors.append(tuple(int(p) for p in parts))
    minors.sort()
    if not minors or any(b != (a[0], a[1] + 1) for a, b in zip(minors, minors[1:])):
        raise SystemExit(
            f"build_wheel.py: {build_record} names TensorFlow {sorted(versions)}, expected "
            "consecutive minor versions of one major version"
        )
    (major, first), (_, last) = minors[0], minors[-1]
    return f">={major}.{first},<{major}.{last + 1}"


def extra_lines(specs):
    """METADATA lines of `NAME=REQUIREMENT` specs: each extra named once."""
    lines, names = [], []
    for spec in specs:
        name, sep, requirement = spec.partition("=")
        if not sep or not name or not requirement:
            raise SystemExit(f"build_wheel.py: --extra {spec!r}, expected NAME=REQUIREMENT")
        if name not in names:
            names.append(name)
            lines.append(f"Provides-Extra: {name}")
        lines.append(f'Requires-Dist: {requirement}; extra == "{name}"')
    return lines


def version_key(version):
    """(3, 11) for "3.11"; versions sort by number, not by text."""
    parts = version.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise SystemExit(f"build_wheel.py: --python_version {version!r}, expected X.Y")
    return tuple(int(p) for p in parts)


def metadata(args, version):
    with open(args.description, encoding="utf-8") as f:
        description = f.read()
    python_versions = sorted(set(args.python_version), key=version_key)
    minors = tensorflow_minors(args.build_record)

    keras_versions = module_string(args.versions_file, "KERAS_VERSIONS")

    def with_minors(requirement):
        return requirement.replace("{tensorflow_minors}", minors).replace(
            "{keras_versions}", keras_versions
        )

    lines = [
        "Metadata-Version: 2.1",
        f"Name: {args.name}",
        f"Version: {version}",
        f"Summary: {args.summary}",
        f"License: {args.license_name}",
        "Classifier: License :: OSI Approved :: Apache Software License",
        "Classifier: Operating System :: POSIX :: Linux",
        "Classifier: Programming Language :: Python :: 3",
        *(f"Classifier: Programming Language :: Python :: {v}" for v in python_versions),
        f"Requires-Python: >={python_versions[0]}",
        f"Requires-Dist: tensorflow{minors}",
        *(f"Requires-Dist: {with_minors(requirement)}" for requirement in args.requires),
        *extra_lines([with_minors(spec) for spec in args.extra]),
        "Description-Content-Type: text/markdown",
    ]
    return "\n".join(lines) + "\n\n" + description


def wheel_file(tag):
    return (
        "\n".join(
            [
                "Wheel-Version: 1.0",
                "Generator: tf-adagrad build_wheel.py",
                # The op library makes it platform-specific.
                "Root-Is-Purelib: false",
                f"Tag: {tag}",
            ]
        )
        + "\n"
    )


def record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def add_entry(archive, path, data, executable=False):
    info = zipfile.ZipInfo(path, date_time=FIXED_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    mode = 0o755 if executable else 0o644
    info.external_attr = (stat.S_IFREG | mode) << 16
    archive.writestr(info, data)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", required=True, help="where the .whl goes")
    parser.add_argument("--name", required=True, help="the distribution name, such as tf-adagrad")
    parser.add_argument("--summary", required=True)
    parser.add_argument("--license_name", required=True, help="such as Apache-2.0")
    parser.add_argument("--license_file", required=True)
    parser.add_argument(
        "--description", required=True, help="a Markdown file for the long description"
    )
    parser.add_argument("--version_file", required=True, help="the module that sets __version__")
    parser.add_argument(
        "--versions_file",
        required=True,
        help="the module that sets KERAS_VERSIONS, which {keras_versions} stands for",
    )
    parser.add_argument(
        "--build_record", required=True, help="_build_info.py, which sets TF_VERSIONS"
    )
    parser.add_argument(
        "--requires", action="append", default=[], help="a requirement, such as keras>=3.15,<3.16"
    )
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME=REQUIREMENT",
        help="a requirement of an extra, such as keras2=tf-keras{tensorflow_minors}",
    )
    parser.add_argument(
        "--python_version",
        action="append",
        required=True,
        help="a Python version the wheel is tested with, such as 3.11",
    )
    parser.add_argument("--platform_tag", required=True, help="such as linux_x86_64")
    parser.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="WHEEL_PATH=SOURCE",
        help="a file of the package",
    )
    args = parser.parse_args()

    version = module_string(args.version_file, "__version__")
    distribution = args.name.replace("-", "_")
    # Any Python 3, no Python ABI: the op library links TensorFlow's
    # framework library only.
    tag = f"py3-none-{args.platform_tag}"
    dist_info = f"{distribution}-{version}.dist-info"

    entries = []  # (path in the wheel, bytes, executable)
    for spec in sorted(args.file):
        wheel_path, source = spec.split("=", 1)
        with open(source, "rb") as f:
            entries.append((wheel_path, f.read(), wheel_path.endswith(".so")))
    with open(args.license_file, "rb") as f:
        license_text = f.read()
    entries += [
        (f"{dist_info}/METADATA", metadata(args, version).encode(), False),
        (f"{dist_info}/WHEEL", wheel_file(tag).encode(), False),
        (f"{dist_info}/LICENSE", license_text, False),
    ]
    paths = [path for path, _, _ in entries]
    if len(set(paths)) != len(paths):
        raise SystemExit(f"build_wheel.py: a path appears twice among {paths}")

    record_path = f"{dist_info}/RECORD"
    record = (
        "\n".join([record_line(path, data) for path, data, _ in entries] + [f"{record_path},,"])
        + "\n"
    )

    os.makedirs(args.out_dir, exist_ok=True)
    wheel_path = os.path.join(args.out_dir, f"{distribution}-{version}-{tag}.whl")
    with zipfile.ZipFile(wheel_path, "w") as archive:
        for path, data, executable in entries:
            add_entry(archive, path, data, executable)
        add_entry(archive, record_path, record.encode())
    print(f"build_wheel.py: wrote {wheel_path}")


if __name__ == "__main__":
    sys.exit(main())
