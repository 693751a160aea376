"""``distill merge OUT IN1 IN2 ...``: join caches (the shards of one dataset run on N machines) into one.

- **Answers** are keyed by request, so the same question answered on two machines is stored once. If two caches
  hold *different* answers for the same request (sampling at a temperature, say), the first one merged is kept
  and the others are counted as conflicts.
- **Failures** are kept only for requests that no cache answered.
- **Runs and conversations** are kept. A run already in ``OUT`` under the same id is that run; otherwise runs with
  the same settings over an input file of the same name are one run: the shards of one dataset, whatever directory each machine kept it in. Shards store each conversation at
  its position in the whole input, so the merged run lists the dataset in its order and ``distill export`` writes
  it whole. Two caches that put different conversations at the same position of the same run did not read the
  same input: that is an error, and nothing of that cache is merged.
- **Everything else a run keeps** goes too (:mod:`distill.merge_records`): spending (summed per run), the
  viewer's attempts, rejects, marks and tokens, the rate windows and learned rates; so ``distill stats``,
  ``distill view``, ``--budget`` over invocations and the next run's starting rate work on the merged cache as on
  one run's. The merged conversations are indexed for the viewer's search.
- **Batches** are local bookkeeping and are not merged; a cache with a batch still in flight is refused (run its
  ``distill run --batch`` again to collect it first).

``OUT`` may be new or an existing cache (it is added to). Each cache is merged in its own transaction, under the
run lock of ``OUT`` and of every input, so no run can write them meanwhile.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from .cache import APPLICATION_ID, SCHEMA_VERSION, RunLock, check_file, prepare
from .cache_view import index_for_search
from .errors import CacheError, UsageError
from .merge_records import (
    RESPONSE_COLUMNS,
    carry_conversations,
    carry_run_records,
    carry_shared_records,
    columns,
    tables,
)

# the search index is rebuilt from the merged conversations; batches are local bookkeeping
MERGED_TABLES = frozenset(
    ("responses", "failures", "runs", "conversations", "batches", "spending", "attempts", "rejects",
     "rate_limits", "rate_windows", "run_passes", "conversation_search", "search_progress", "search_stale")
)  # fmt: skip


@dataclass(slots=True)
class MergeResult:
    output: Path
    inputs: int = 0
    answers_added: int = 0
    answers_duplicate: int = 0
    answers_conflicting: int = 0
    failures_added: int = 0
    runs_added: int = 0
    conversations_added: int = 0
    skipped_tables: set[str] = field(default_factory=set)

    def summary(self) -> str:
        lines = [
            f"merged {self.inputs} cache(s) into {self.output}",
            f"answers: {self.answers_added:,} added, {self.answers_duplicate:,} already there"
            + (
                f", {self.answers_conflicting:,} differed from the answer already there (the first kept)"
                if self.answers_conflicting
                else ""
            ),
            f"failures: {self.failures_added:,} added (only for requests no cache answered)",
            f"runs: {self.runs_added:,} added; conversations: {self.conversations_added:,} added",
        ]
        if self.skipped_tables:
            lines.append(
                f"tables not merged (unknown to this distill): {', '.join(sorted(self.skipped_tables))}"
            )
        return "\n".join(lines)


def merge(
    output: Path, inputs: list[Path], *, output_locked: bool = False, spending: bool = True
) -> MergeResult:
    """Merge the caches ``inputs`` into ``output`` (created if missing); see the module for the rules.

    ``output_locked``: the caller already holds ``output``'s run lock (a cluster run's driver does).
    ``spending=False`` leaves the spending out (a cluster run's driver adds only what this invocation spent, as
    it merges the same shard caches again on every run).
    """
    output = Path(output)
    inputs = [Path(p) for p in inputs]
    _check_paths(output, inputs)
    for path in inputs:
        _check_input(path)
    locks = [*([] if output_locked else [RunLock(output)]), *(RunLock(p) for p in inputs)]
    held: list[RunLock] = []
    try:
        for lock in locks:
            lock.acquire()
            held.append(lock)
        return _merge_locked(output, inputs, spending)
    finally:
        for lock in held:
            lock.release()


def _check_paths(output: Path, inputs: list[Path]) -> None:
    if not inputs:
        raise UsageError(
            "distill merge needs at least one input cache: distill merge OUT.sqlite IN1.sqlite ..."
        )
    resolved = [p.resolve() for p in inputs]
    if output.resolve() in resolved:
        raise UsageError(f"{output} is both the output and an input; write the merge to a new file")
    if len(set(resolved)) != len(resolved):
        raise UsageError("an input cache is named twice")
    check_file(output)


def _check_input(path: Path) -> None:
    if not path.is_file():
        raise CacheError(f"input cache {path} does not exist")
    check_file(path)
    conn = sqlite3.connect(f"{_uri(path)}?mode=ro", uri=True)
    try:
        app_id, version = (
            conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ("application_id", "user_version")
        )
        if app_id != APPLICATION_ID:
            raise CacheError(f"{path} is not a distill cache")
        if version > SCHEMA_VERSION:
            raise CacheError(f"{path} was written by a newer distill (schema {version}); upgrade distill")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "batches" in tables:
            (open_batches,) = conn.execute(
                "SELECT count(*) FROM batches WHERE status IN ('uploaded', 'submitted')"
            ).fetchone()
            if open_batches:
                raise CacheError(
                    f"{path} has {open_batches} batch(es) still in flight; run its 'distill run --batch' again to "
                    "collect them, then merge"
                )
    except sqlite3.DatabaseError as e:
        raise CacheError(f"{path} is corrupt or not a database ({e})") from None
    finally:
        conn.close()


def _uri(path: Path) -> str:
    return "file:" + quote(str(path.resolve()))


def _merge_locked(output: Path, inputs: list[Path], spending: bool) -> MergeResult:
    output.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(output) as setup:
        prepare(setup, output)
        setup.execute("PRAGMA journal_mode = WAL")
    setup.close()
    conn = sqlite3.connect(_uri(output), uri=True, isolation_level=None)
    result = MergeResult(output)
    try:
        run_ids = _run_groups(conn, "main")
        for path in inputs:
            conn.execute("ATTACH DATABASE ? AS src", (f"{_uri(path)}?mode=ro",))
            try:
                _merge_one(conn, path, run_ids, result, spending)
            finally:
                conn.execute("DETACH DATABASE src")
            result.inputs += 1
        conn.execute("DELETE FROM failures WHERE key IN (SELECT key FROM responses)")
        index_for_search(conn)
    finally:
        conn.close()
    return result


def _run_groups(conn: sqlite3.Connection, schema: str) -> dict[tuple[str, bytes], str]:
    """(input file name, settings) -> run id, for the runs already in ``schema``."""
    rows = conn.execute(f"SELECT id, input, settings FROM {schema}.runs ORDER BY created")
    groups: dict[tuple[str, bytes], str] = {}
    for run_id, input_path, settings in rows:
        groups.setdefault((Path(input_path).name, bytes(settings)), run_id)
    return groups


def _merge_one(
    conn: sqlite3.Connection,
    path: Path,
    run_ids: dict[tuple[str, bytes], str],
    result: MergeResult,
    spending: bool,
) -> None:
    result.skipped_tables |= {t for t in tables(conn, "src") if not t.startswith("conversation_search")}
    result.skipped_tables -= MERGED_TABLES
    conn.execute("BEGIN IMMEDIATE")
    try:
        _merge_runs(conn, path, run_ids, result, spending and "spending" in tables(conn, "src"))
        _merge_answers(conn, result)
        carry_shared_records(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _merge_runs(
    conn: sqlite3.Connection,
    path: Path,
    run_ids: dict[tuple[str, bytes], str],
    result: MergeResult,
    spending: bool,
) -> None:
    runs = conn.execute(
        "SELECT id, input, settings, created, updated FROM src.runs ORDER BY created"
    ).fetchall()
    for run_id, input_path, settings, created, updated in runs:
        if conn.execute("SELECT 1 FROM main.runs WHERE id = ?", (run_id,)).fetchone():
            target = run_id  # the very same run (the same input path): no need to match it by file name
        else:
            target = run_ids.setdefault((Path(input_path).name, bytes(settings)), run_id)
        clash = conn.execute(
            "SELECT c.position, m.id, c.id FROM src.conversations c JOIN main.conversations m "
            "ON m.run_id = ? AND m.position = c.position WHERE c.run_id = ? AND m.id != c.id LIMIT 1",
            (target, run_id),
        ).fetchone()
        if clash is not None:
            raise CacheError(
                f"{path} holds conversation {clash[2]!r} at position {clash[0]} of run {target}, where another "
                f"cache holds {clash[1]!r}: they did not read the same input. Merge them into separate caches"
            )
        exists = conn.execute("SELECT 1 FROM main.runs WHERE id = ?", (target,)).fetchone()
        result.runs_added += exists is None
        conn.execute(
            "INSERT INTO main.runs (id, input, settings, created, updated) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET created = min(created, excluded.created), "
            "updated = max(updated, excluded.updated)",
            (target, input_path, settings, created, updated),
        )
        result.conversations_added += carry_conversations(conn, target, run_id)
        carry_run_records(conn, target, run_id)
        if not spending:  # not asked for, or a cache from before migration 5
            continue
        conn.execute(  # what each shard paid adds up to what the merged run cost
            "INSERT INTO main.spending SELECT ?, usd, requests, prompt_tokens, completion_tokens, updated "
            "FROM src.spending WHERE run_id = ? ON CONFLICT(run_id) DO UPDATE SET usd = usd + excluded.usd, "
            "requests = requests + excluded.requests, prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
            "completion_tokens = completion_tokens + excluded.completion_tokens, "
            "updated = max(updated, excluded.updated)",
            (target, run_id),
        )


def _merge_answers(conn: sqlite3.Connection, result: MergeResult) -> None:
    same, different = conn.execute(
        "SELECT count(*) FILTER (WHERE m.text = s.text), count(*) FILTER (WHERE m.text != s.text) "
        "FROM src.responses s JOIN main.responses m ON m.key = s.key"
    ).fetchone()
    result.answers_duplicate += same
    result.answers_conflicting += different
    names = ", ".join(c for c in RESPONSE_COLUMNS if c in columns(conn, "src", "responses"))
    added = conn.execute(f"INSERT OR IGNORE INTO main.responses ({names}) SELECT {names} FROM src.responses")
    result.answers_added += added.rowcount
    failures = conn.execute(
        "INSERT OR IGNORE INTO main.failures (key, reason, status, updated) "
        "SELECT key, reason, status, updated FROM src.failures "
        "WHERE key NOT IN (SELECT key FROM main.responses)"
    )
    result.failures_added += failures.rowcount
