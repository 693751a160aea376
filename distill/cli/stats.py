"""``distill stats``: what a cache holds, run by run."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import orjson

from distill.cache import connect_readonly, reported
from distill.config import add_config_flag, option, resolve
from distill.progress import dollars


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("stats", help="summarise a cache", description="Show what a cache holds.")
    add_config_flag(p)
    option(p, "--cache", type=Path, default=Path("distill-cache.sqlite"), help="the cache to read")
    option(p, "--json", action="store_true", default=False, help="print JSON")
    p.set_defaults(func=main)


def cache_stats(conn: sqlite3.Connection) -> dict:
    responses, ptok, ctok, length = conn.execute(
        "SELECT count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), "
        "coalesce(sum(finish_reason = 'length'), 0) FROM responses"
    ).fetchone()
    failures = [
        {"key": k, "reason": r, "status": s}
        for k, r, s in conn.execute("SELECT key, reason, status FROM failures ORDER BY updated")
    ]
    spending = {
        run_id: (usd, requests)
        for run_id, usd, requests in conn.execute("SELECT run_id, usd, requests FROM spending")
    }
    runs = []
    for run_id, input_path, settings, created, updated in conn.execute(
        "SELECT id, input, settings, created, updated FROM runs ORDER BY created"
    ):
        n, finished = conn.execute(
            "SELECT count(*), coalesce(sum(finished), 0) FROM conversations WHERE run_id = ?", (run_id,)
        ).fetchone()
        s = orjson.loads(settings)
        runs.append(
            {
                "id": run_id,
                "input": input_path,
                "model": s["model"],
                "api": s["api"],
                "history": s["history"],
                "conversations": n,
                "finished": finished,
                "cost_usd": spending.get(run_id, (None, 0))[0],
                "requests_paid": spending.get(run_id, (None, 0))[1],
                "created": created,
                "updated": updated,
            }
        )
    return {
        "responses": responses,
        "prompt_tokens": ptok,
        "completion_tokens": ctok,
        "finished_length": length,
        "failures": failures,
        "cost_usd": sum(usd for usd, _ in spending.values()) if spending else None,
        "runs": runs,
    }


def main(args: argparse.Namespace) -> int:
    resolve(args, "stats")
    conn = connect_readonly(args.cache)
    try:
        with reported(args.cache):  # a damaged page is a CacheError, not a traceback
            stats = cache_stats(conn)
    finally:
        conn.close()
    if args.json:
        print(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(
        f"cache {args.cache}: {stats['responses']} answers, {stats['prompt_tokens']} prompt and "
        f"{stats['completion_tokens']} completion tokens, {stats['finished_length']} cut off at max_tokens"
    )
    if stats["cost_usd"] is not None:
        print(f"spent {dollars(stats['cost_usd'])} in all (answers paid for where the price was known)")
    print(f"{len(stats['failures'])} requests failed for good" + (":" if stats["failures"] else ""))
    for f in stats["failures"][:20]:
        print(f"  {f['key'][:12]}  {f['reason']}")
    print(f"{len(stats['runs'])} runs:")
    for r in stats["runs"]:
        print(
            f"  {r['id']}  {r['model']} ({r['api']}, history {r['history']})  "
            f"{r['conversations']} conversations ({r['finished']} finished)  from {r['input']}"
            + (f"  spent {dollars(r['cost_usd'])}" if r["cost_usd"] is not None else "")
        )
    return 0
