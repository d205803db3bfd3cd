"""The fault tests' TCP proxy, in front of a PostgreSQL server."""

from __future__ import annotations

import psycopg
import pytest

from kappaflow.testing.proxy import tcp_proxy

pytestmark = pytest.mark.integration


def through(dsn: str, port: int) -> str:
    """``dsn`` with its port replaced by ``port``."""
    server, database = dsn.rsplit("/", 1)
    return f"{server.rsplit(':', 1)[0]}:{port}/{database}"


def test_a_cut_ends_every_connection_and_refuses_new_ones_until_healed(postgres_dsn: str) -> None:
    port = int(postgres_dsn.rsplit(":", 1)[1].split("/")[0])
    with tcp_proxy(port) as proxy:
        dsn = through(postgres_dsn, proxy.port)
        with psycopg.connect(dsn) as db:
            assert db.execute("SELECT 1").fetchone() == (1,)
            proxy.cut()
            with pytest.raises(psycopg.OperationalError):
                db.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError, match="refused"):
            psycopg.connect(dsn, connect_timeout=2)
        proxy.heal()
        with psycopg.connect(dsn) as db:
            assert db.execute("SELECT 1").fetchone() == (1,)
        assert proxy.cuts == 1
