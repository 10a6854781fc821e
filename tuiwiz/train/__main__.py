"""``python -m tuiwiz.train RUN_DIR [--resume]``: the detached runner."""

import argparse
import sys

from .runner import run_training


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tuiwiz.train")
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    args = parser.parse_args()
    return run_training(args.run_dir, resume=args.resume)


if __name__ == "__main__":
    sys.exit(main())
