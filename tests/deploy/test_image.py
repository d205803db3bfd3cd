"""The image built for real (`make image`, with podman) and every role run from it as a
container against the test session's Kafka broker and PostgreSQL server: heartbeats
posted to the ingest container are read back from the query container; every
container's health check passes, as the image's numeric non-root user; a worker
container ends cleanly on SIGTERM; the autoscaler container reads the broker's lag and
scales its workers."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import httpx
import pytest

from kappaflow.keys import new_secret
from kappaflow.testing import wait_until
from kappaflow.testing.containers import Container, run_container
from kappaflow.testing.kafka import KafkaCluster
from kappaflow.up import free_port

pytestmark = pytest.mark.integration
USERS = 6
CLICKS = 3_000
ADMIN_KEY = new_secret()
"""The containers listen on 0.0.0.0, so they ask for an API key: this one."""
KEY = {"authorization": f"Bearer {ADMIN_KEY}"}
SCALED_UP = re.compile(r"scale up: 1 -> 2 workers; lag (\d+)")


@pytest.fixture
def stack_env(kafka_broker: KafkaCluster, postgres_dsn: str) -> dict[str, str]:
    """The settings every container gets: the real broker and database, both apps."""
    return {
        "KAPPAFLOW_APPS": "video,clicks",
        "KAPPAFLOW_LOG": "kafka",
        "KAPPAFLOW_KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
        "KAPPAFLOW_STORE": "postgres",
        "KAPPAFLOW_POSTGRES_DSN": postgres_dsn,
        "KAPPAFLOW_ADMIN_KEY": ADMIN_KEY,
    }


@pytest.fixture
def start(
    podman_env: dict[str, str], image: str, stack_env: dict[str, str]
) -> Iterator[Callable[..., tuple[Container, str]]]:
    """``start(role, **settings)``: a container of the image running ``role`` on a port
    of its own (the containers share the host's network), and the URL of that port."""
    with ExitStack() as containers:

        def started(role: str, **settings: str) -> tuple[Container, str]:
            port = str(free_port())
            environment = {**stack_env, "KAPPAFLOW_PORT": port, "KAPPAFLOW_WORKER_PORT": port,
                           **settings}  # fmt: skip
            container = containers.enter_context(
                run_container(podman_env, image, [role], environment)
            )
            return container, f"http://127.0.0.1:{port}"

        yield started


def answers(container: Container, url: str, path: str) -> Callable[[], bool]:
    def answered() -> bool:
        assert container.running(), container.logs()
        try:
            return httpx.get(url + path, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    return answered


def test_every_role_runs_from_the_image_as_its_non_root_user(
    start: Callable[..., tuple[Container, str]],
) -> None:
    ingest, ingest_url = start("ingest")
    query, query_url = start("query")
    wait_until(answers(ingest, ingest_url, "/readyz"), 120, "ingest container ready")
    wait_until(answers(query, query_url, "/readyz"), 120, "query container ready")
    workers = [start("worker") for _ in range(2)]
    for worker, url in workers:
        wait_until(answers(worker, url, "/healthz"), 120, "worker container alive")

    now_ms = int(time.time() * 1000)
    beats = [{"user_id": f"c-{u}", "video_id": "v", "position_s": 40.0 + u, "ts": now_ms}
             for u in range(USERS)]  # fmt: skip
    posted = httpx.post(f"{ingest_url}/v1/streams/heartbeats/events", json=beats, timeout=10,
                        headers=KEY)  # fmt: skip
    assert (posted.status_code, posted.json()) == (202, {"accepted": USERS})

    def progress_read() -> list[float] | None:
        positions = [httpx.get(f"{query_url}/v1/progress/c-{u}/v", timeout=5, headers=KEY)
                     for u in range(USERS)]  # fmt: skip
        if any(answer.status_code != 200 for answer in positions):
            return None
        return [answer.json()["resume_position_s"] for answer in positions]

    try:
        assert wait_until(progress_read, 60, "every user's progress from the query container") == [
            40.0 + u for u in range(USERS)
        ]
    except AssertionError as missing:
        logs = "\n".join(worker.logs() for worker, _ in workers)
        raise AssertionError(f"{missing}\nworkers' logs:\n{logs}") from None
    counted = 'kappaflow_events_processed_total{group="video.heartbeats"}'
    processed = [line.split()[-1] for _, url in workers
                 for line in httpx.get(f"{url}/metrics", timeout=5, headers=KEY).text.splitlines()
                 if line.startswith(counted)]  # fmt: skip
    assert len(processed) == 2 and sum(map(float, processed)) == USERS

    for container in (ingest, query, *(worker for worker, _ in workers)):
        assert container.healthy(), container.logs()
        assert container.podman("exec", container.name, "id", "-u").strip() == "10001"
    for worker, _ in workers:
        assert worker.stop() == 0, worker.logs()


def test_the_autoscaler_container_reads_the_brokers_lag_and_scales(
    start: Callable[..., tuple[Container, str]],
) -> None:
    ingest, ingest_url = start("ingest")
    wait_until(answers(ingest, ingest_url, "/readyz"), 120, "ingest container ready")
    t = int(time.time()) - 60
    clicks = [{"t": t, "u": f"https://example.org/{i % 50}"} for i in range(CLICKS)]
    posted = httpx.post(f"{ingest_url}/v1/streams/clicks/events", json=clicks, timeout=30,
                        headers=KEY)  # fmt: skip
    assert (posted.status_code, posted.json()) == (202, {"accepted": CLICKS})

    autoscaler, _ = start("autoscaler", KAPPAFLOW_LAG_THRESHOLD="100",
                          KAPPAFLOW_POLLING_INTERVAL_S="1")  # fmt: skip
    decision = wait_until(lambda: SCALED_UP.search(autoscaler.logs()), 60,
                          "the autoscaler scaling up on the broker's lag")  # fmt: skip
    assert int(decision[1]) >= CLICKS  # and the transactions' markers
    assert autoscaler.stop() == 0, autoscaler.logs()
