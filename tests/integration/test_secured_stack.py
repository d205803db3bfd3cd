"""A secured deployment end to end, on processes as containers run them: ``kappaflow
ingest``, ``kappaflow query`` and a ``kappaflow worker`` serving its endpoints, with
authentication on and HTTPS (a certificate of a throwaway authority). Keys are created
and revoked with the CLI while they run, and each reaches every process within
seconds; ``kappaflow replay`` posts the real clicks sample with its key. And ``kappaflow
up`` the same, over HTTPS."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from kappaflow.apps.clicks.demo import sample_path
from kappaflow.keys import RECHECK_S, new_secret
from kappaflow.settings import Settings
from kappaflow.testing import wait_until
from kappaflow.testing.processes import Running, environment
from kappaflow.up import free_port

pytestmark = pytest.mark.integration
Run = Callable[..., AbstractContextManager[Running]]
COUNTRY_CLICKS = 3_440
"""Clicks of the sample with a country (tests/integration/test_clicks.py counts them)."""


def cli(env: dict[str, str], *arguments: str, code: int = 0) -> subprocess.CompletedProcess:
    ran = subprocess.run([sys.executable, "-m", "kappaflow", *arguments], env=environment(env),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ran.returncode == code, ran.stdout + ran.stderr
    return ran


def created(env: dict[str, str], name: str, *scopes: str) -> tuple[str, str]:
    """(id, secret) of a key made by ``kappaflow keys create``."""
    out = cli(env, "keys", "create", "--name", name, *scopes).stdout
    found = re.fullmatch(r"key (\w+) \(.*\): .*\n(kf_\S+)\n", out)
    assert found is not None, out
    return found[1], found[2]


@contextmanager
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """A ``kappaflow worker`` serving its endpoints: their URL."""
    port = free_port()
    output = tmp_path / "worker.log"
    with output.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "kappaflow", "worker"],
                                   env=environment({**env, "KAPPAFLOW_WORKER_PORT": str(port)}),
                                   stdout=sink, stderr=sink)  # fmt: skip
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        process.terminate()
        assert process.wait(30) == 0, output.read_text()


def test_keys_made_and_revoked_with_the_cli_while_it_runs_count_everywhere_within_seconds(
    kappaflow: Run, settings: Settings, certificate: dict[str, str], tmp_path: Path
) -> None:
    settings = settings.replace(apps=("clicks",), auth="on", admin_key=new_secret(), **certificate)
    env = settings.to_environ()
    _, loader = created(env, "loader", "--scope", "ingest", "--stream", "clicks")
    with (
        kappaflow("ingest", env=env) as ingest,
        kappaflow("query", env=env) as query,
        worker(env, tmp_path) as worker_url,
        ExitStack() as opened,
    ):
        assert ingest.url.startswith("https://") and query.url.startswith("https://")
        reader_id, reader = created(env, "reader", "--scope", "query", "--scope", "metrics")
        verify, headers = query.verify, {"authorization": f"Bearer {reader}"}
        clients = {
            url: opened.enter_context(
                httpx.Client(base_url=url, verify=verify, headers=headers, timeout=10)
            )
            for url in (ingest.url, query.url, worker_url)
        }
        wait_until(lambda: [_answers(client) for client in clients.values()] == [200] * 3,
                   RECHECK_S + 10, "the new key taken by every process")  # fmt: skip
        refused = cli({**env, "KAPPAFLOW_API_KEY": reader}, "replay", str(sample_path()),
                      "--url", ingest.url, "--stream", "clicks", code=1)  # fmt: skip
        assert f"key {reader_id} (reader) may not ingest" in refused.stderr
        sent = cli({**env, "KAPPAFLOW_API_KEY": loader}, "replay", str(sample_path()),
                   "--url", ingest.url, "--stream", "clicks")  # fmt: skip
        assert "3,560 accepted, 0 skipped, 0 refused" in sent.stderr

        def counted() -> int:
            country = {"dimension": "country", "window": "1h"}
            found = clients[query.url].get("/v1/clicks/counts", params=country)
            return sum(row["clicks"] for row in found.json()) if found.status_code == 200 else -1

        wait_until(lambda: counted() == COUNTRY_CLICKS, 60, "the sample's clicks counted")
        cli(env, "keys", "revoke", reader_id)
        wait_until(lambda: [_answers(client) for client in clients.values()] == [401] * 3,
                   RECHECK_S + 5, "the revoked key refused by every process")  # fmt: skip
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{query.url.replace('https', 'http')}/healthz")


def _answers(client: httpx.Client) -> int:
    """What ``/metrics`` answers the client's key (every process serves it)."""
    try:
        return client.get("/metrics").status_code
    except httpx.TransportError:  # not serving yet
        return 0


def test_kappaflow_up_serves_https_with_authentication_on(
    kappaflow: Run, settings: Settings, certificate: dict[str, str]
) -> None:
    settings = settings.replace(apps=("clicks",), auth="on", admin_key=new_secret(), **certificate)
    with kappaflow("up", env=settings.to_environ()) as stack:
        client = stack.client()  # the admin key, trusting the authority
        assert client.get("/openapi.json").json()["components"]["securitySchemes"]
        click = {"g": "g", "u": "https://example.org/a", "c": "US", "a": "Mozilla/5.0", "t": 1}
        assert client.post("/v1/streams/clicks/events", json=[click]).status_code == 202
        stack.wait_for_no_lag()
        found = client.get("/v1/clicks/counts", params={"dimension": "country", "window": "1h"})
        assert found.json() == [
            {"window": "1h", "start": "1970-01-01T00:00:00Z", "value": "US", "clicks": 1}
        ]
        assert httpx.get(f"{stack.url}/metrics", verify=stack.verify).status_code == 401
