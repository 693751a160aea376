"""``python -m distill.servers.teacher``: the same as ``distill teacher serve``."""

import argparse
import sys

from distill.errors import DistillError

from .process import add_serve_arguments, serve_from_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill.servers.teacher", description=__doc__)
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return serve_from_args(args)
    except DistillError as e:
        print(f"distill teacher serve: error: {e}", file=sys.stderr)
        return e.exit_code


sys.exit(main())
