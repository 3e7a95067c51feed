"""Packaging: the wheel that `bazel build //:wheel` writes (its contents, and
an install into a new virtual environment that has only TensorFlow), the
TensorFlow version guard at import, and the version number."""

import base64
import csv
import glob
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile

import keras
import pytest
import tensorflow as tf
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import tf_adagrad
from tf_adagrad import _versions

TF_MAJOR, TF_MINOR = map(int, tf.__version__.split(".")[:2])
TF_MAJOR_MINOR = f"{TF_MAJOR}.{TF_MINOR}"
TF_MINORS = f">={TF_MAJOR_MINOR},<{TF_MAJOR}.{TF_MINOR + 1}"
# What the wheel of `make build` requires: the TensorFlow minor version its
# library was built for, and the Keras 3 releases whose private optimizer
# hooks tf_adagrad.Adagrad overrides as `make compat` tests them.
REQUIREMENTS = sorted([f"tensorflow{TF_MINORS}", "keras>=3.10,<3.16"])
assert _versions.KERAS_VERSIONS == ">=3.10,<3.16"  # the wheel takes it from there
# `tf_adagrad[keras2]` adds the tf_keras that tf_adagrad.keras2 subclasses:
# the releases that go with the same TensorFlow.
KERAS2_REQUIREMENT = f'tf-keras{TF_MINORS}; extra == "keras2"'
LIBRARY_NAME = os.path.basename(tf_adagrad._loader.LIBRARY_PATH)
# The Pythons the wheel is installed into below (BUILD's python_versions).
PYTHON_VERSIONS = ["3.11", "3.12"]


@pytest.fixture(scope="module")
def wheel_path(repo_root):
    wheels = glob.glob(os.path.join(repo_root, "bazel-bin", "dist", "*.whl"))
    assert len(wheels) == 1, (
        f"expected one wheel in bazel-bin/dist/ (run `make build`), found {wheels}"
    )
    return wheels[0]


def run(args, timeout=300, **kwargs):
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert out.returncode == 0, f"{args} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def python_env():
    """The environment for child Pythons: nothing pointing into this tree."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


# The wheel's contents.


def test_wheel_name_and_tags_describe_this_build(wheel_path):
    # Any Python 3, no Python ABI (see the next test), this platform.
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    tag = f"py3-none-{platform}"
    assert os.path.basename(wheel_path) == f"tf_adagrad-{tf_adagrad.__version__}-{tag}.whl"
    with zipfile.ZipFile(wheel_path) as wheel:
        fields = (
            wheel.read(f"tf_adagrad-{tf_adagrad.__version__}.dist-info/WHEEL").decode().splitlines()
        )
    assert "Wheel-Version: 1.0" in fields
    assert "Root-Is-Purelib: false" in fields
    assert f"Tag: {tag}" in fields
    assert "manylinux" not in tag  # not audited for other Linux systems


def test_op_library_does_not_use_pythons_abi(repo_root):
    """What the wheel's `py3-none` tag claims: the op library neither links
    libpython nor needs a symbol of Python's C API."""
    library = os.path.join(repo_root, "bazel-bin", "op_libraries", LIBRARY_NAME)
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", run(["readelf", "-d", library]))
    assert "libtensorflow_framework.so.2" in needed
    assert not [name for name in needed if "python" in name], needed
    undefined = [
        line.split()[-1] for line in run(["nm", "-D", "--undefined-only", library]).splitlines()
    ]
    assert any(symbol.startswith("_ZN10tensorflow") for symbol in undefined)
    assert not [s for s in undefined if s.startswith(("Py", "_Py"))], undefined


def test_wheel_holds_the_package_its_library_and_metadata_only(wheel_path, repo_root):
    dist_info = f"tf_adagrad-{tf_adagrad.__version__}.dist-info"
    with zipfile.ZipFile(wheel_path) as wheel:
        names = sorted(wheel.namelist())
        library = wheel.read(f"tf_adagrad/{LIBRARY_NAME}")
        build_record = wheel.read("tf_adagrad/_build_info.py").decode()
        license_text = wheel.read(f"{dist_info}/LICENSE")
        library_mode = (wheel.getinfo(f"tf_adagrad/{LIBRARY_NAME}").external_attr >> 16) & 0o777
    package_root = os.path.join(repo_root, "tf_adagrad")
    sources = sorted(
        os.path.relpath(p, package_root)
        for p in glob.glob(os.path.join(package_root, "**", "*.py"), recursive=True)
    )
    assert "keras2/legacy/__init__.py" in sources  # subpackages keep their folders
    expected_modules = sorted(set(sources) | {"_build_info.py"})
    assert names == sorted(
        [f"tf_adagrad/{name}" for name in expected_modules]
        + [f"tf_adagrad/{LIBRARY_NAME}"]
        + [f"{dist_info}/{name}" for name in ("LICENSE", "METADATA", "RECORD", "WHEEL")]
    )
    assert not any("test" in name for name in names)
    with open(os.path.join(repo_root, "bazel-bin", "tf_adagrad", "_tf_adagrad_ops.so"), "rb") as f:
        assert library == f.read()  # the library Bazel linked, renamed
    assert library_mode == 0o755
    record = {}
    exec(build_record, record)
    assert record["TF_VERSIONS"] == {TF_MAJOR_MINOR: tf.__version__}
    with open(os.path.join(repo_root, "LICENSE"), "rb") as f:
        assert license_text == f.read()


def test_wheel_record_lists_every_file_with_its_sha256(wheel_path):
    dist_info = f"tf_adagrad-{tf_adagrad.__version__}.dist-info"
    with zipfile.ZipFile(wheel_path) as wheel:
        rows = list(csv.reader(io.StringIO(wheel.read(f"{dist_info}/RECORD").decode())))
        recorded = {path: (digest, size) for path, digest, size in rows}
        assert sorted(recorded) == sorted(wheel.namelist())
        assert recorded.pop(f"{dist_info}/RECORD") == ("", "")
        for path, (digest, size) in recorded.items():
            data = wheel.read(path)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={expected}", path
            assert int(size) == len(data), path


def test_wheel_metadata_pins_tensorflow_keras_and_the_keras2_extra(wheel_path):
    with zipfile.ZipFile(wheel_path) as wheel:
        text = wheel.read(f"tf_adagrad-{tf_adagrad.__version__}.dist-info/METADATA").decode()
    headers, _, description = text.partition("\n\n")
    fields = [line.split(": ", 1) for line in headers.splitlines()]
    assert ["Name", "tf-adagrad"] in fields
    assert ["Version", tf_adagrad.__version__] in fields
    assert ["License", "Apache-2.0"] in fields
    assert ["Requires-Python", f">={PYTHON_VERSIONS[0]}"] in fields
    assert [value for key, value in fields if key == "Classifier" and "Python ::" in value] == [
        "Programming Language :: Python :: 3",
        *(f"Programming Language :: Python :: {version}" for version in PYTHON_VERSIONS),
    ]
    requirements = [value for key, value in fields if key == "Requires-Dist"]
    assert sorted(r for r in requirements if "extra ==" not in r) == REQUIREMENTS
    assert [value for key, value in fields if key == "Provides-Extra"] == ["keras2"]
    assert [r for r in requirements if "extra ==" in r] == [KERAS2_REQUIREMENT]
    assert Requirement(KERAS2_REQUIREMENT).specifier.contains("2.21.0")
    assert description.startswith("# tf-adagrad")


def test_make_build_installed_the_wheel_into_the_venv(tmp_path):
    distribution = importlib.metadata.distribution("tf-adagrad")
    assert distribution.version == tf_adagrad.__version__
    assert "Generator: tf-adagrad build_wheel.py" in distribution.read_text("WHEEL")
    installed = {str(path) for path in distribution.files}
    assert f"tf_adagrad/{LIBRARY_NAME}" in installed
    # Outside the source tree, the venv's Python imports the installed wheel.
    imported = run(
        [sys.executable, "-c", "import tf_adagrad; print(tf_adagrad.__file__)"],
        cwd=tmp_path,
        env=python_env(),
    )
    assert imported.strip() == str(distribution.locate_file("tf_adagrad/__init__.py"))


def test_the_tests_import_the_source_tree(repo_root):
    """pytest.ini's `pythonpath = .`: the tests test the source, not the wheel."""
    assert os.path.dirname(os.path.abspath(tf_adagrad.__file__)) == os.path.join(
        repo_root, "tf_adagrad"
    )


# The wheel installed into a new virtual environment.


def tensorflow_only_view(target):
    """Links TensorFlow and the distributions it requires (and nothing else)
    from this Python's site-packages into `target`: what `pip install
    tensorflow` would put in a new environment, without a download."""
    distributions, pending = {}, ["tensorflow"]
    while pending:
        name = canonicalize_name(pending.pop())
        if name in distributions:
            continue
        distributions[name] = distribution = importlib.metadata.distribution(name)
        for requirement in map(Requirement, distribution.requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    os.makedirs(target)
    for distribution in distributions.values():
        for path in distribution.files:
            top = path.parts[0]
            # Scripts (../../bin), caches, and .pth files (only read in
            # site directories) stay out.
            if top.startswith("..") or top == "__pycache__" or top.endswith(".pth"):
                continue
            link = os.path.join(target, top)
            if not os.path.lexists(link):
                os.symlink(distribution.locate_file(top), link)
    return sorted(distributions)


_FIT_ONE_STEP = r"""
import importlib.metadata, json, os, sys
import numpy as np
import tensorflow as tf
import keras
import tf_adagrad
from tf_adagrad import _versions

def one_step(optimizer):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((2,), dtype="int32"),
        keras.layers.Embedding(10, 4),
        keras.layers.Flatten(),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer=optimizer, loss="mse")
    before = [w.numpy().copy() for w in model.weights]
    ids = np.array([[1, 2], [3, 4], [5, 6], [7, 8]], dtype=np.int32)  # no duplicates
    history = model.fit(ids, np.arange(4, dtype=np.float32), batch_size=4, epochs=1, verbose=0)
    assert len(history.history["loss"]) == 1
    return before, [w.numpy() for w in model.weights]

before, ours = one_step(tf_adagrad.Adagrad(learning_rate=0.1))
_, theirs = one_step(keras.optimizers.Adagrad(learning_rate=0.1))
print(json.dumps({
    "python": "%d.%d" % sys.version_info[:2],
    "tf_adagrad_file": tf_adagrad.__file__,
    "library_path": tf_adagrad._loader.LIBRARY_PATH,
    "library_loaded": tf_adagrad._loader._library is not None,
    "version": tf_adagrad.__version__,
    "requires": importlib.metadata.requires("tf-adagrad"),
    "tensorflow": tf.__version__,
    "changed": [bool(np.any(a != b)) for a, b in zip(before, ours)],
    "max_gap_to_keras": max(float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs)),
}))
"""


def check_wheel_installs_and_fits(python, tensorflow_site, wheel_path, tmp_path):
    """Installs the wheel, with no index, into a new venv of `python` that
    sees nothing but the distributions in `tensorflow_site`, and trains a
    step there with tf_adagrad.Adagrad and with Keras' Adagrad."""
    venv = tmp_path / "venv"
    run([python, "-m", "venv", "--without-pip", str(venv)])
    venv_python = str(venv / "bin" / "python")
    site_packages = run(
        [venv_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    ).strip()
    with open(os.path.join(site_packages, "tensorflow_only.pth"), "w") as f:
        f.write(str(tensorflow_site) + "\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = python_env()

    # Before the install: TensorFlow is there, tf_adagrad and the test tools are not.
    found = run(
        [
            venv_python,
            "-c",
            "import importlib.util as u; print([u.find_spec(m) is not None for m in "
            "('tensorflow', 'tf_adagrad', 'pytest', 'hypothesis')])",
        ],
        cwd=outside,
        env=env,
    )
    assert found.strip() == "[True, False, False, False]"

    # pip of this venv installs into the new one; no index and no user or
    # environment settings (such as extra find-links), so nothing can be
    # fetched: the TensorFlow requirement must be met by what is there.
    pip = [sys.executable, "-m", "pip", "--isolated", "--python", venv_python]
    run([*pip, "install", "--no-index", wheel_path], cwd=outside, env=env)
    assert "No broken requirements found" in run([*pip, "check"], cwd=outside, env=env)

    result = json.loads(
        run([venv_python, "-c", _FIT_ONE_STEP], cwd=outside, env=env).splitlines()[-1]
    )
    installed_package = os.path.join(site_packages, "tf_adagrad")
    assert result["tf_adagrad_file"] == os.path.join(installed_package, "__init__.py")
    assert result["library_path"] == os.path.join(installed_package, LIBRARY_NAME)
    assert result["library_loaded"]
    assert result["version"] == tf_adagrad.__version__
    assert sorted(result["requires"]) == sorted([*REQUIREMENTS, KERAS2_REQUIREMENT])
    assert result["tensorflow"] == tf.__version__
    assert all(result["changed"]), result["changed"]
    # Keras' Adagrad on the same step agrees (distinct ids, so its sparse
    # path is the same math; Grappler may move Keras' result by an ulp).
    assert result["max_gap_to_keras"] < 1e-6
    return result


def test_wheel_installs_into_a_new_venv_with_only_tensorflow_and_fits(wheel_path, tmp_path):
    distributions = tensorflow_only_view(str(tmp_path / "tensorflow_only"))
    assert "tensorflow" in distributions and "pytest" not in distributions
    result = check_wheel_installs_and_fits(
        sys.executable, tmp_path / "tensorflow_only", wheel_path, tmp_path
    )
    assert result["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"


def find_python(version):
    """A Python `version` (such as "3.12") that runs: pyenv's (under `pyenv
    root`, $PYENV_ROOT or ~/.pyenv), else pythonX.Y on PATH; None if there
    is none."""
    roots = [os.environ.get("PYENV_ROOT"), os.path.expanduser("~/.pyenv")]
    if shutil.which("pyenv"):
        roots.insert(0, subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout)
    candidates = []
    for root in filter(None, (root.strip() for root in roots if root)):
        pattern = os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}")
        candidates += sorted(glob.glob(pattern), reverse=True)
    candidates.append(shutil.which(f"python{version}"))  # may be a shim of no Python
    for python in filter(None, candidates):
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode == 0 and out.stdout.strip() == version:
            return python
    return None


@pytest.fixture(scope="module")
def python_3_12():
    python = find_python("3.12")
    if python is None:
        pytest.skip("no Python 3.12 here (pyenv's or python3.12 on PATH) to install the wheel into")
    return python


@pytest.fixture(scope="module")
def tensorflow_site_for_python_3_12(python_3_12, pytestconfig, tmp_path_factory):
    """This TensorFlow and Keras, built for Python 3.12, installed (with their
    requirements) into a folder of their own: downloaded from the package
    index once (through pip's cache), then kept in pytest's cache, so later
    runs need no network."""
    cache = getattr(pytestconfig, "cache", None)  # None under -p no:cacheprovider
    root = cache.mkdir("packaging") if cache else tmp_path_factory.mktemp("packaging")
    site = root / f"cp312-tensorflow-{tf.__version__}-keras-{keras.__version__}"
    if not site.exists():
        partial = tempfile.mkdtemp(dir=root, prefix=f"{site.name}.partial-")
        run(
            [
                *(sys.executable, "-m", "pip", "--python", python_3_12, "install", "--quiet"),
                *("--only-binary=:all:", "--target", partial),
                f"tensorflow=={tf.__version__}",
                f"keras=={keras.__version__}",
            ],
            timeout=1800,
            env=python_env(),
        )
        try:
            os.rename(partial, site)
        except OSError:  # another run put it there first
            shutil.rmtree(partial)
    return site


def test_wheel_installs_under_python_3_12_and_fits(
    wheel_path, python_3_12, tensorflow_site_for_python_3_12, tmp_path
):
    """One wheel for every Python 3: Python 3.12 installs the wheel built with
    this Python, loads its op library into TensorFlow for 3.12, and fits."""
    result = check_wheel_installs_and_fits(
        python_3_12, tensorflow_site_for_python_3_12, wheel_path, tmp_path
    )
    assert result["python"] == "3.12"


# The version guard at import.


def package_with_build_record(tmp_path, tf_version):
    """A copy of the installed package whose build record names `tf_version`
    (and its library, under the name of that version's minor)."""
    copy = tmp_path / "packages" / "tf_adagrad"
    shutil.copytree(
        os.path.dirname(tf_adagrad.__file__), copy, ignore=shutil.ignore_patterns("__pycache__")
    )
    minor = ".".join(tf_version.split(".")[:2])
    (copy / "_build_info.py").write_text(f'TF_VERSIONS = {{"{minor}": "{tf_version}"}}\n')
    library = os.path.basename(tf_adagrad._loader.library_path(minor))
    os.rename(copy / LIBRARY_NAME, copy / library)
    return copy


def import_from(package, tmp_path):
    env = python_env()
    env["PYTHONPATH"] = str(package.parent)
    return subprocess.run(
        [sys.executable, "-c", "import tf_adagrad; print(tf_adagrad.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_refuses_a_build_for_another_tensorflow_minor_version(tmp_path):
    major, minor = tf.__version__.split(".")[:2]
    other = f"{major}.{int(minor) - 1}.3"
    package = package_with_build_record(tmp_path, other)
    out = import_from(package, tmp_path)
    assert out.returncode != 0
    last_line = out.stderr.strip().splitlines()[-1]
    assert last_line.startswith("tf_adagrad.OpLibraryError: "), out.stderr[-3000:]
    other_minor = f"{major}.{int(minor) - 1}"
    assert (
        f"op libraries in {package} were built for TensorFlow {other_minor} ({other}, as "
        f"recorded in {package / '_build_info.py'}), but TensorFlow {tf.__version__} is installed"
        in last_line
    )
    assert f"`pip install 'tensorflow>={other_minor},<{major}.{minor}'`" in last_line
    assert "`make build` in the tf-adagrad source tree" in last_line
    assert "python build_tools/configure.py && bazel build //:wheel" in last_line


def test_import_accepts_a_build_for_another_patch_release(tmp_path):
    major, minor, patch = tf.__version__.split(".")[:3]
    patch_number = int(re.match(r"\d+", patch).group())
    other = f"{major}.{minor}.{patch_number + 1}"
    package = package_with_build_record(tmp_path, other)
    out = import_from(package, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == str(package / "__init__.py")


def test_import_without_a_build_record_defers_to_the_first_op_call(tmp_path):
    """A source tree that is not built yet still imports; the op call then
    says what is missing."""
    package = package_with_build_record(tmp_path, tf.__version__)
    os.remove(package / "_build_info.py")
    env = python_env()
    env["PYTHONPATH"] = str(package.parent)
    script = (
        "import tensorflow as tf, tf_adagrad\n"
        "try:\n"
        "    tf_adagrad.ops.apply_adagrad(tf.Variable([1.0]), tf.Variable([1.0]), 0.1, 1e-7, [1.0])\n"
        "except tf_adagrad.OpLibraryError as e:\n"
        "    print(e)\n"
    )
    out = run([sys.executable, "-c", script], cwd=tmp_path, env=env)
    assert f"has no build record ({package / '_build_info.py'})" in out
    assert f"installed: {tf.__version__}" in out


@pytest.mark.parametrize("version", ["3.10.0", "3.12.4", "3.15.1"])
def test_import_accepts_the_tested_keras_releases(version):
    _versions.check_keras(version)


@pytest.mark.parametrize("version", ["3.9.2", "3.5.0", "3.16.0", "3.16.0.dev2026120703", "4.0.0"])
def test_import_refuses_a_keras_outside_the_tested_releases(version):
    with pytest.raises(ImportError) as info:
        _versions.check_keras(version)
    assert str(info.value) == (
        "tf_adagrad supports Keras 3.10 to 3.15 (its optimizers override private hooks of "
        f"Keras' optimizer, as tested with those releases); Keras {version} is installed. "
        "Install a supported Keras: `pip install 'keras>=3.10,<3.16'`."
    )


def test_import_checks_the_installed_keras(tmp_path, repo_root):
    """`import tf_adagrad` under a Keras that reports another version fails
    with that message before anything else is loaded."""
    script = (
        "import keras\n"
        "keras.__version__ = '3.9.2'\n"
        "try:\n"
        "    import tf_adagrad\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    env = {**python_env(), "PYTHONPATH": repo_root}  # the source tree's tf_adagrad
    out = run([sys.executable, "-c", script], cwd=tmp_path, env=env)
    assert "tf_adagrad supports Keras 3.10 to 3.15" in out
    assert "Keras 3.9.2 is installed" in out


# The version number.


def test_version_is_pep440_and_has_a_changelog_entry(repo_root):
    assert re.fullmatch(r"\d+\.\d+\.\d+", tf_adagrad.__version__)
    with open(os.path.join(repo_root, "CHANGELOG.md")) as f:
        changelog = f.read()
    assert re.search(rf"^## \[?{re.escape(tf_adagrad.__version__)}\]? ", changelog, re.MULTILINE)


# The wheel's TensorFlow range, from a build record of several minors.


def build_wheel_module(repo_root):
    spec = importlib.util.spec_from_file_location(
        "build_wheel", os.path.join(repo_root, "build_tools", "build_wheel.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_release_wheels_requirement_spans_its_libraries_minors(repo_root, tmp_path):
    build_wheel = build_wheel_module(repo_root)
    record = tmp_path / "_build_info.py"
    record.write_text(
        'TF_VERSIONS = {"2.19": "2.19.1", "2.18": "2.18.1", "2.21": "2.21.0", "2.20": "2.20.0"}\n'
    )
    assert build_wheel.tensorflow_minors(str(record)) == ">=2.18,<2.22"
    # A gap would admit a minor without a library.
    record.write_text('TF_VERSIONS = {"2.18": "2.18.1", "2.20": "2.20.0"}\n')
    with pytest.raises(SystemExit, match="expected consecutive minor versions"):
        build_wheel.tensorflow_minors(str(record))
    record.write_text('TF_VERSIONS = {"2.18": "2.19.1"}\n')
    with pytest.raises(SystemExit, match="maps '2.18' to '2.19.1', expected \"X.Y\": \"X.Y.Z\""):
        build_wheel.tensorflow_minors(str(record))


# configure.py's settings of the release wheel's TensorFlows.


def configure_module(repo_root, monkeypatch, release_envs):
    spec = importlib.util.spec_from_file_location(
        "configure", os.path.join(repo_root, "build_tools", "configure.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RELEASE_ENVS", str(release_envs))
    return module


def record_release(release_envs, minor, **settings):
    env = release_envs / f"tf{minor}"
    env.mkdir(parents=True)
    (env / "tf_settings.json").write_text(json.dumps(settings))


DEV_SETTINGS = {
    "version": "2.21.0",
    "include_dir": "/dev/include",
    "lib_dir": "/dev/lib",
    "lib_name": "libtensorflow_framework.so.2",
    "compile_flags": ["-D_GLIBCXX_USE_CXX11_ABI=1", "--std=c++17"],
}


def test_configure_writes_each_recorded_release_for_bazel(repo_root, monkeypatch, tmp_path):
    configure = configure_module(repo_root, monkeypatch, tmp_path)
    assert configure.tf_releases()["2.18"] == "2.18.1"
    record_release(tmp_path, "2.18", **{**DEV_SETTINGS, "version": "2.18.1", "lib_dir": "/r/lib"})
    # Only releases whose environment is complete (recorded) are configured.
    releases = configure.release_settings(False, DEV_SETTINGS)
    assert list(releases) == ["2.18"]
    lines = configure.bazelrc_lines(DEV_SETTINGS, releases, {"platform_tag": "x"}, None)
    assert "build --repo_env=TF_HEADER_DIR=/dev/include" in lines
    assert "build --define=tf_version=2.21.0" in lines
    assert "build --repo_env=TF_2_18_SHARED_LIBRARY_DIR=/r/lib" in lines
    assert "build --define=tf_version_2_18=2.18.1" in lines
    assert "build --cxxopt=--std=c++17" in lines


def test_configure_refuses_a_release_of_other_flags_or_version(repo_root, monkeypatch, tmp_path):
    configure = configure_module(repo_root, monkeypatch, tmp_path)
    record_release(
        tmp_path, "2.19", **{**DEV_SETTINGS, "version": "2.19.1", "compile_flags": ["--std=c++20"]}
    )
    with pytest.raises(
        SystemExit, match=r"TensorFlow 2\.19\.1 compiles ops with \['--std=c\+\+20'\]"
    ):
        configure.release_settings(False, DEV_SETTINGS)
    shutil.rmtree(tmp_path / "tf2.19")
    record_release(tmp_path, "2.19", **{**DEV_SETTINGS, "version": "2.19.0"})
    with pytest.raises(SystemExit, match="has TensorFlow 2.19.0, but build_tools/tf_releases.bzl"):
        configure.release_settings(False, DEV_SETTINGS)
