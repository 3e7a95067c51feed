"""Child processes for the tests that run scenario scripts and clusters on
127.0.0.1 (tests/test_distribute.py, tests/test_keras2_distribute.py and
conftest.py's session fixtures), and readers of what the children wrote
(load_groups, case_result).

Each process runs in a process group of its own, so that killing the group
ends everything it started; `processes()` kills every process it started
when its block ends, pass or fail. A process' output (stdout and stderr)
goes to a log file under the log directory, copied there by a thread of
the test process, which also wakes up whoever waits for a line of it.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

TIMEOUT_S = 300
SUPPORT_DIR = os.path.dirname(os.path.abspath(__file__))
# A worker or parameter server task of a ParameterServerStrategy cluster.
CLUSTER_SERVER = os.path.join(SUPPORT_DIR, "cluster_server.py")


class Output:
    """Copies a process' output to its log file, and keeps it for waiters."""

    def __init__(self, pipe, log_path):
        self.text = ""
        self.closed = False
        self.changed = threading.Condition()
        self.log = open(log_path, "w")  # closed by the copying thread
        self.thread = threading.Thread(target=self._copy, args=(pipe,), daemon=True)
        self.thread.start()

    def _copy(self, pipe):
        with pipe, self.log:
            for line in iter(pipe.readline, ""):
                self.log.write(line)
                self.log.flush()
                with self.changed:
                    self.text += line
                    self.changed.notify_all()
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def wait_for(self, text, timeout):
        """True once `text` was printed; False if the output ended first
        (the process exited) or `timeout` seconds passed."""
        with self.changed:
            self.changed.wait_for(lambda: text in self.text or self.closed, timeout)
            return text in self.text

    def finish(self, timeout=30):
        """Waits until the copying thread has read all of the output."""
        self.thread.join(timeout)


class Processes:
    """Starts Python scripts as child processes; logs go to `log_dir`."""

    def __init__(self, log_dir):
        self.log_dir = str(log_dir)
        self.started = []

    def start(self, name, script, *args):
        """`python script *args` as `name` (its log: `log_dir/name.log`)."""
        process = subprocess.Popen(
            [sys.executable, script, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, killed as one
        )
        process.name = name
        process.output = Output(process.stdout, os.path.join(self.log_dir, f"{name}.log"))
        self.started.append(process)
        return process

    def wait(self, processes):
        """Waits for all of `processes` to exit, TIMEOUT_S in all; fails the
        test if one runs over or exits with an error."""
        deadline = time.monotonic() + TIMEOUT_S
        for process in processes:
            try:
                process.wait(timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{process.name} ran over {TIMEOUT_S} s:\n{self.log(process)}")
            process.output.finish()
            if process.returncode != 0:
                pytest.fail(
                    f"{process.name} exited with {process.returncode}:\n{self.log(process)}"
                )

    def wait_for_line(self, process, text):
        """Waits until `process` prints `text`; fails the test if it exits
        before, or TIMEOUT_S passes."""
        if not process.output.wait_for(text, TIMEOUT_S):
            if process.poll() is None:
                pytest.fail(f"{process.name} did not print {text!r} in {TIMEOUT_S} s")
            process.wait()
            pytest.fail(
                f"{process.name} exited with {process.returncode} before printing {text!r}:\n"
                f"{self.log(process)}"
            )

    @staticmethod
    def log(process, tail=6000):
        """The end of what `process` printed so far."""
        with process.output.changed:
            return process.output.text[-tail:]

    def kill_all(self):
        for process in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            process.output.finish()


@contextlib.contextmanager
def processes(log_dir):
    """A Processes whose processes are all killed when the block ends."""
    started = Processes(log_dir)
    try:
        yield started
    finally:
        started.kill_all()


def run_to_completion(log_dir, name, script, *args):
    """Runs `python script *args` as `name` to its end (TIMEOUT_S at most),
    its log in `log_dir`; fails the test if it fails."""
    with processes(log_dir) as run:
        run.wait([run.start(name, script, *args)])


def run_multi_worker_cluster(log_dir, script, outs, *args):
    """Runs a MultiWorkerMirroredStrategy cluster on 127.0.0.1 to its end:
    worker i is `python script multi-worker *args --cluster CLUSTER --task i
    --out outs[i]`, one worker per path of `outs`."""
    cluster = json.dumps({"worker": [f"127.0.0.1:{port}" for port in free_ports(len(outs))]})
    with processes(log_dir) as run:
        workers = [
            run.start(
                f"worker{task}",
                script,
                "multi-worker",
                *args,
                "--cluster",
                cluster,
                "--task",
                str(task),
                "--out",
                str(out),
            )
            for task, out in enumerate(outs)
        ]
        run.wait(workers)


def load_groups(path):
    """The .npz that a scenario script wrote (its save()), by group: a list
    of arrays where the keys are "group:0", "group:1", ..., else a dict by
    name."""
    npz = np.load(path)
    result = {}
    for key in npz.files:
        group, name = key.split(":", 1)
        result.setdefault(group, {})[name] = npz[key]
    return {
        group: [named[str(i)] for i in range(len(named))]
        if all(k.isdigit() for k in named)
        else named
        for group, named in result.items()
    }


def case_result(results, name):
    """The result of case `name` from a child process' {case name: result},
    where a case that raised left {"error": its traceback}; fails the test
    with that traceback."""
    if name not in results:
        pytest.fail(f"case {name} was not run in the child process")
    result = results[name]
    if isinstance(result, dict) and "error" in result:
        pytest.fail(f"case {name} raised in its child process:\n{result['error']}")
    return result


def free_ports(count):
    """`count` TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_parameter_server_cluster(run, ps_have_ops=True):
    """Starts the 2 workers and 2 parameter servers of a
    ParameterServerStrategy cluster on 127.0.0.1 with `run` (a Processes),
    and waits until all 4 serve. The workers always load the op library,
    the parameter servers only if `ps_have_ops`. Returns the cluster spec
    as JSON, for the coordinators' `--cluster`.

    A cluster serves any number of coordinators, one after the other."""
    worker_ports, ps_ports = free_ports(2), free_ports(2)
    cluster = json.dumps(
        {
            "worker": [f"127.0.0.1:{port}" for port in worker_ports],
            "ps": [f"127.0.0.1:{port}" for port in ps_ports],
        }
    )
    servers = []
    for job in ("worker", "ps"):
        for task in range(2):
            flags = [] if job == "worker" or ps_have_ops else ["--without-ops"]
            servers.append(
                run.start(
                    f"{job}{task}",
                    CLUSTER_SERVER,
                    "--cluster",
                    cluster,
                    "--job",
                    job,
                    "--task",
                    str(task),
                    *flags,
                )
            )
    for server in servers:
        run.wait_for_line(server, "serving")
    return cluster
