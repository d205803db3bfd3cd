"""deploy/compose.yaml run for real with podman-compose: its kappaflow services (ingest,
query, a worker) from the image built for the test session. The images of Kafka and
PostgreSQL it names cannot be pulled here (no registry is reachable), so an override
file points the kappaflow services at the test session's broker and PostgreSQL
instead, on the host's network (each on a port of its own there, so one worker)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from kappaflow.keys import new_secret
from kappaflow.testing import wait_until
from kappaflow.testing.containers import Container
from kappaflow.testing.kafka import KafkaCluster
from kappaflow.up import free_ports

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "query", "worker")
ADMIN_KEY = new_secret()
"""What the compose file reads from ``KAPPAFLOW_ADMIN_KEY``, and the requests send."""
KEY = {"authorization": f"Bearer {ADMIN_KEY}"}


def override(image: str, bootstrap: str, dsn: str, ports: dict[str, int]) -> str:
    """The override file: the test's image, broker and database; no dependency on the
    compose file's own Kafka and PostgreSQL; the host's network."""
    lines = ["services:"]
    for service in SERVICES:
        lines += [f"  {service}:", f"    image: {image}", "    network_mode: host",
                  "    depends_on: !reset {}", "    deploy:", "      replicas: 1"]  # fmt: skip
        if service != "worker":  # the only ones that publish a port
            lines.append("    ports: !reset []")
        lines += ["    environment:", f'      KAPPAFLOW_KAFKA_BOOTSTRAP_SERVERS: "{bootstrap}"',
                  f'      KAPPAFLOW_POSTGRES_DSN: "{dsn}"',
                  f'      KAPPAFLOW_PORT: "{ports[service]}"',
                  f'      KAPPAFLOW_WORKER_PORT: "{ports[service]}"']  # fmt: skip
    return "\n".join(lines) + "\n"


def test_the_compose_files_services_run_and_serve_the_heartbeat_path(
    podman_env: dict[str, str],
    image: str,
    kafka_broker: KafkaCluster,
    postgres_dsn: str,
    tmp_path: Path,
) -> None:
    ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
    (tmp_path / "override.yaml").write_text(
        override(image, kafka_broker.bootstrap_servers, postgres_dsn, ports)
    )
    project = f"kappaflow-test-{uuid.uuid4().hex[:8]}"
    compose = [sys.executable, "-m", "podman_compose", "--project-name", project,
               "--in-pod", "false", "-f", str(REPO / "deploy" / "compose.yaml"),
               "-f", str(tmp_path / "override.yaml")]  # fmt: skip

    environment = {**podman_env, "KAPPAFLOW_ADMIN_KEY": ADMIN_KEY}

    def run(*arguments: str) -> str:
        done = subprocess.run([*compose, *arguments], env=environment, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, f"{arguments}: {done.stdout}{done.stderr}"
        return done.stdout

    try:
        run("up", "--detach", "--no-deps", "ingest", "query")
        urls = {service: f"http://127.0.0.1:{port}" for service, port in ports.items()}
        for service in ("ingest", "query"):
            wait_until(lambda s=service: ready(urls[s], "/readyz"), 120, f"{service} ready")
        run("up", "--detach", "--no-deps", "worker")
        wait_until(lambda: ready(urls["worker"], "/healthz"), 120, "the worker alive")

        beat = {"user_id": "compose-user", "video_id": "v", "position_s": 73.0,
                "ts": int(time.time() * 1000)}  # fmt: skip
        posted = httpx.post(f"{urls['ingest']}/v1/streams/heartbeats/events", json=beat,
                            headers=KEY)  # fmt: skip
        assert posted.status_code == 202

        def resume_position() -> float | None:
            answer = httpx.get(f"{urls['query']}/v1/progress/compose-user/v", timeout=5,
                               headers=KEY)  # fmt: skip
            return answer.json()["resume_position_s"] if answer.status_code == 200 else None

        assert wait_until(resume_position, 60, "the progress from the query service") == 73.0
        for service in SERVICES:
            container = Container(podman_env, f"{project}_{service}_1")
            assert container.healthy(), (service, container.logs())
    finally:
        subprocess.run([*compose, "down", "--timeout", "10"], env=environment,
                       capture_output=True, timeout=300)  # fmt: skip


def ready(url: str, path: str) -> bool:
    try:
        return httpx.get(url + path, timeout=2).status_code == 200
    except httpx.TransportError:
        return False
