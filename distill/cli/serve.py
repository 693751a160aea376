"""``distill serve``: a local model, and a LoRA adapter on it, behind an OpenAI-compatible API on 127.0.0.1.

    distill serve --model ./tiny-llama --adapter ./adapter --port 8001

serves ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models`` until SIGTERM or Ctrl-C. Requests name
the base (``--model``'s value) or the student (``--adapter``'s value) as their ``model``, so ``distill eval``
measures both against one server. Needs the ``local`` extra (torch, transformers, peft).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from distill.config import add_config_flag, option, resolve
from distill.errors import UsageError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a local model (and its LoRA adapter) behind an OpenAI-compatible API",
        description="Serve POST /v1/chat/completions, POST /v1/completions and GET /v1/models on 127.0.0.1 "
        "from a local model folder or hub id, with a LoRA adapter served under its own name, until SIGTERM "
        "or Ctrl-C. Prints 'distill serve: serving URL' once listening.",
    )
    add_config_flag(p)
    option(p, "--model", help="the base model: a model folder (or a hub id, downloaded when the hub answers)")
    option(p, "--adapter", help="a LoRA adapter folder saved by distill train --backend local")
    option(p, "--port", type=int, default=8000, help="port on 127.0.0.1 (default: 8000; 0 picks a free one)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    resolve(args, "serve")
    if not args.model:
        raise UsageError(
            "no model to serve: pass --model DIR (distill train --make-tiny-model DIR builds one)"
        )
    try:
        from trainers.local.model_ref import resolve_model

        resolve_model(args.model)
        from trainers.local.generation import LocalModels
        from trainers.local.server import serve_forever
    except ImportError as e:
        raise UsageError(
            f"distill serve needs the 'local' extra ({e.name} is missing): pip install 'distill[local]'"
        ) from None
    models = LocalModels(args.model, args.adapter)

    def announce(url: str) -> None:
        print(
            f"distill serve: serving {url} (models: {', '.join(models.names)})", file=sys.stderr, flush=True
        )

    asyncio.run(serve_forever(models, args.port, announce))
    return 0
