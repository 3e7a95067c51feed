"""The docs stay true: every ```python block of README.md and docs/*.md runs.

The blocks of one page run in order in one child process
(tests/support/doc_blocks_runner.py), each as a script would: in a fresh
`__main__` namespace, in a new temporary directory of its own, with the
repository root first on PYTHONPATH (so the source tree's tf_adagrad is
imported); Keras' global state is cleared between blocks. Each block is
still a test of its own, with its own output in its failure message. A
crash or a timeout stops the child: that block fails, and the page's other
blocks run in a new child. Shell blocks (```sh, ```bash) and blocks without
a language are not run.

An HTML comment on the line right before a block's opening fence tells how
to run it:

  <!-- fixture: NAME -->          the code of fixture NAME runs first, in the
                                  same namespace (a block defined with
                                  "defines fixture: NAME" earlier in the same
                                  file, or an entry of FIXTURES below); the
                                  doc's prose says what the fixture defines
  <!-- defines fixture: NAME -->  the block runs as usual, and later blocks of
                                  the file may use it as fixture NAME
  <!-- in a new process after the previous block -->
                                  the block runs in a fresh process of its
                                  own, after the previous ```python block of
                                  the file, in that block's directory (for
                                  example to load a file the previous block
                                  saved, in a process that has imported
                                  nothing)
  <!-- not run: REASON -->        not run (a cluster of processes, a GPU); the
                                  block must still compile, and NOT_RUN below
                                  lists every such block, so none is dropped
                                  silently

Any other comment right before a block is an error, so that a typo cannot
change how a block runs.
"""

import collections
import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import threading
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
    ("docs/gpu.md", "needs a GPU"): 1,
}

# Phrases about how the project is made, or about tools its users do not
# have, not about the project: regular expressions, matched as whole words
# in lowercased text.
FORBIDDEN_PHRASES = (
    "the issues?",
    "done when",
    "development machine",
)
# Where they are looked for: the docs, and the comments, docstrings and
# messages of the source tree (this file, which lists them, aside).
SOURCE_DIRS = ["tf_adagrad", "tests", "bench", "examples", "build_tools", "kernels", "ops"]
SOURCE_SUFFIXES = {".py", ".h", ".cc", ".cu", ".cuh", ".sh", ".bzl"}

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
        if self.previous is not None and self.previous.not_run is not None:
            raise ValueError(f"{self.id}: runs after {self.previous.id}, which is not run")
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


RUNNER = ROOT / "tests" / "support" / "doc_blocks_runner.py"


def child_environment():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH")] if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["KERAS_BACKEND"] = "tensorflow"
    return env


def run_python(source, cwd, name, env=None):
    """`source` as a script in a fresh process, in `cwd`."""
    script = Path(cwd) / f"{name}.py"
    script.write_text(source, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=env or child_environment(),
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )


def run_block(block, cwd):
    """One block in a process of its own (after the blocks it runs after)."""
    if block.previous is not None:
        run_block(block.previous, cwd)
    result = run_python(block.source(), cwd, f"block_{block.line}")
    assert result.returncode == 0, (
        f"{block.id} failed (exit {result.returncode}):\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    return result


def output_tails(stdout, stderr):
    return f"--- stdout ---\n{stdout[-3000:]}\n--- stderr ---\n{stderr[-5000:]}"


def read_text(path):
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def block_output(logs, block):
    """What a block run by the page's child wrote."""
    return output_tails(
        read_text(logs / f"block_{block.line}.stdout"),
        read_text(logs / f"block_{block.line}.stderr"),
    )


class DocPages:
    """Runs the pages' blocks, once, when the first block is tested. On each
    page, the blocks with no "in a new process after the previous block"
    run in one child process, in order, then the others each in a process of
    its own, in the directory of the block they run after. Pages run side by
    side, one per core. Only the blocks this pytest run selected run, with
    the blocks they run after."""

    def __init__(self, tmp_path_factory, selected_ids):
        self.tmp_path_factory = tmp_path_factory
        self.selected_ids = selected_ids
        self.failures = {}  # block id -> why it failed, or None when it passed
        self.ran = False
        self.mktemp_lock = threading.Lock()

    def failure(self, block):
        if not self.ran:
            self.ran = True
            pages = sorted({b.path for b in RUN_BLOCKS if b.id in self.selected_ids})
            with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
                # list() re-raises what a page's run raised.
                list(pool.map(self.run_page, pages))
        return self.failures[block.id]

    def mktemp(self, name):
        with self.mktemp_lock:
            return self.tmp_path_factory.mktemp(re.sub(r"[^\w-]+", "-", name))

    def run_page(self, path):
        page = [b for b in RUN_BLOCKS if b.path == path]
        needed = set()
        for block in page:
            if block.id in self.selected_ids:
                while block is not None:
                    needed.add(block.id)
                    block = block.previous
        page = [b for b in page if b.id in needed]
        cwd = {}
        for block in page:
            cwd[block.id] = cwd[block.previous.id] if block.previous else self.mktemp(block.id)
        self.run_in_one_process([b for b in page if b.previous is None], cwd)
        for block in page:
            if block.previous is None:
                continue
            if self.failures[block.previous.id] is not None:
                self.failures[block.id] = (
                    f"{block.id} did not run: {block.previous.id}, which it runs after, failed"
                )
                continue
            result = run_python(block.source(), cwd[block.id], f"block_{block.line}")
            self.failures[block.id] = (
                None
                if result.returncode == 0
                else f"{block.id} failed (exit {result.returncode}):\n"
                + output_tails(result.stdout, result.stderr)
            )

    def run_in_one_process(self, blocks, cwd):
        """The blocks in order in one child; after a crash or a timeout, the
        block that was running fails and the rest go on in a new child."""
        logs = self.mktemp(f"{blocks[0].path.name}-logs") if blocks else None
        pending, attempt = list(blocks), 0
        while pending:
            attempt += 1
            plan = [
                {
                    "id": b.id,
                    "source": b.source(),
                    "script": str(cwd[b.id] / f"block_{b.line}.py"),
                    "cwd": str(cwd[b.id]),
                    "stdout": str(logs / f"block_{b.line}.stdout"),
                    "stderr": str(logs / f"block_{b.line}.stderr"),
                    "timeout_s": BLOCK_TIMEOUT_S,
                }
                for b in pending
            ]
            plan_path = logs / f"plan-{attempt}.json"
            results_path = logs / f"results-{attempt}.jsonl"
            plan_path.write_text(json.dumps(plan), encoding="utf-8")
            try:
                child = subprocess.run(
                    [sys.executable, str(RUNNER), str(plan_path), str(results_path)],
                    env=child_environment(),
                    capture_output=True,
                    text=True,
                    timeout=BLOCK_TIMEOUT_S * len(pending) + 60,
                )
                how = (
                    f"killed by {signal.Signals(-child.returncode).name}"
                    if child.returncode < 0
                    else f"exit {child.returncode}"
                )
                child_output = (
                    f"\n--- the process ---\n{output_tails(child.stdout, child.stderr)}"
                    if child.stdout.strip() or child.stderr.strip()
                    else ""
                )
            except subprocess.TimeoutExpired:
                how, child_output = "stopped after its timeout", ""
            by_id = {b.id: b for b in pending}
            done = set()
            for line in read_text(results_path).splitlines():
                entry = json.loads(line)
                if "id" in entry:
                    done.add(entry["id"])
                    self.failures[entry["id"]] = (
                        None
                        if entry["ok"]
                        else f"{entry['id']} failed:\n{entry['error']}\n"
                        + block_output(logs, by_id[entry["id"]])
                    )
            stopped = next((b for b in pending if b.id not in done), None)
            if stopped is not None:
                self.failures[stopped.id] = (
                    f"{stopped.id} stopped the process running its page ({how}; a block "
                    f"running past {BLOCK_TIMEOUT_S} s stops it with a traceback in its stderr):\n"
                    + block_output(logs, stopped)
                    + child_output
                )
            pending = [b for b in pending if b.id not in done and b is not stopped]


@pytest.fixture(scope="session")
def doc_pages(request, tmp_path_factory):
    selected = {
        item.callspec.params["block"].id
        for item in request.session.items
        if getattr(item, "function", None) is test_python_block_runs
    }
    return DocPages(tmp_path_factory, selected)


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[b.id for b in RUN_BLOCKS])
def test_python_block_runs(block, doc_pages):
    failure = doc_pages.failure(block)
    if failure is not None:
        pytest.fail(failure, pytrace=False)


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


def checked_for_phrases():
    sources = [
        path
        for folder in SOURCE_DIRS
        for path in sorted((ROOT / folder).rglob("*"))
        if path.is_file()
        and (path.suffix in SOURCE_SUFFIXES or path.name == "BUILD")
        and "__pycache__" not in path.parts
        and path != Path(__file__).resolve()
    ]
    return [*DOC_FILES, ROOT / "CHANGELOG.md", ROOT / "Makefile", *sources]


COMMENT_MARK = re.compile(r"^\s*(#+|//+|/?\*+|>)?\s*")


def phrase_hits(phrase, paths):
    """`file:line: text` where `phrase` occurs, also across a line break
    (prose and comments wrap; a line's comment marker is left out)."""
    pattern = re.compile(rf"(?<!\w){phrase}(?!\w)")
    hits = []
    for path in paths:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        text = [COMMENT_MARK.sub("", line).strip().lower() for line in lines]
        for i, line in enumerate(text):
            following = text[i + 1] if i + 1 < len(text) else ""
            if pattern.search(line) or (
                pattern.search(f"{line} {following}") and not pattern.search(following)
            ):
                name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                hits.append(f"{name}:{i + 1}: {lines[i].strip()}")
    return hits


@pytest.mark.parametrize("phrase", FORBIDDEN_PHRASES)
def test_docs_and_sources_speak_of_the_project_only(phrase):
    hits = phrase_hits(phrase, checked_for_phrases())
    assert not hits, "\n".join(hits)


def test_phrase_check_finds_phrases_in_prose_and_comments(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "# The step is finished and done\n"
        "# when it returns.\n"
        'LOG = "see the development machine"\n'
        "# develops the data; the issuer\n",
        encoding="utf-8",
    )
    hits = {phrase: phrase_hits(phrase, [sample]) for phrase in FORBIDDEN_PHRASES}
    assert [len(hits["done when"]), len(hits["development machine"])] == [1, 1]
    assert sum(len(found) for found in hits.values()) == 2, hits


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


# An optimizer given to the Keras it is not for: for the model's Keras, the
# environment and import that give it, and the optimizers of the other one.
WRONG_KERAS = {
    "keras": (
        {},
        "import keras as framework",
        [
            "tf_adagrad.keras2.Adagrad",
            "tf_adagrad.keras2.RowwiseAdagrad",
            "tf_adagrad.keras2.legacy.Adagrad",
            "tf_adagrad.keras2.legacy.RowwiseAdagrad",
        ],
    ),
    "tf_keras": (
        {"TF_USE_LEGACY_KERAS": "1"},
        "import tensorflow as tf\nframework = tf.keras",
        ["tf_adagrad.Adagrad", "tf_adagrad.RowwiseAdagrad"],
    ),
}
UNKNOWN_OPTIMIZER = "ValueError: Could not interpret optimizer identifier: "


@pytest.mark.parametrize("framework", sorted(WRONG_KERAS))
def test_troubleshooting_quotes_the_error_for_an_optimizer_of_the_other_keras(framework, tmp_path):
    """Each Keras refuses the other one's optimizers with the message that
    docs/troubleshooting.md quotes."""
    environment, import_framework, optimizers = WRONG_KERAS[framework]
    source = f"""\
{import_framework}
import tf_adagrad
import tf_adagrad.keras2

assert framework.Sequential.__module__.startswith("{framework}."), framework.Sequential
for optimizer in [{", ".join(f"{name}()" for name in optimizers)}]:
    model = framework.Sequential([framework.Input((3,)), framework.layers.Dense(1)])
    try:
        model.compile(optimizer=optimizer, loss="mse")
        print("compiled with", type(optimizer))
    except ValueError as error:
        print(f"{{type(optimizer).__module__}}.{{type(optimizer).__name__}} ValueError: {{error}}")
"""
    result = run_python(source, tmp_path, "compile", env={**child_environment(), **environment})
    assert result.returncode == 0, result.stderr[-3000:]
    messages = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert len(messages) == len(optimizers), result.stdout
    # The message shows the optimizer's repr, which names its Keras.
    their_keras = "a Keras 3 optimizer" if framework == "tf_keras" else "a tf_keras (Keras 2)"
    for name, message in messages.items():
        public_name = name.rsplit(".", 2)[0] + "." + name.rsplit(".", 1)[1]
        assert message.startswith(f"{UNKNOWN_OPTIMIZER}<{public_name} name="), message
        assert their_keras in message, message
    troubleshooting = " ".join(
        (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8").split()
    )
    quoted = re.search(re.escape(UNKNOWN_OPTIMIZER) + r"<[^>]*>", troubleshooting)
    assert quoted, "docs/troubleshooting.md quotes no such message"
    if framework == "keras":
        assert quoted.group(0) in messages.values(), (quoted.group(0), messages)
