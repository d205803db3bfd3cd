"""Real Apache Kafka clusters for tests and benchmarks: one or three nodes in KRaft mode
(each a combined broker and controller) on free ports of 127.0.0.1, run on this
machine's Java from a folder of Kafka's jars, with storage formatted in a temporary
directory that is removed afterwards.

The jars come from ``KAFKA_LIBS`` (a Kafka installation's ``libs/`` folder, for one) or
from the folder a caller names (kappaflow's own: ``tools/kafka/libs``, which ``make
test`` fills from Maven Central). A node can be killed, paused and restarted, as fault
tests need."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from kappaflow.signals import die_with_parent
from kappaflow.up import free_ports

QUICK_START = ("-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
"""Java options for tests: a quick start and a small footprint, at some cost in
throughput (benchmarks pass ``()``, the JVM's defaults)."""

LOG4J = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/broker.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
"""


class KafkaNotFound(RuntimeError):
    """Java or Kafka's jars are missing; the message says what to install."""


def kafka_libs(default: Path | None = None) -> Path:
    """The folder of Kafka's jars: ``KAFKA_LIBS`` if set, else ``default`` (kappaflow's
    own, which ``make test`` fills); raises `KafkaNotFound` unless it holds Kafka's
    broker and ``java`` is on ``PATH``."""
    named = os.environ.get("KAFKA_LIBS")
    folder = Path(named) if named else default
    if not shutil.which("java"):
        raise KafkaNotFound("java not found on PATH: install Java 17 or later "
                            "(Debian: apt-get install openjdk-17-jre-headless)")  # fmt: skip
    install = ("set KAFKA_LIBS to the libs/ folder of an Apache Kafka 4.x installation "
               "(https://kafka.apache.org/downloads)")  # fmt: skip
    if folder is None:
        raise KafkaNotFound(f"no Kafka broker jars: {install}")
    if not any(folder.glob("kafka_2.13-*.jar")):
        if not named:  # kappaflow's own folder
            install = ("run `make test`, which fetches them with Maven (mvn -f "
                       "tools/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory=libs), "
                       f"or {install}")  # fmt: skip
        raise KafkaNotFound(
            f"no Kafka broker jars (kafka_2.13-*.jar) in {str(folder)!r}: {install}"
        )
    return folder


class KafkaNode:
    """One combined broker and controller of a `KafkaCluster`."""

    def __init__(
        self,
        node_id: int,
        directory: Path,
        libs: Path,
        java_options: Sequence[str],
        ports: tuple[int, int],
    ) -> None:
        """``ports``: the broker's and the controller's."""
        self.node_id, self.directory, self.libs = node_id, directory, libs
        self.java_options = tuple(java_options)
        self.port, self.controller_port = ports
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java(self, main: str, *arguments: str) -> list[str]:
        return [
            "java", *self.java_options, "-cp", f"{self.libs}/*",
            f"-Dlog4j2.configurationFile={self.directory.parent / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.directory}", main, *arguments,
        ]  # fmt: skip

    def start(self) -> None:
        """Start the node's process (again, after `kill`, on the same storage)."""
        assert self.process is None or self.process.poll() is not None, "already running"
        with (self.directory / "stdout.log").open("ab") as sink:
            self.process = subprocess.Popen(
                self._java("kafka.Kafka", str(self.directory / "server.properties")),
                stdout=sink, stderr=subprocess.STDOUT, preexec_fn=die_with_parent(signal.SIGKILL),
            )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL the node, as a crash would end it."""
        if self.process is not None and self.process.poll() is None:
            if self.paused:
                self.resume()
            self.process.kill()
            self.process.wait()

    paused = False

    def pause(self) -> None:
        """SIGSTOP the node: it holds its connections but answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def log(self) -> str:
        """The end of the node's log, for a failing test's message."""
        path = self.directory / "broker.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


class KafkaCluster:
    """A running cluster: its nodes and its bootstrap servers."""

    def __init__(self, nodes: list[KafkaNode]) -> None:
        self.nodes = nodes

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.address for node in self.nodes)

    def wait_until_ready(self, timeout_s: float = 60) -> None:
        """Until every node is in the cluster's metadata, as a client sees it."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        deadline = time.monotonic() + timeout_s
        seen: set[int] = set()
        while len(seen) < len(self.nodes):
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(
                        f"Kafka node {node.node_id} exited with {node.process.returncode}:\n"
                        f"{node.log()}"
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kafka nodes {sorted(seen)} of {len(self.nodes)} answered "
                                   f"within {timeout_s:g} s:\n{self.nodes[0].log()}")  # fmt: skip
            try:
                seen = set(admin.list_topics(timeout=1).brokers)
            except KafkaException:
                time.sleep(0.1)


def _properties(node: KafkaNode, nodes: list[KafkaNode], extra: Mapping[str, str]) -> str:
    replicas = len(nodes)
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{node.address},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{node.address}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(node.directory / "data"),
        # kappaflow creates its topics; a topic it did not create is an error to see.
        "auto.create.topics.enable": "false",
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(min(2, replicas)),
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min(2, replicas)),
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": str(min(2, replicas)),
        "group.initial.rebalance.delay.ms": "0",
        **extra,
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


@contextmanager
def kafka_cluster(
    libs: Path,
    nodes: int = 1,
    heap: str = "512m",
    config: Mapping[str, str] | None = None,
    java_options: Sequence[str] = QUICK_START,
) -> Iterator[KafkaCluster]:
    """Run a fresh KRaft cluster of ``nodes`` combined brokers and controllers, each with
    a Java heap of at most ``heap``, for the block. With three, topics, the consumer
    offsets and the transaction log are replicated three times with
    ``min.insync.replicas`` 2. ``config`` adds or overrides broker settings. Topics are
    not auto-created."""
    root = Path(tempfile.mkdtemp(prefix="kafka-"))
    (root / "log4j2.properties").write_text(LOG4J)
    options = [f"-Xmx{heap}", *java_options]
    ports = iter(free_ports(2 * nodes))
    members = [
        KafkaNode(n, root / f"node-{n}", libs, options, (next(ports), next(ports)))
        for n in range(1, nodes + 1)
    ]
    cluster = KafkaCluster(members)
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    try:
        for node in members:
            node.directory.mkdir()
            (node.directory / "server.properties").write_text(
                _properties(node, members, config or {})
            )
        _format(members, cluster_id)
        for node in members:
            node.start()
        cluster.wait_until_ready()
        yield cluster
    finally:
        for node in members:
            node.kill()
        shutil.rmtree(root, ignore_errors=True)


def _format(nodes: list[KafkaNode], cluster_id: str) -> None:
    """Format every node's storage for the cluster, the formatters running together."""
    running = []
    for node in nodes:
        properties = str(node.directory / "server.properties")
        command = node._java("kafka.tools.StorageTool", "format", "--ignore-formatted",
                             f"--cluster-id={cluster_id}", f"--config={properties}")  # fmt: skip
        output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
        running.append(
            subprocess.Popen(command, **output, preexec_fn=die_with_parent(signal.SIGKILL))
        )
    for node, process in zip(nodes, running, strict=True):
        output, _ = process.communicate(timeout=120)
        if process.returncode != 0:
            raise RuntimeError(f"formatting Kafka node {node.node_id} failed: {output.decode()}")
