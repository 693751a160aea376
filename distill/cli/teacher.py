"""``distill teacher serve``: run the local OpenAI-compatible teacher (for tests, benchmarks and the demo)."""

from __future__ import annotations

import argparse

from distill.servers.teacher.process import add_serve_arguments, serve_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``distill teacher`` and its action ``serve``."""
    parser = subparsers.add_parser(
        "teacher",
        help="run the local OpenAI-compatible teacher",
        description="A local OpenAI-compatible teacher with deterministic answers, rate limits and faults.",
    )
    actions = parser.add_subparsers(dest="teacher_action", metavar="ACTION", required=True)
    serve = actions.add_parser(
        "serve",
        help="serve on 127.0.0.1 until SIGTERM or Ctrl-C",
        description="Serve POST /v1/chat/completions, POST /v1/completions, GET /v1/models and GET /stats on "
        "127.0.0.1 until SIGTERM or Ctrl-C. Prints 'distill teacher: serving URL' once listening.",
    )
    add_serve_arguments(serve)
    serve.set_defaults(func=serve_from_args)
