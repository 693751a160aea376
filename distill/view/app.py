"""The viewer's web app: aiohttp handlers that run one read-only query each and render a Jinja page.

Every page is rendered on the server with Jinja's autoescaping on for every template, so text from datasets and
models is always HTML text, never markup; and every response carries a Content-Security-Policy that allows no
script at all (the pages have none: charts are SVG), a second wall should a value ever slip through unescaped.
Queries run on a worker thread with their own read-only connection, so a slow one does not stall the server.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from distill import learned_limits
from distill.cost import resolve_price
from distill.errors import UsageError
from distill.shard import Shard

from . import charts, details, limits, store

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
CACHE_KEY = web.AppKey("cache", Path)
TEMPLATES = web.AppKey("templates", jinja2.Environment)


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("distill.view", "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["setting"] = _setting
    env.filters["number"] = lambda n: "—" if n is None else f"{n:,}"
    env.filters["seconds"] = lambda s: (
        "—" if s is None else f"{s * 1000:,.0f} ms" if s < 10 else f"{s:,.1f} s"
    )
    return env


def _setting(value: Any) -> str:
    """A stored run setting as a person reads it: set sampling parameters only, ``—`` for unset."""
    if isinstance(value, dict):
        shown = [f"{k}={v}" for k, v in value.items() if v is not None]
        return ", ".join(shown) or "(server defaults)"
    return "—" if value is None else str(value)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    return datetime.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def make_app(cache: Path) -> web.Application:
    """The viewer over ``cache`` (opened read-only on every request)."""
    app = web.Application(middlewares=[security_headers])
    app[CACHE_KEY] = Path(cache)
    app[TEMPLATES] = templates()
    app.add_routes(
        [
            web.get("/", runs_page),
            web.get("/runs/{run}/conversations", conversations_page),
            web.get("/runs/{run}/conversations/{position:\\d+}", conversation_page),
            web.get("/runs/{run}/failures", failures_page),
            web.get("/runs/{run}/rejects/{rowid:\\d+}", reject_page),
            web.get("/runs/{run}/charts", charts_page),
            web.get("/charts", cache_charts_page),
        ]
    )
    return app


@web.middleware
async def security_headers(request: web.Request, handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.update(SECURITY_HEADERS)
    return response


async def query(request: web.Request, work: Callable[..., Any], *args: Any) -> Any:
    """``work(conn, *args)`` on a worker thread with its own read-only connection."""

    def run() -> Any:
        conn = store.open_cache(request.app[CACHE_KEY])
        try:
            return work(conn, *args)
        finally:
            conn.close()

    return await asyncio.to_thread(run)


def render(request: web.Request, name: str, **context: Any) -> web.Response:
    context.setdefault("run", None)
    html = request.app[TEMPLATES].get_template(name).render(cache=request.app[CACHE_KEY], **context)
    return web.Response(text=html, content_type="text/html", charset="utf-8")


async def run_or_404(request: web.Request, conversations: bool = False) -> store.RunSummary:
    return await found_or_404(request, store.run_summary, request.match_info["run"], conversations)


async def runs_page(request: web.Request) -> web.Response:
    def work(conn):
        return store.runs(conn), learned_limits.summary(conn)

    runs, kept = await query(request, work)
    return render(request, "runs.jinja", runs=runs, kept=kept)


def int_param(request: web.Request, name: str, default: int) -> int:
    try:
        return int(request.query.get(name) or default)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a whole number") from None


def list_query(request: web.Request) -> store.ListQuery:
    """The list's search and filters from the query string (a bad value is a 400 naming it)."""
    q = request.query
    try:
        shard = Shard.parse(q["shard"]) if q.get("shard") else None
        return store.ListQuery(
            text=q.get("q", ""),
            failed=q.get("failed") == "1",
            min_tokens=int(q["tokens"]) if q.get("tokens") else None,
            shard=shard,
            split=q.get("split") if q.get("split") in ("train", "validation") else None,
            val_fraction=float(q.get("fraction") or 0.05),
            after=int_param(request, "after", -1),
        )
    except (ValueError, UsageError) as e:
        raise web.HTTPBadRequest(text=f"bad filter: {e}") from None


async def conversations_page(request: web.Request) -> web.Response:
    run = await run_or_404(request, conversations=True)
    if request.query.get("rejected") == "1":
        after = int_param(request, "after", 0)
        rows, more = await query(request, details.rejects, run.id, after)
        return render(request, "rejects.jinja", run=run, rejects=rows, more=more)
    wanted = list_query(request)
    page = await query(request, store.conversation_page, run.id, wanted)
    filters = {k: v for k, v in request.query.items() if k != "after" and v}
    return render(request, "conversations.jinja", run=run, page=page, wanted=wanted, filters=filters)


async def found_or_404(request: web.Request, work: Callable[..., Any], *args: Any) -> Any:
    found = await query(request, work, *args)
    if found is None:
        raise web.HTTPNotFound(text=f"no such page: {request.path}")
    return found


async def conversation_page(request: web.Request) -> web.Response:
    run = await run_or_404(request)
    position = int(request.match_info["position"])
    view = await found_or_404(request, details.conversation_view, run.id, position)
    return render(request, "conversation.jinja", run=run, view=view)


async def failures_page(request: web.Request) -> web.Response:
    run = await run_or_404(request)
    after = int_param(request, "after", -1)

    def work(conn):
        return (
            details.failures(conn, run.id, after),
            details.rejects(conn, run.id),
            details.unlinked_failures(conn),
        )

    (failed, more), (rejects, more_rejects), unlinked = await query(request, work)
    return render(
        request,
        "failures.jinja",
        run=run,
        failed=failed,
        more=more,
        rejects=rejects,
        more_rejects=more_rejects,
        unlinked=unlinked,
    )


async def reject_page(request: web.Request) -> web.Response:
    run = await run_or_404(request)
    found = await found_or_404(request, details.reject, run.id, int(request.match_info["rowid"]))
    return render(request, "reject.jinja", run=run, reject=found)


async def charts_page(request: web.Request) -> web.Response:
    """A run's charts, over the answers and attempts of its own passes, and what it learned of rate limits."""
    run = await run_or_404(request)

    def work(conn):
        return charts.run_charts(conn, run.id, resolve_price(run.model)), limits.run_limits(
            conn, run.id, run.model
        )

    figures, learned = await query(request, work)
    return render(request, "charts.jinja", run=run, charts=figures, limits=learned)


async def cache_charts_page(request: web.Request) -> web.Response:
    """The charts of the whole cache (every run); cost at list price when every run used the same model."""

    def work(conn):
        models = {
            model
            for (model,) in conn.execute(
                "SELECT DISTINCT json_extract(CAST(settings AS TEXT), '$.model') FROM runs"
            )
        }
        price = resolve_price(models.pop()) if len(models) == 1 else None
        return charts.run_charts(conn, None, price)

    return render(request, "charts.jinja", charts=await query(request, work), limits=None)
