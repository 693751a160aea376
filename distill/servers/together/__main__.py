"""``python -m distill.servers.together --port 0 --port-file F``: serve the fake Together API until interrupted.

With ``--port 0`` the system picks a free port; ``--port-file`` receives it (written atomically once the server
listens), so a script can wait for the file and then set ``TOGETHER_BASE_URL=http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from .server import FakeTogether


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m distill.servers.together", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="write the port here once listening")
    parser.add_argument(
        "--seconds-per-state", type=float, default=0.5, help="time a job spends in each state"
    )
    parser.add_argument("--file-processing-seconds", type=float, default=0.0)
    parser.add_argument(
        "--inference-seconds", type=float, default=0.0, help="latency of a chat answer from an endpoint"
    )
    parser.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="accept only the key held by this environment variable (default: any non-empty key)",
    )
    parser.add_argument("--model", action="append", dest="models", help="offer only these base models")
    parser.add_argument("--error-model", action="append", default=[], help="jobs on this base model fail")
    return parser.parse_args(argv)


def write_port(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


async def serve(args: argparse.Namespace) -> None:
    api_keys = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            sys.exit(
                f"fake Together: environment variable {args.api_key_env} is empty; set it or drop --api-key-env"
            )
        api_keys = {key}
    fake = FakeTogether(
        host=args.host,
        port=args.port,
        seconds_per_state=args.seconds_per_state,
        api_keys=api_keys,
        models=set(args.models) if args.models else None,
        error_models=set(args.error_model),
        file_processing_seconds=args.file_processing_seconds,
        inference_seconds=args.inference_seconds,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with fake:
        if args.port_file:
            write_port(args.port_file, fake.port)
        print(f"fake Together API listening on {fake.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
