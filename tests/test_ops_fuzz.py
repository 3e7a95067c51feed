"""Runs tests/support/fuzz_ops.py (generated calls of the five ops) in a child
process, so that a crash fails this test instead of killing pytest.

The 10,000 calls of a run are split in two: 500 in the fast lane (`make
test-fast`), 9,500 more in a run marked slow, with a seed of its own; `make
test` runs both. The assertions scale with the number of calls.

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


@pytest.mark.parametrize(
    "examples",
    [
        pytest.param(FAST_EXAMPLES, id="500-calls"),
        pytest.param(EXAMPLES - FAST_EXAMPLES, id="9500-calls", marks=pytest.mark.slow),
    ],
)
def test_fuzzed_calls_match_the_reference_or_are_rejected_cleanly(examples):
    fuzz_seed = int(os.environ.get("TF_ADAGRAD_FUZZ_SEED", random.randrange(2**31)))
    print(f"fuzz seed: {fuzz_seed} (replay: TF_ADAGRAD_FUZZ_SEED={fuzz_seed})")
    out = subprocess.run(
        [sys.executable, FUZZ_OPS, "--examples", str(examples), "--seed", str(fuzz_seed)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    report = f"seed {fuzz_seed}, exit status {out.returncode}\n{out.stdout}\n{out.stderr[-6000:]}"
    assert out.returncode == 0, report
    print(out.stdout)
    count = {
        key: int(value) for key, value in re.findall(r"^(\w[\w :]*): (\d+)$", out.stdout, re.M)
    }
    assert count["calls"] == examples, report
    assert count["crashes"] == 0, report
    assert count["matched the reference"] > examples // 5, report
    for placement in ("inside_sqrt", "outside_sqrt"):
        assert count[f"matched with epsilon {placement}"] > examples // 20, report
    assert count["matched rowwise"] > examples // 20, report
    assert count["rejected: InvalidArgumentError"] > examples // 10, report
    assert count["rejected: FailedPreconditionError"] > 0, report
