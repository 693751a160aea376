"""insert_rows writes what executemany writes, many rows per statement (issue 12)."""

from __future__ import annotations

import sqlite3

import pytest

from distill.sqlite_rows import insert_rows

SQL = "INSERT OR REPLACE INTO t VALUES (?, ?, ?)"


def table() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER, b BLOB)")
    return db


@pytest.mark.parametrize("count", [0, 1, 7, 128, 300])
def test_insert_rows_writes_what_executemany_writes(count):
    # every fifth key comes again later: the later row replaces the earlier one, in both
    rows = [(f"k{n % max(count - count // 5, 1)}", n, bytes([n % 256]) * 3) for n in range(count)]
    by_statement, by_row = table(), table()
    statements: list[str] = []
    by_statement.set_trace_callback(statements.append)
    insert_rows(by_statement, SQL, rows)
    by_statement.set_trace_callback(None)
    by_row.executemany(SQL, rows)
    query = "SELECT k, n, b FROM t ORDER BY k"
    assert by_statement.execute(query).fetchall() == by_row.execute(query).fetchall()
    # 300 rows: 2 x 128 + 1 x 32 + 1 x 8 + 4 x 1 statements
    assert sum(s.startswith("INSERT") for s in statements) == {0: 0, 1: 1, 7: 7, 128: 1, 300: 8}[count]


def test_insert_rows_refuses_a_statement_it_cannot_repeat():
    with pytest.raises(ValueError, match="one-row INSERT"):
        insert_rows(table(), "INSERT INTO t SELECT * FROM t", [(1,)])
