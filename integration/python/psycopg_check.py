#!/usr/bin/env python3
"""psycopg 3 through pgwarden: what a Python application does.

Usage: psycopg_check.py DSN   (the password comes from PGPASSWORD)

Checks autocommit and transactions, executemany, server-side prepared
statements (prepare_threshold=0, so every statement is prepared), COPY in both
directions, and that errors arrive with the right SQLSTATE and leave the
connection usable. Exits 0 only if everything held; any failure raises.
"""

import os
import sys
import threading

import psycopg
from psycopg import errors, sql


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main(dsn):
    table = f"psycopg_{os.getpid()}"
    ident = sql.Identifier(table)

    # Autocommit: each statement is its own transaction.
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        check(conn.execute("select 1 + 1").fetchone()[0] == 2, "select 1 + 1")
        check(conn.execute("select current_user").fetchone()[0] == "app", "current_user")
        conn.execute(sql.SQL("drop table if exists {}").format(ident))
        conn.execute(
            sql.SQL("create table {} (id int primary key, name text not null)").format(ident)
        )
        print("autocommit: ok")

    # Transactions: rollback leaves nothing, commit keeps it.
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        conn.execute(sql.SQL("insert into {} values (1, 'rolled back')").format(ident))
        conn.rollback()
        check(
            conn.execute(sql.SQL("select count(*) from {}").format(ident)).fetchone()[0] == 0,
            "rolled back row visible",
        )
        conn.commit()
        with conn.transaction():
            conn.execute(sql.SQL("insert into {} values (1, 'one')").format(ident))
        try:
            with conn.transaction():
                conn.execute(sql.SQL("insert into {} values (2, 'two')").format(ident))
                raise RuntimeError("abort this block")
        except RuntimeError:
            pass
        conn.commit()
        rows = conn.execute(sql.SQL("select id from {} order by id").format(ident)).fetchall()
        check(rows == [(1,)], f"after transaction blocks: {rows}")
        conn.commit()
        print("transactions: ok")

    # executemany, with and without returning rows.
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL("insert into {} (id, name) values (%s, %s)").format(ident),
                [(i, f"name {i}") for i in range(100, 300)],
            )
        conn.commit()
        total = conn.execute(
            sql.SQL("select count(*), sum(id) from {} where id >= 100").format(ident)
        ).fetchone()
        check(total == (200, sum(range(100, 300))), f"executemany: {total}")
        conn.commit()
        print("executemany: ok")

    # Server-side prepared statements on several connections at once, so the
    # proxy's server connections are shared and statements must follow
    # their clients.
    failures = []

    def prepared_worker(n):
        try:
            with psycopg.connect(dsn, autocommit=True, prepare_threshold=0, connect_timeout=10) as conn:
                for i in range(60):
                    got = conn.execute("select %s::int * %s::int", (i, n)).fetchone()[0]
                    check(got == i * n, f"worker {n}: {i} * {n} = {got}")
                    got = conn.execute(
                        sql.SQL("select name from {} where id = %s").format(ident), (100 + i,)
                    ).fetchone()[0]
                    check(got == f"name {100 + i}", f"worker {n}: name {got}")
                    if i % 10 == 0:
                        with conn.transaction():
                            conn.execute("select pg_sleep(0.01)")
                            got = conn.execute("select %s::text || 'x'", (str(i),)).fetchone()[0]
                            check(got == f"{i}x", f"worker {n}: in transaction {got}")
        except Exception as e:  # reported by the main thread
            failures.append(f"worker {n}: {e!r}")

    threads = [threading.Thread(target=prepared_worker, args=(n,)) for n in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    check(not failures, f"prepared statement workers failed: {failures}")
    check(not any(t.is_alive() for t in threads), "prepared statement workers hung")
    print("prepared statements: ok")

    # COPY in both directions.
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        rows = [(i, f"copied {i}\twith tab and \\ backslash") for i in range(1000, 6000)]
        with conn.cursor() as cur:
            with cur.copy(sql.SQL("copy {} (id, name) from stdin").format(ident)) as copy:
                for row in rows:
                    copy.write_row(row)
        conn.commit()
        back = []
        with conn.cursor() as cur:
            with cur.copy(
                sql.SQL("copy (select id, name from {} where id >= 1000 order by id) to stdout").format(ident)
            ) as copy:
                copy.set_types(["int4", "text"])
                for row in copy.rows():
                    back.append(row)
        check(back == rows, f"COPY round trip: {len(back)} rows back, {len(rows)} sent")
        conn.commit()
        print("copy: ok")

    # Errors carry their SQLSTATE and the connection recovers.
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        try:
            conn.execute("select 1 / 0")
            raise AssertionError("division by zero succeeded")
        except errors.DivisionByZero as e:
            check(e.sqlstate == "22012", f"sqlstate {e.sqlstate}")
        conn.rollback()
        try:
            conn.execute(sql.SQL("insert into {} values (1, 'dup')").format(ident))
            raise AssertionError("duplicate key succeeded")
        except errors.UniqueViolation as e:
            check(e.sqlstate == "23505", f"sqlstate {e.sqlstate}")
            check(e.diag.table_name == table, f"diag table {e.diag.table_name}")
        try:
            conn.execute("select 1")
            raise AssertionError("statement in a failed transaction succeeded")
        except errors.InFailedSqlTransaction as e:
            check(e.sqlstate == "25P02", f"sqlstate {e.sqlstate}")
        conn.rollback()
        check(conn.execute("select 'recovered'").fetchone()[0] == "recovered", "recovery")
        conn.commit()
        try:
            conn.execute("select * from no_such_table_at_all")
            raise AssertionError("query on a missing table succeeded")
        except errors.UndefinedTable as e:
            check(e.sqlstate == "42P01", f"sqlstate {e.sqlstate}")
        conn.rollback()
        print("errors: ok")

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("drop table {}").format(ident))
    print("all psycopg checks passed")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
