"""Serving the viewer: bind (loopback unless asked otherwise), say where, open a browser, wait for Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import sys
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from aiohttp import web

from distill.cache import connect_readonly
from distill.errors import UsageError

from .app import make_app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_warning(host: str) -> str | None:
    """The warning printed when the viewer listens beyond this machine (None on a loopback address)."""
    if is_loopback(host):
        return None
    return (
        f"warning: serving on {host}: anyone who can reach this machine on that address can read the cache "
        "(every prompt and answer); the default --host 127.0.0.1 keeps it to this machine"
    )


def has_desktop() -> bool:
    """Whether a graphical browser can open here (never a text browser taking over the terminal)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def url_for(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


async def start(cache: Path, host: str = "127.0.0.1", port: int = 8765) -> tuple[web.AppRunner, str]:
    """Start the viewer over ``cache`` on ``host:port`` (0: any free port); returns the runner and its URL."""
    # a missing or foreign cache fails now, with its fix, not on the first page
    connect_readonly(cache).close()
    runner = web.AppRunner(make_app(cache), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise UsageError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port") from None
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, url_for(host, bound)


def serve(
    cache: Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    browser: bool = True,
    stream: TextIO = sys.stderr,
    opener: Callable[[str], bool] = webbrowser.open,
) -> None:
    """Serve the viewer until interrupted; warn when ``host`` is not a loopback address."""
    warning = host_warning(host)
    if warning:
        print(warning, file=stream)

    async def main() -> None:
        runner, url = await start(cache, host, port)
        print(f"distill view: serving {cache} at {url} (read-only; Ctrl-C stops)", file=stream, flush=True)
        if browser and has_desktop():
            opener(url)
        elif browser:
            print("no desktop here to open a browser on: open the address above", file=stream, flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
