"""API keys (`kappaflow.keys`): created, listed and revoked through the CLI on SQLite and
PostgreSQL, the secret shown once and kept only as a salted hash, checked by a
`KeyRing` as it read them last."""

from __future__ import annotations

import json
from contextlib import closing

from click.testing import CliRunner

from kappaflow.cli import main
from kappaflow.keys import SECRET, KeyRing
from kappaflow.log import open_log
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.store.base import ApiKey


def test_keys_are_created_listed_checked_and_revoked(backend_settings: Settings) -> None:
    env = backend_settings.to_environ()
    with closing(open_log(backend_settings, writer=True)):
        pass  # the data directory's log, as a stack leaves it

    def run(*arguments: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, ["keys", *arguments], env=env)
        return result.exit_code, result.output

    code, out = run("create", "--name", "loader", "--scope", "ingest", "--stream", "clicks")
    assert code == 0 and "Keep the secret now: it is shown only this once." in out
    secret = next(line for line in out.splitlines() if SECRET.fullmatch(line))
    key_id = SECRET.fullmatch(secret)["id"]  # type: ignore[index]
    assert f"key {key_id} (loader): ingest of clicks" in out
    code, out = run("create", "--name", "ops", "--scope", "admin", "--scope", "metrics")
    admin = next(line for line in out.splitlines() if SECRET.fullmatch(line))

    code, out = run("list", "--json")
    listed = json.loads(out)
    assert code == 0 and [(k["name"], k["scopes"], k["streams"]) for k in listed] == [
        ("loader", ["ingest"], ["clicks"]), ("ops", ["admin", "metrics"], [])]  # fmt: skip
    assert secret not in out and admin not in out
    table = run("list")[1]
    assert "loader" in table and secret.split("_")[2] not in table

    with closing(open_store(backend_settings)) as store:
        ring = KeyRing(store.api_keys)
        ring.refresh()
        stored = store.query("SELECT digest FROM kf_api_keys")
        assert all(secret.split("_", 2)[2].encode() not in bytes(row[0]) for row in stored)
        key = ring.check(secret)
        assert key is not None and key.id == key_id
        assert key.allows("ingest", "clicks") and not key.allows("ingest", "heartbeats")
        assert not key.allows("query") and ring.check(admin).allows("metrics")  # type: ignore[union-attr]
        assert ring.check(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
        assert ring.check("Bearer " + secret) is None and ring.check("") is None

        code, out = run("revoke", key_id)
        assert code == 0 and f"key {key_id} (loader) is revoked" in out
        assert ring.check(secret) is not None, "until the ring reads the keys again"
        ring.refresh()
        assert ring.check(secret) is None and ring.check(admin) is not None
    listed = json.loads(run("list", "--json")[1])
    assert listed[0]["revoked_at"] is not None and listed[1]["revoked_at"] is None
    assert run("revoke", key_id)[0] == 0, "revoking again changes nothing"


def test_a_key_is_refused_what_it_cannot_be(settings: Settings) -> None:
    env = settings.to_environ()
    with closing(open_log(settings, writer=True)):
        pass

    def run(*arguments: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, ["keys", *arguments], env=env)
        return result.exit_code, result.output

    code, out = run("create", "--name", "x", "--scope", "query", "--stream", "clicks")
    assert code == 1 and "streams limit what an ingest key may post to" in out
    code, out = run("create", "--name", "x", "--scope", "root")
    assert code == 2 and "'root' is not one of 'ingest', 'query', 'admin', 'metrics'" in out
    code, out = run("revoke", "0123456789ab")
    assert code == 1 and "no key '0123456789ab': `kappaflow keys list` lists them" in out
    revoked = ApiKey("0123456789ab", "x", ("query",), (), 0.0, revoked_at=1.0)
    assert not revoked.allows("query")
