"""``distill view``: a local read-only web page over a cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from distill.config import add_config_flag, option, resolve


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "view",
        help="look at a cache in the browser",
        description="Serve a local, read-only web page over a cache: runs, conversations side by side with the "
        "dataset's answers, failures and rejected records, charts. It works while a run writes the cache.",
    )
    add_config_flag(p)
    option(p, "--cache", type=Path, default=Path("distill-cache.sqlite"), help="the cache to show")
    option(p, "--port", type=int, default=8765, help="port to listen on (0: any free one; default 8765)")
    option(
        p,
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; any other is warned about)",
    )
    option(p, "--no-browser", action="store_true", default=False, help="do not open a browser")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    resolve(args, "view")
    from distill.view import serve

    serve(args.cache, args.host, args.port, browser=not args.no_browser)
    return 0
