# Thin wrappers; see README.md. `make build` is safe to re-run.
PYTHON_BOOTSTRAP ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BAZEL ?= bazel
# Where Debian's bazel-platforms and bazel-rules-java put the local repos
# that WORKSPACE points to.
DEBIAN_BAZEL_REPOS := /usr/share/bazel
# The op library, its build record, the wheel (bazel-bin/dist/), the C++ test
# programs, and the CUDA test program (which exists when configure.py turns
# CUDA on).
BAZEL_TARGETS := //:op_libraries //:wheel //tests/cc:adagrad_math_test \
  //tests/cc:adagrad_math_sanitize_test //:cuda_test_programs
# The compiler of the CUDA kernels (configure.py looks for the same name).
CUDA_CLANG := clang++-16
CUDA_CLANG_PACKAGE := clang-16
# The C++/CUDA formatter (.clang-format) that `make test` checks with.
CLANG_FORMAT := clang-format-16
CPP_SOURCES := $(wildcard kernels/*.h kernels/*.cuh kernels/*.cc ops/*.h ops/*.cc \
  tests/cc/*.h tests/cc/*.cc tests/cuda/*.cu)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help build wheel compat lint test test-fast demo bench clean gpu-dry-run

# Times measured on a 2-core AMD EPYC VM (README.md and docs/development.md
# give the same ones).
help:
	@echo "make build      creates .venv/, installs TensorFlow and the tools, builds the op library"
	@echo "                and the wheel with Bazel (about 4 minutes the first time, seconds after)"
	@echo "make wheel      build, then the release wheel: one op library per TensorFlow release"
	@echo "                of build_tools/tf_releases.bzl (bazel-bin/release_dist/; about 24 minutes"
	@echo "                the first time, seconds after)"
	@echo "make compat     wheel, then its smoke suite under every supported TensorFlow, Python"
	@echo "                and oldest Keras (docs/development.md; about 5 minutes after the first run)"
	@echo "make test       build, linters, the whole test suite (9 to 14 minutes after the build)"
	@echo "make test-fast  build, linters, the suite without the tests marked slow (about 4 minutes)"
	@echo "make demo       build, then the demo recommender (about 3 minutes)"
	@echo "make bench      build, then the benchmark (about 23 minutes)"
	@echo "make gpu-dry-run  rehearses on the CPU the GPU check for a CUDA host (docs/gpu.md)"
	@echo "make clean      bazel clean, and removes the op library copied into the source tree"


$(VENV)/.deps-installed: requirements-dev.txt
	[ -x $(PY) ] || $(PYTHON_BOOTSTRAP) -m venv $(VENV) || { \
	  echo "venv failed: installing Debian's python3-venv"; rm -rf $(VENV); \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv && \
	  $(PYTHON_BOOTSTRAP) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# Bazel is required; without clang-16 the build goes on without GPU kernels
# (configure.py says so). The op library and its build record are also copied
# into the source tree, so that tf_adagrad imports from there too.
build: $(VENV)/.deps-installed
	command -v $(BAZEL) >/dev/null && [ -d $(DEBIAN_BAZEL_REPOS)/tools/platforms ] && \
	  [ -d $(DEBIAN_BAZEL_REPOS)/rules/java ] || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    bazel-bootstrap bazel-platforms bazel-rules-java; }
	command -v $(CUDA_CLANG) >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(CUDA_CLANG_PACKAGE); } || \
	  echo "make build: could not install $(CUDA_CLANG_PACKAGE); building without CUDA kernels"
	command -v $(CLANG_FORMAT) >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(CLANG_FORMAT); }
	$(PY) build_tools/configure.py
	$(BAZEL) build $(BAZEL_TARGETS)
	rm -f tf_adagrad/_tf_adagrad_ops*.so
	install -m 644 bazel-bin/op_libraries/* tf_adagrad/
	$(PY) -m pip install --quiet --no-deps --force-reinstall bazel-bin/dist/tf_adagrad-*.whl

# The release wheel: the op library built against each TensorFlow release of
# build_tools/tf_releases.bzl, each installed once into .tf_builds/ (a
# download of about 600 MB each).
wheel: build
	$(PY) build_tools/configure.py --release
	$(BAZEL) build //:release_wheel

# The release wheel installed and smoke-tested in each environment of the
# support matrix (build_tools/compat.py); not part of `make test`.
compat: wheel
	$(PY) build_tools/compat.py

# The linters, which `make test` and `make test-fast` run first.
lint: build
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(CLANG_FORMAT) --dry-run --Werror $(CPP_SOURCES)

# The whole suite (CI runs this).
test: build lint
	$(VENV)/bin/pytest -ra --durations=15 tests

# Every test module without the tests marked slow (pytest.ini): minutes.
test-fast: build lint
	$(VENV)/bin/pytest -ra --durations=15 -m "not slow" tests

demo: build
	$(PY) examples/recommender.py

bench: build
	$(PY) bench/bench.py

# The procedure that runs the GPU tests on a CUDA host without TensorFlow
# (build_tools/gpu_check.py, docs/gpu.md), carried out here on the CPU:
# downloads TensorFlow for Python 3.12 once (into .device_payload/), packs
# and splits it, takes the parts in and unpacks them as the GPU host would,
# and runs the tests' CPU side with Python 3.12. Not part of `make test`:
# the first run packs for minutes. Builds the op library first.
gpu-dry-run: build
	python3 build_tools/gpu_check.py --dry-run

clean:
	$(BAZEL) clean
	rm -f tf_adagrad/_tf_adagrad_ops*.so tf_adagrad/_build_info.py
