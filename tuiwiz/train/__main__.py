"""``python -m tuiwiz.train RUN_DIR [--resume] [--node-rank N]``: the detached runner.

``--worker`` marks one rank of a multi-process run, started by ``accelerate launch``.
"""

import argparse
import sys
from typing import NoReturn

from tuiwiz.process_exit import end_process
from tuiwiz.train.lifecycle import run_training


def main() -> NoReturn:
    parser = argparse.ArgumentParser(prog="python -m tuiwiz.train")
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--worker", action="store_true", help="one rank under accelerate launch")
    parser.add_argument("--node-rank", type=int, help="this machine's rank (multi-node runs)")
    parser.add_argument("--recovered", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--watched", action="store_true", help=argparse.SUPPRESS)  # its watcher already waits
    args = parser.parse_args()
    code = run_training(args.run_dir, resume=args.resume, worker=args.worker, node_rank=args.node_rank,
                        recovered=args.recovered, watched=args.watched)
    if args.worker:  # a rank: torch.distributed's teardown is its own
        sys.exit(code)
    end_process(code)


if __name__ == "__main__":
    main()
