"""Splitting a multi-host PostgreSQL DSN into one DSN per host (store.pg_hosts)."""

from __future__ import annotations

from store import pg_hosts


def test_a_multi_host_dsn_becomes_one_dsn_per_host_in_order_without_session_attrs() -> None:
    dsn = "postgresql://morgan:pw@db1:5432,db2:6432/morgan?target_session_attrs=read-write&sslmode=prefer"
    hosts, attrs = pg_hosts.split(dsn)
    assert hosts == [
        "postgresql://morgan:pw@db1:5432/morgan?sslmode=prefer",
        "postgresql://morgan:pw@db2:6432/morgan?sslmode=prefer",
    ]
    assert attrs == "read-write"


def test_a_single_host_dsn_stays_itself_and_accepts_any_session() -> None:
    hosts, attrs = pg_hosts.split("postgresql://127.0.0.1:5432/test")
    assert (hosts, attrs) == (["postgresql://127.0.0.1:5432/test"], "any")
