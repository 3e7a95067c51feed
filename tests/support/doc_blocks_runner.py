"""Runs a docs page's code blocks one after another in this process, for
tests/test_docs.py.

    python doc_blocks_runner.py PLAN RESULTS

PLAN is a JSON list of blocks, each {"id", "source", "script", "cwd",
"stdout", "stderr", "timeout_s"}. Each block runs as a script would: in a
fresh `__main__` module, with `__file__` its script (the source is written
there first, so that tracebacks show its lines), `sys.argv` [script], in its
working directory, with its output (file descriptors 1 and 2, so
TensorFlow's C++ logging too) in its own files. The working directory,
`os.environ`, `sys.argv` and `sys.path` are restored after each block, and
Keras' global state is cleared. A block that runs past its timeout stops
this process with a traceback of where it was (in its stderr file).

RESULTS gets one JSON line when a block starts ({"started": id}) and one
when it ends ({"id", "ok", "error", "seconds"}), written at once, so that
the parent can tell which block was running when a crash stopped this
process, and run the rest in a new one.

Python's standard library only: TensorFlow is imported by the blocks, not
here (the first block of tf_keras' page sets TF_USE_LEGACY_KERAS before it
imports TensorFlow).
"""

import faulthandler
import gc
import json
import os
import sys
import time
import traceback
import types


def clear_framework_state():
    """What a fresh process would not have: Keras' (and tf_keras') global
    graph, layer-name counters and caches."""
    for name in ("keras", "tf_keras"):
        module = sys.modules.get(name)
        backend = getattr(module, "backend", None)
        if backend is not None and hasattr(backend, "clear_session"):
            backend.clear_session()
    gc.collect()


def block_traceback(error):
    """The traceback from the block's code down (this runner's frame left out)."""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__.tb_next))


def run_block(block):
    """Runs one block; returns (ok, error text)."""
    with open(block["script"], "w", encoding="utf-8") as f:
        f.write(block["source"])
    code = compile(block["source"], block["script"], "exec")
    main = types.ModuleType("__main__")
    main.__file__ = block["script"]
    saved = {
        "cwd": os.getcwd(),
        "environ": dict(os.environ),
        "argv": sys.argv,
        "path": list(sys.path),
        "main": sys.modules["__main__"],
    }
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    out = os.open(block["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(block["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out)
    os.close(err)
    ok, error = True, None
    try:
        os.chdir(block["cwd"])
        sys.argv = [block["script"]]
        sys.path.insert(0, os.path.dirname(block["script"]))
        sys.modules["__main__"] = main
        faulthandler.dump_traceback_later(block["timeout_s"], exit=True, file=2)
        try:
            exec(code, main.__dict__)
        except SystemExit as e:
            if e.code not in (None, 0):
                ok, error = False, block_traceback(e)
        except BaseException as e:
            ok, error = False, block_traceback(e)
        finally:
            faulthandler.cancel_dump_traceback_later()
        try:
            clear_framework_state()
        except Exception:
            if ok:
                ok, error = False, "clearing Keras' state after the block failed:\n"
                error += traceback.format_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in saved_fds:
            os.close(fd)
        sys.modules["__main__"] = saved["main"]
        sys.path[:] = saved["path"]
        sys.argv = saved["argv"]
        os.environ.clear()
        os.environ.update(saved["environ"])
        os.chdir(saved["cwd"])
    return ok, error


def main():
    plan_path, results_path = sys.argv[1:]
    # A block's script directory comes first on its path, as for a script;
    # this runner's own does not.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    with open(plan_path, encoding="utf-8") as f:
        blocks = json.load(f)
    with open(results_path, "a", encoding="utf-8") as results:

        def record(entry):
            results.write(json.dumps(entry) + "\n")
            results.flush()

        for block in blocks:
            record({"started": block["id"]})
            started = time.monotonic()
            ok, error = run_block(block)
            record(
                {
                    "id": block["id"],
                    "ok": ok,
                    "error": error,
                    "seconds": round(time.monotonic() - started, 2),
                }
            )


if __name__ == "__main__":
    main()
