"""Runs tests/support/fuzz_ops.py (generated calls of the five ops) in a child
process, so that a crash fails this test instead of killing pytest.

The 10,000 calls of a run are split: 500 in the fast lane (`make
test-fast`), 9,500 more in a run marked slow, in two processes side by side
(4,750 calls each, the second seeded with the first's seed + 1); `make test`
runs both. The assertions, on each process, scale with its calls.

The seed is random unless TF_ADAGRAD_FUZZ_SEED is set, and is printed (and
named in any failure) so that a failing run can be replayed."""

import os
import random
import re
import subprocess
import sys

import pytest

EXAMPLES = 10_000
FAST_EXAMPLES = 500
FUZZ_OPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support", "fuzz_ops.py")


def check_run(seed, examples, returncode, stdout, stderr):
    """One fuzzing process' exit status and printed counts."""
    report = f"seed {seed}, exit status {returncode}\n{stdout}\n{stderr[-6000:]}"
    assert returncode == 0, report
    print(stdout)
    count = {key: int(value) for key, value in re.findall(r"^(\w[\w :]*): (\d+)$", stdout, re.M)}
    assert count["calls"] == examples, report
    assert count["crashes"] == 0, report
    assert count["matched the reference"] > examples // 5, report
    for placement in ("inside_sqrt", "outside_sqrt"):
        assert count[f"matched with epsilon {placement}"] > examples // 20, report
    assert count["matched rowwise"] > examples // 20, report
    assert count["rejected: InvalidArgumentError"] > examples // 10, report
    assert count["rejected: FailedPreconditionError"] > 0, report


@pytest.mark.parametrize(
    "examples, processes",
    [
        pytest.param(FAST_EXAMPLES, 1, id="500-calls"),
        pytest.param(EXAMPLES - FAST_EXAMPLES, 2, id="9500-calls", marks=pytest.mark.slow),
    ],
)
def test_fuzzed_calls_match_the_reference_or_are_rejected_cleanly(examples, processes):
    """`examples` calls split over `processes` processes running side by
    side (one core each), with seeds SEED, SEED + 1, ..."""
    fuzz_seed = int(os.environ.get("TF_ADAGRAD_FUZZ_SEED", random.randrange(2**31)))
    seeds = [fuzz_seed + i for i in range(processes)]
    print(f"fuzz seed: {fuzz_seed} (replay: TF_ADAGRAD_FUZZ_SEED={fuzz_seed}); seeds {seeds}")
    children = [
        subprocess.Popen(
            [
                sys.executable,
                FUZZ_OPS,
                "--examples",
                str(examples // processes),
                "--seed",
                str(seed),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in seeds
    ]
    try:
        outputs = [child.communicate(timeout=1200) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()
    for seed, child, (stdout, stderr) in zip(seeds, children, outputs):
        check_run(seed, examples // processes, child.returncode, stdout, stderr)
