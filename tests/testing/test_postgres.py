"""The tests' own PostgreSQL server."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest

from kappaflow.testing import postgres


def test_missing_binaries_fail_saying_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAPPAFLOW_PG_BIN", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(postgres, "DEBIAN_VERSIONS", tmp_path)
    with pytest.raises(postgres.PostgresNotFound, match=r"apt-get install postgresql"):
        postgres.server_binaries()
    with pytest.raises(postgres.PostgresNotFound), postgres.postgres_server():
        pass


def test_a_server_of_its_own_runs_unprivileged_and_is_removed_after() -> None:
    with postgres.postgres_server() as server, postgres.postgres_database(server.dsn) as dsn:
        with psycopg.connect(dsn) as db:
            data = Path(db.execute("SHOW data_directory").fetchone()[0])
            owner = data.stat().st_uid
            assert db.execute("SHOW fsync").fetchone() == ("off",)
        assert owner != 0, "the server runs unprivileged, under root too"
        port = server.port
    assert not data.parent.exists()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
