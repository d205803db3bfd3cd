"""The distributed path end to end: ``kappaflow up`` on a real Apache Kafka broker
(one, from tools/kafka/libs or ``KAFKA_LIBS``) and PostgreSQL (a server of the run's
own, committing durably), against the embedded log and SQLite in the same run, each
searched for its highest sustained rate as `bench_endtoend` does, with shorter steps.
The broker and the database share the machine's cores with the stack and the load
generator, as the embedded path's files do; their CPU counts as the stack's."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import psutil
import psycopg
from bench_endtoend import (
    OUTSIDE,
    Stack,
    Step,
    embedded,
    highest,
    print_steps,
    search,
    simulated_pool,
)
from common import KAFKA_LIBS, Figure
from rich.console import Console

from kappaflow.settings import Settings
from kappaflow.testing.kafka import kafka_cluster, kafka_libs
from kappaflow.testing.postgres import postgres_database, postgres_server

STEP_S = 120
"""Each step's second half (1 minute) is judged."""
EMBEDDED, KAFKA = "embedded + SQLite", "Kafka + PostgreSQL"
console = Console(width=130)


@contextmanager
def on_kafka(server: str, data: str) -> Iterator[Stack]:
    """A fresh one-broker Kafka cluster and a fresh database on ``server``."""
    with (
        kafka_cluster(kafka_libs(KAFKA_LIBS), heap="1g", java_options=()) as kafka,
        postgres_database(server) as dsn,
    ):
        settings = Settings.load(overrides={
            "data_dir": data, "log": "kafka", "kafka_bootstrap_servers": kafka.bootstrap_servers,
            "store": "postgres", "postgres_dsn": dsn,
        })  # fmt: skip
        brokers = [node.process.pid for node in kafka.nodes if node.process is not None]
        yield Stack(settings, [*brokers, postmaster(dsn)])


def postmaster(dsn: str) -> int:
    """The pid of the PostgreSQL server's main process (its sessions' parent)."""
    with psycopg.connect(dsn) as db:
        (backend,) = db.execute("SELECT pg_backend_pid()").fetchone()
        return psutil.Process(backend).ppid()


def run(scale: float) -> list[Figure]:
    seconds = max(10.0, STEP_S * scale)
    steps: dict[str, list[Step]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="kappaflow-bench-") as tmp,
        postgres_server(durable=True) as server,
    ):
        pool = simulated_pool(Path(tmp), scale)
        for name, stacks in ((EMBEDDED, embedded), (KAFKA, partial(on_kafka, server.dsn))):
            console.rule(name)
            steps[name] = search(pool, seconds, stacks)
            print_steps(steps[name])
    best = {name: highest(found) for name, found in steps.items()}
    figures = [Figure(f"{KAFKA}: highest sustained rate", _target(best[KAFKA]), "events/s",
                      f"{EMBEDDED}, same run", _target(best[EMBEDDED]))]  # fmt: skip
    # A step can hold a backlog steady that no probe gets through within its half.
    sustained = [{s.target: s for s in found if s.sustained and not math.isnan(s.percentiles()[1])}
                 for found in steps.values()]  # fmt: skip
    both = set(sustained[0]).intersection(sustained[1])
    if both:
        rate = max(both)
        on_kafka_p99 = sustained[1][rate].percentiles()[1]
        figures.append(Figure(f"{KAFKA}: p99 ingest->queryable at {rate:,.0f}/s", on_kafka_p99,
                              "ms", EMBEDDED, sustained[0][rate].percentiles()[1]))  # fmt: skip
    if best[KAFKA] is not None:
        cpus = float(psutil.cpu_count() or 1)
        cores = best[KAFKA].cores
        stack = sum(used for name, used in cores.items() if name not in OUTSIDE)
        figures.append(Figure(f"{KAFKA}: CPU of the stack at its highest rate", stack,
                              "cores", "CPUs", cpus))  # fmt: skip
        for name in ("kafka broker", "postgres"):
            figures.append(Figure(f"{KAFKA}: CPU of {name} at its highest rate",
                                  cores.get(name, 0.0), "cores", "CPUs", cpus))  # fmt: skip
    return figures


def _target(step: Step | None) -> float:
    return step.target if step else 0.0
