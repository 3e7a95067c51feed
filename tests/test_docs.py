"""The docs stay true: every ```python block of README.md and docs/*.md runs.

Each block runs in a fresh Python process, with the repository root first on
PYTHONPATH (so the source tree's tf_adagrad is imported) and a new temporary
directory as its working directory. Shell blocks (```sh, ```bash) and blocks
without a language are not run.

An HTML comment on the line right before a block's opening fence tells how
to run it:

  <!-- fixture: NAME -->          the code of fixture NAME runs first, in the
                                  same process (a block defined with
                                  "defines fixture: NAME" earlier in the same
                                  file, or an entry of FIXTURES below); the
                                  doc's prose says what the fixture defines
  <!-- defines fixture: NAME -->  the block runs as usual, and later blocks of
                                  the file may use it as fixture NAME
  <!-- in a new process after the previous block -->
                                  the previous ```python block of the file runs
                                  first in its own process, in the same
                                  directory (for example to save a file that
                                  this block loads in a fresh process)
  <!-- not run: REASON -->        not run (a cluster of processes, a GPU); the
                                  block must still compile, and NOT_RUN below
                                  lists every such block, so none is dropped
                                  silently

Any other comment right before a block is an error, so that a typo cannot
change how a block runs.
"""

import collections
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 15 * 1024
BLOCK_TIMEOUT_S = 300

# Fixtures the docs name but do not show: a built Keras `model`.
FIXTURES = {
    "small_click_model": """\
import keras

model = keras.Sequential([
    keras.Input((3,), dtype="int32"),
    keras.layers.Embedding(1000, 8),
    keras.layers.Flatten(),
    keras.layers.Dense(1, activation="sigmoid"),
])
""",
}

# (file, reason) -> how many blocks are marked "not run" with that reason.
NOT_RUN = {
    (
        "docs/distributed.md",
        "needs a cluster of worker and parameter server processes (tests/test_sharded.py starts one)",
    ): 2,
    ("docs/ops.md", "signatures only; the examples below call each op"): 1,
}

# Phrases about how the project is made, not about the project.
FORBIDDEN_PHRASES = ("the issue", "done when", "development machine")

FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*(.*?)\s*-->$")
AFTER_PREVIOUS = "in a new process after the previous block"


class Block:
    def __init__(self, path, line, code, directives, previous, defined):
        self.path, self.line, self.code = path, line, code
        self.id = f"{path.relative_to(ROOT)}:{line}"
        self.fixtures, self.defines, self.not_run = [], None, None
        self.previous = None
        for directive in directives:
            key, _, value = (part.strip() for part in directive.partition(":"))
            if key == "fixture" and value:
                self.fixtures += [name.strip() for name in value.split(",")]
            elif key == "defines fixture" and value:
                self.defines = value
            elif key == "not run" and value:
                self.not_run = value
            elif directive == AFTER_PREVIOUS:
                if previous is None:
                    raise ValueError(f"{self.id}: no previous ```python block to run first")
                self.previous = previous
            else:
                raise ValueError(f"{self.id}: unknown directive <!-- {directive} -->")
        missing = [n for n in self.fixtures if n not in defined and n not in FIXTURES]
        if missing:
            raise ValueError(f"{self.id}: unknown fixture(s) {missing}")
        self.fixture_code = [defined.get(name) or FIXTURES[name] for name in self.fixtures]

    def source(self):
        return "\n".join([*self.fixture_code, self.code])


def python_blocks(path):
    """The ```python blocks of one markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, defined, previous = [], {}, None
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not re.match(r"^```\s*$", lines[end]):
            end += 1
        if opening.group(1) in ("python", "py"):
            directives, j = [], i - 1
            while j >= 0 and DIRECTIVE.match(lines[j]):
                directives.insert(0, DIRECTIVE.match(lines[j]).group(1))
                j -= 1
            block = Block(
                path, i + 1, "\n".join(lines[i + 1 : end]) + "\n", directives, previous, defined
            )
            if block.defines:
                defined[block.defines] = block.source()
            blocks.append(block)
            previous = block
        i = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOC_FILES for block in python_blocks(path)]
RUN_BLOCKS = [block for block in ALL_BLOCKS if block.not_run is None]
NOT_RUN_BLOCKS = [block for block in ALL_BLOCKS if block.not_run is not None]


def run_python(source, cwd, name):
    script = Path(cwd) / f"{name}.py"
    script.write_text(source, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH")] if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["KERAS_BACKEND"] = "tensorflow"
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )


def run_block(block, cwd):
    if block.previous is not None:
        run_block(block.previous, cwd)
    result = run_python(block.source(), cwd, f"block_{block.line}")
    assert result.returncode == 0, (
        f"{block.id} failed (exit {result.returncode}):\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    return result


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[b.id for b in RUN_BLOCKS])
def test_python_block_runs(block, tmp_path):
    run_block(block, tmp_path)


@pytest.mark.parametrize("block", NOT_RUN_BLOCKS, ids=[b.id for b in NOT_RUN_BLOCKS])
def test_block_marked_not_run_compiles(block):
    compile(block.source(), block.id, "exec")


def test_blocks_marked_not_run_are_the_listed_ones():
    marked = collections.Counter((str(b.path.relative_to(ROOT)), b.not_run) for b in NOT_RUN_BLOCKS)
    assert dict(marked) == NOT_RUN


def test_every_python_fence_is_collected():
    """An independent count of ```python fences, so that a parsing slip
    cannot leave a block out."""
    fences = sum(
        len(re.findall(r"^```(?:python|py)\s*$", path.read_text(encoding="utf-8"), re.M))
        for path in DOC_FILES
    )
    assert len(ALL_BLOCKS) == fences
    assert len(RUN_BLOCKS) >= 10


def test_readme_is_a_front_page():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes, more than {README_MAX_BYTES}"


@pytest.mark.parametrize("phrase", FORBIDDEN_PHRASES)
def test_docs_speak_of_the_project_only(phrase):
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in [*DOC_FILES, ROOT / "CHANGELOG.md"]
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if phrase in line.lower()
    ]
    assert not found, "\n".join(found)


def test_relative_links_point_to_files():
    broken = []
    for path in [*DOC_FILES, ROOT / "CHANGELOG.md"]:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            if not (path.parent / target.split("#")[0]).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, broken


KERAS_MISSING_CLASS = (
    "Could not locate class 'Adagrad'. Make sure custom classes and functions are "
    "decorated with `@keras.saving.register_keras_serializable()`."
)


def test_troubleshooting_quotes_keras_error_for_a_keras_file_loaded_without_tf_adagrad(tmp_path):
    """The message docs/troubleshooting.md quotes is the one Keras gives."""
    troubleshooting = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    assert KERAS_MISSING_CLASS in " ".join(troubleshooting.split())
    saves = next(
        b for b in RUN_BLOCKS if b.id.startswith("docs/export.md") and "model.save(" in b.code
    )
    run_block(saves, tmp_path)
    result = run_python(
        "import keras\nkeras.models.load_model('model.keras')\n",
        tmp_path,
        "load_without_tf_adagrad",
    )
    assert result.returncode != 0
    assert f"TypeError: {KERAS_MISSING_CLASS}" in result.stderr, result.stderr[-3000:]
