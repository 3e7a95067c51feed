"""A worker or parameter server task of a ParameterServerStrategy cluster on
127.0.0.1, started by tests/support/processes.py for the tests'
coordinators (Keras 3's in tests/support/distributed_training.py, tf_keras'
in tests/support/keras2_distributed.py; a cluster serves them one after the
other). It loads tf_adagrad's op library first, so that the TfAdagrad ops
can run here, unless `--without-ops`; prints "JOB:TASK serving" once it
serves, and serves until killed.
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cluster", required=True, help="JSON cluster spec")
    parser.add_argument("--job", required=True, choices=["worker", "ps"])
    parser.add_argument("--task", type=int, required=True)
    parser.add_argument("--without-ops", action="store_true")
    args = parser.parse_args()

    import tensorflow as tf

    if not args.without_ops:
        import tf_adagrad

        tf_adagrad.ops.load_library()
    server = tf.distribute.Server(
        tf.train.ClusterSpec(json.loads(args.cluster)),
        job_name=args.job,
        task_index=args.task,
        protocol="grpc",
        start=True,
    )
    print(f"{args.job}:{args.task} serving", flush=True)
    server.join()


if __name__ == "__main__":
    main()
