"""``kappaflow deploy render``: the compose file and the Kubernetes manifests, from the
settings and the apps they name, so that one settings file drives the embedded stack,
the containers and the cluster alike. Every role is the one image (``image``) with a
different command; every setting reaches it as its ``KAPPAFLOW_*`` variable; the KEDA
ScaledObject watches every app stream's lag with the numbers of ``kappaflow up``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from kappaflow.app import App, Stream, load_apps
from kappaflow.errors import AppError
from kappaflow.scale.supervisor import pool_policy
from kappaflow.settings import Rules, Scaling, Settings

PORT = 8000
"""Where every role serves HTTP in a container: ingest and query their API, a worker its
``/healthz`` and ``/metrics`` (``worker_port``)."""
UID = 10001
"""The image's numeric user and group: ``ARG UID`` of deploy/docker/Dockerfile. The pods
run as it, so that the kubelet can verify ``runAsNonRoot`` and the home is theirs."""
PROBES = {
    "ingest": {"startup": "/healthz", "liveness": "/healthz", "readiness": "/readyz"},
    "query": {"startup": "/healthz", "liveness": "/healthz", "readiness": "/readyz"},
    # No readiness: no Service sends a worker requests.
    "worker": {"startup": "/healthz", "liveness": "/healthz"},
}
STARTUP_S = 300
"""How long a role may take to start serving (a worker opens the log and the store
and joins its consumer groups first) before the kubelet restarts it; the liveness
probe counts only from then on."""
TIMING = {
    "startup": {"periodSeconds": 5, "failureThreshold": STARTUP_S // 5},
    "liveness": {"periodSeconds": 10},
    "readiness": {"periodSeconds": 10},
}
"""How often each kind of probe asks, and how many failures it allows."""
METRICS_PATH = "/metrics"
ADMIN_SECRET = "kappaflow-admin-key"
"""The Secret whose key ``secret`` every role reads as ``KAPPAFLOW_ADMIN_KEY``, if it is
there: the first API key of a deployment (``kappaflow keys new-secret`` prints one)."""
ADMIN_KEY_FROM_ENVIRONMENT = (
    "${KAPPAFLOW_ADMIN_KEY:?set KAPPAFLOW_ADMIN_KEY to what kappaflow keys new-secret prints}"
)
POSTGRES_SECRET = "kappaflow-postgres"
"""The Secret whose key ``password`` every role reads as ``PGPASSWORD`` (libpq's), so that
no DSN in a ConfigMap holds the password."""
KAFKA_CLUSTER = "kappaflow"
"""The production overlay's Strimzi ``Kafka``; its bootstrap Service is
``<name>-kafka-bootstrap``."""
ONE_BROKER_INTERNAL_TOPICS = {
    "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
}
"""A single broker's consumer offsets and transaction state (ingest appends in
transactions): Kafka's defaults want 3 replicas of each."""
Doc = dict[str, Any]


def role_environment(settings: Settings, **overrides: str) -> dict[str, str]:
    """The settings as environment variables for containers (Kafka and PostgreSQL): every
    role, workers included, serves HTTP on `PORT`."""
    environ = settings.to_environ()
    environ.update(overrides)
    del environ["KAPPAFLOW_ADMIN_KEY"]  # a secret: from the environment, or a Secret
    del environ["KAPPAFLOW_API_KEY"]  # what a client sends; no role is one
    environ["KAPPAFLOW_AUTH"] = "on"
    environ["KAPPAFLOW_HOST"] = "0.0.0.0"
    environ["KAPPAFLOW_PORT"] = environ["KAPPAFLOW_WORKER_PORT"] = str(PORT)
    return environ


def app_streams(settings: Settings) -> list[tuple[App, Stream]]:
    """Every stream of the apps the settings name, with its app."""
    return [(app, stream) for app in load_apps(settings) for stream in app.streams]


def _ready_path(role: str) -> str:
    """What says a role's container is ready: its readiness probe, or for a worker its
    liveness."""
    return PROBES[role].get("readiness", PROBES[role]["liveness"])


# -- compose ---------------------------------------------------------------------------


def compose(settings: Settings) -> Doc:
    """Kafka (KRaft), PostgreSQL, ingest, query, workers, and Kafka UI as a profile."""
    environment = role_environment(
        settings,
        KAPPAFLOW_LOG="kafka",
        KAPPAFLOW_KAFKA_BOOTSTRAP_SERVERS="kafka:9092",
        KAPPAFLOW_STORE="postgres",
        KAPPAFLOW_POSTGRES_DSN="postgresql://kappaflow:kappaflow@postgres:5432/kappaflow",
        KAPPAFLOW_DATA_DIR="/data",
    )
    environment["KAPPAFLOW_ADMIN_KEY"] = ADMIN_KEY_FROM_ENVIRONMENT
    healthy = {"kafka": {"condition": "service_healthy"},
               "postgres": {"condition": "service_healthy"}}  # fmt: skip

    def http_check(role: str) -> Doc:
        """The role's own port, read from its environment as the image's check reads it
        (an override file may move it)."""
        port = "KAPPAFLOW_WORKER_PORT" if role == "worker" else "KAPPAFLOW_PORT"
        probe = (
            "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s"
            f"{_ready_path(role)}' % os.environ['{port}'], timeout=2)"
        )
        return {"test": ["CMD", "python3", "-c", probe],
                "interval": "10s", "timeout": "3s", "retries": 5}  # fmt: skip

    services: Doc = {
        "kafka": {
            "image": "apache/kafka:3.9.0",
            "environment": {
                "KAFKA_NODE_ID": "1",
                "KAFKA_PROCESS_ROLES": "broker,controller",
                "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
                "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://kafka:9092",
                "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
                "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@kafka:9093",
                **ONE_BROKER_INTERNAL_TOPICS,
                "KAFKA_NUM_PARTITIONS": str(settings.partitions),
            },
            "healthcheck": {
                "test": ["CMD-SHELL", "/opt/kafka/bin/kafka-topics.sh "
                         "--bootstrap-server localhost:9092 --list"],
                "interval": "10s", "timeout": "10s", "retries": 10,
            },
        },
        "postgres": {
            "image": "postgres:16",
            "environment": {"POSTGRES_USER": "kappaflow", "POSTGRES_PASSWORD": "kappaflow",
                            "POSTGRES_DB": "kappaflow"},
            "healthcheck": {"test": ["CMD", "pg_isready", "-U", "kappaflow"],
                            "interval": "5s", "timeout": "3s", "retries": 10},
            "volumes": ["postgres:/var/lib/postgresql/data"],
        },
        # YugabyteDB instead of PostgreSQL: point KAPPAFLOW_POSTGRES_DSN at
        # postgresql://yugabyte@yugabyte:5433/yugabyte and run
        # image yugabytedb/yugabyte:2.25.1.0-b381 with
        # command ["bin/yugabyted", "start", "--background=false"].
        "ingest": {
            "image": settings.image, "command": ["ingest"], "environment": environment,
            "ports": [f"{PORT}:{PORT}"], "depends_on": healthy,
            "healthcheck": http_check("ingest"),
        },
        "query": {
            "image": settings.image, "command": ["query"], "environment": environment,
            "ports": [f"{PORT + 1}:{PORT}"], "depends_on": healthy,
            "healthcheck": http_check("query"),
        },
        "worker": {
            "image": settings.image, "command": ["worker"], "environment": environment,
            "depends_on": healthy, "healthcheck": http_check("worker"),
            "deploy": {"replicas": settings.workers},
        },
        "kafka-ui": {
            "image": "provectuslabs/kafka-ui:v0.7.2", "profiles": ["ui"],
            "environment": {"KAFKA_CLUSTERS_0_NAME": "kappaflow",
                            "KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS": "kafka:9092"},
            "ports": ["8080:8080"], "depends_on": {"kafka": {"condition": "service_healthy"}},
        },
    }  # fmt: skip
    return {"services": services, "volumes": {"postgres": {}}}


# -- Kubernetes --------------------------------------------------------------------------


def _labels(role: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "kappaflow", "app.kubernetes.io/component": role}


def _deployment(settings: Settings, role: str, replicas: int) -> Doc:
    """One role's pods: the image's numeric user, probes on what the role serves, and the
    annotations a Prometheus that follows them scrapes (or a PodMonitor on port ``http``)."""
    container: Doc = {
        "name": role,
        "image": settings.image,
        "args": [role],
        "envFrom": [{"configMapRef": {"name": "kappaflow-settings"}}],
        "env": [{"name": "PGPASSWORD", "valueFrom": {
                    "secretKeyRef": {"name": POSTGRES_SECRET, "key": "password"}}},
                {"name": "KAPPAFLOW_ADMIN_KEY", "valueFrom": {
                    "secretKeyRef": {"name": ADMIN_SECRET, "key": "secret", "optional": True}}}],
        "ports": [{"name": "http", "containerPort": PORT}],
        "resources": {
            "requests": {"cpu": "500m", "memory": "512Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }  # fmt: skip
    for kind, path in PROBES[role].items():
        container[f"{kind}Probe"] = {"httpGet": {"path": path, "port": "http"}, **TIMING[kind]}
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": str(PORT),
              "prometheus.io/path": METRICS_PATH}  # fmt: skip
    pod_security = {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                    "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"kappaflow-{role}", "labels": _labels(role)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _labels(role)},
            "template": {"metadata": {"labels": _labels(role), "annotations": scrape},
                         "spec": {"securityContext": pod_security, "containers": [container]}},
        },
    }  # fmt: skip


def _service(role: str) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"kappaflow-{role}", "labels": _labels(role)},
        "spec": {"selector": _labels(role),
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }  # fmt: skip


def _budget(role: str) -> Doc:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": f"kappaflow-{role}"},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(role)}},
    }


def _trigger_name(group: str) -> str:
    """A consumer group as a trigger name KEDA's formula can refer to."""
    return "lag_" + re.sub(r"\W", "_", group, flags=re.ASCII)


def scaled_object(settings: Settings) -> Doc:
    """KEDA's Kafka trigger per app stream and the HPA behavior, with the policy `up`
    runs (`Settings.scaling`). A worker pod processes every stream, as `up`'s workers do, so
    the lags are added up (``scalingModifiers``) against ``lag_threshold`` per worker:
    the HPA alone would scale on the largest."""
    streams = app_streams(settings)
    policy = pool_policy(settings, [stream.name for _, stream in streams])
    triggers = [_trigger(settings, policy, app.group(stream), stream.name)
                for app, stream in streams
                if not policy.topics or stream.name in policy.topics]  # fmt: skip
    names = [trigger["name"] for trigger in triggers]
    if len(set(names)) < len(names):
        groups = [trigger["metadata"]["consumerGroup"] for trigger in triggers]
        raise AppError(f"consumer groups {groups} give KEDA triggers the same name {names}: "
                       "rename an app or a stream")  # fmt: skip
    advanced: Doc = {
        "scalingModifiers": {
            "formula": " + ".join(names),
            "target": str(policy.lag_threshold),
            "activationTarget": str(policy.activation_lag_threshold),
            "metricType": "AverageValue",
        }
    }
    if policy.behavior:
        advanced["horizontalPodAutoscalerConfig"] = {"behavior": _behavior(policy)}
    spec: Doc = {
        "scaleTargetRef": {"name": "kappaflow-worker"},
        "pollingInterval": round(settings.polling_interval_s),
        "cooldownPeriod": round(policy.cooldown_period_s),
        "initialCooldownPeriod": round(policy.initial_cooldown_period_s),
        **({} if policy.idle_replica_count is None
           else {"idleReplicaCount": policy.idle_replica_count}),
        "minReplicaCount": policy.min_replicas,
        "maxReplicaCount": policy.max_replicas,
        **({} if not policy.fallback_replicas else {"fallback": {
            "failureThreshold": policy.fallback_failure_threshold,
            "replicas": policy.fallback_replicas,
            "behavior": policy.fallback_behavior,
        }}),
        "advanced": advanced,
        "triggers": triggers,
    }  # fmt: skip
    metadata: Doc = {"name": "kappaflow-worker"}
    if policy.paused_replicas is not None:
        metadata["annotations"] = {
            "autoscaling.keda.sh/paused-replicas": str(policy.paused_replicas)
        }
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": metadata,
            "spec": spec}  # fmt: skip


def _trigger(settings: Settings, policy: Scaling, group: str, topic: str) -> Doc:
    def flag(value: bool) -> str:
        return str(value).lower()

    return {
        "type": "kafka",
        "name": _trigger_name(group),
        "metadata": {
            "bootstrapServers": settings.kafka_bootstrap_servers,
            "consumerGroup": group,
            "topic": topic,
            "lagThreshold": str(policy.lag_threshold),
            "activationLagThreshold": str(policy.activation_lag_threshold),
            "offsetResetPolicy": policy.offset_reset_policy,
            "allowIdleConsumers": flag(policy.allow_idle_consumers),
            "excludePersistentLag": flag(policy.exclude_persistent_lag),
            "scaleToZeroOnInvalidOffset": flag(policy.scale_to_zero_on_invalid_offset),
            "limitToPartitionsWithLag": flag(policy.limit_to_partitions_with_lag),
            "ensureEvenDistributionOfPartitions": flag(
                policy.ensure_even_distribution_of_partitions
            ),
            **({"partitionLimitation": policy.partition_limitation}
               if policy.partition_limitation.strip() else {}),
        },
    }  # fmt: skip


def _behavior(policy: Scaling) -> Doc:
    def direction(window: float, rules: Rules, select: str) -> Doc:
        return {
            "stabilizationWindowSeconds": round(window),
            "selectPolicy": select.capitalize(),
            "policies": [{"type": "Pods" if r.kind == "pods" else "Percent", "value": r.value,
                          "periodSeconds": r.period_s} for r in rules],
        }  # fmt: skip

    return {
        "scaleUp": direction(policy.scale_up_stabilization_s, policy.scale_up_policies,
                             policy.scale_up_select),
        "scaleDown": direction(policy.scale_down_stabilization_s, policy.scale_down_policies,
                               policy.scale_down_select),
    }  # fmt: skip


def _ingest_autoscaler() -> Doc:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "kappaflow-ingest"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": "kappaflow-ingest"},
            "minReplicas": 2, "maxReplicas": 10,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
        },
    }  # fmt: skip


def k8s_base(settings: Settings) -> dict[str, list[Doc]]:
    """File name -> objects of the kustomize base. Its Kafka and PostgreSQL are the
    settings' (an overlay names the cluster's); the password comes from the Secret
    `POSTGRES_SECRET`, which the base does not hold."""
    environment = role_environment(settings, KAPPAFLOW_LOG="kafka", KAPPAFLOW_STORE="postgres")
    config = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "kappaflow-settings"}, "data": environment}  # fmt: skip
    autoscaler = scaled_object(settings)
    workers = max(autoscaler["spec"]["minReplicaCount"], 1)  # until KEDA first decides
    files = {
        "settings.yaml": [config],
        "ingest.yaml": [_deployment(settings, "ingest", 2), _service("ingest"),
                        _budget("ingest"), _ingest_autoscaler()],
        "query.yaml": [_deployment(settings, "query", 2), _service("query"), _budget("query")],
        "worker.yaml": [_deployment(settings, "worker", workers), _budget("worker"),
                        autoscaler],
    }  # fmt: skip
    files["kustomization.yaml"] = [{
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "labels": [{"pairs": {"app.kubernetes.io/part-of": "kappaflow"}}],
        "resources": sorted(name for name in files if name != "kustomization.yaml"),
    }]  # fmt: skip
    return files


def write(files: dict[str, list[Any]], directory: Path) -> list[Path]:
    """Write each file's objects as YAML documents."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, objects in files.items():
        path = directory / name
        path.write_text(dump(objects))
        written.append(path)
    return written


def dump(objects: list[Any]) -> str:
    header = "# Rendered by `kappaflow deploy render` from the settings; edit those instead.\n"
    return header + yaml.safe_dump_all(objects, sort_keys=False, width=100)


def _in_cluster(name: str, image: str, port: int, env: list[Doc]) -> list[Doc]:
    """A single-replica Deployment and Service, for the dev overlay's Kafka and Postgres."""
    labels = {"app.kubernetes.io/name": name}
    container: Doc = {"name": name, "image": image, "ports": [{"containerPort": port}],
                      "env": env}  # fmt: skip
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"containers": [container]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
         "spec": {"selector": labels, "ports": [{"port": port, "targetPort": port}]}},
    ]  # fmt: skip


def _values(env: dict[str, str]) -> list[Doc]:
    return [{"name": name, "value": value} for name, value in env.items()]


def _settings_patch(bootstrap: str, dsn: str) -> Doc:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kappaflow-settings"},
            "data": {"KAPPAFLOW_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                     "KAPPAFLOW_POSTGRES_DSN": dsn}}  # fmt: skip


def _bootstrap_patch(triggers: int, bootstrap: str) -> list[Doc]:
    """A JSON patch pointing each of the ScaledObject's triggers at the overlay's Kafka
    (a strategic merge would replace a custom resource's list whole)."""
    return [{"op": "replace", "path": f"/spec/triggers/{index}/metadata/bootstrapServers",
             "value": bootstrap} for index in range(triggers)]  # fmt: skip


def _kustomization(resources: list[str]) -> Doc:
    scaled = {"group": "keda.sh", "version": "v1alpha1", "kind": "ScaledObject",
              "name": "kappaflow-worker"}  # fmt: skip
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": resources,
            "patches": [{"path": "settings-patch.yaml"},
                        {"path": "scaledobject-patch.yaml", "target": scaled}]}  # fmt: skip


def _topic(name: str, partitions: int) -> Doc:
    """Strimzi's KafkaTopic of a stream: named as Kubernetes names objects (lower case,
    no ``_``), for the topic of the stream's name."""
    return {"apiVersion": "kafka.strimzi.io/v1beta2", "kind": "KafkaTopic",
            "metadata": {"name": re.sub(r"[^a-z0-9.-]", "-", name.lower()),
                         "labels": {"strimzi.io/cluster": KAFKA_CLUSTER}},
            "spec": {"topicName": name, "partitions": partitions, "replicas": 3}}  # fmt: skip


def k8s_overlays(settings: Settings) -> dict[str, dict[str, list[Any]]]:
    """Overlay name -> file name -> objects. Each points the roles and KEDA's triggers
    at its own Kafka and its database. ``dev``: one Kafka and one PostgreSQL in the
    cluster, and the Secret of their password. ``production``: Strimzi's Kafka (KRaft,
    one node pool) and a KafkaTopic per app stream, and the values for YugabyteDB's Helm
    chart; the Secret `POSTGRES_SECRET` is the user's to create."""
    streams = app_streams(settings)
    kafka_env = {
        "KAFKA_NODE_ID": "1", "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://kafka:9092",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        **ONE_BROKER_INTERNAL_TOPICS, "KAFKA_NUM_PARTITIONS": str(settings.partitions),
    }  # fmt: skip
    password = {"name": "POSTGRES_PASSWORD", "valueFrom": {
        "secretKeyRef": {"name": POSTGRES_SECRET, "key": "password"}}}  # fmt: skip
    postgres_env = [*_values({"POSTGRES_USER": "kappaflow", "POSTGRES_DB": "kappaflow"}), password]
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": POSTGRES_SECRET},
              "type": "Opaque", "stringData": {"password": "kappaflow"}}  # fmt: skip
    dev = {
        "kafka.yaml": _in_cluster("kafka", "apache/kafka:3.9.0", 9092, _values(kafka_env)),
        "postgres.yaml": [secret, *_in_cluster("postgres", "postgres:16", 5432, postgres_env)],
        "settings-patch.yaml": [_settings_patch(
            "kafka:9092", "postgresql://kappaflow@postgres:5432/kappaflow")],
        "scaledobject-patch.yaml": [_bootstrap_patch(len(streams), "kafka:9092")],
        "kustomization.yaml": [_kustomization(["../../base", "kafka.yaml", "postgres.yaml"])],
    }  # fmt: skip
    cluster = {"strimzi.io/cluster": KAFKA_CLUSTER}
    bootstrap = f"{KAFKA_CLUSTER}-kafka-bootstrap:9092"
    strimzi = [
        {"apiVersion": "kafka.strimzi.io/v1beta2", "kind": "KafkaNodePool",
         "metadata": {"name": "brokers", "labels": cluster},
         "spec": {"replicas": 3, "roles": ["controller", "broker"],
                  "storage": {"type": "persistent-claim", "size": "100Gi"}}},
        {"apiVersion": "kafka.strimzi.io/v1beta2", "kind": "Kafka",
         "metadata": {"name": KAFKA_CLUSTER, "annotations": {
             "strimzi.io/kraft": "enabled", "strimzi.io/node-pools": "enabled"}},
         "spec": {"kafka": {"listeners": [
                      {"name": "plain", "port": 9092, "type": "internal", "tls": False}],
                            "config": {"default.replication.factor": 3,
                                       "min.insync.replicas": 2,
                                       "transaction.state.log.replication.factor": 3,
                                       "transaction.state.log.min.isr": 2}},
                  "entityOperator": {"topicOperator": {}}}},
        *(_topic(stream.name, settings.partitions) for _, stream in streams),
    ]  # fmt: skip
    production = {
        "kafka.yaml": strimzi,
        "settings-patch.yaml": [_settings_patch(
            bootstrap, "postgresql://yugabyte@yb-tservers:5433/yugabyte")],
        "scaledobject-patch.yaml": [_bootstrap_patch(len(streams), bootstrap)],
        "kustomization.yaml": [_kustomization(["../../base", "kafka.yaml"])],
        "yugabytedb-values.yaml": [{"replicas": {"master": 3, "tserver": 3},
                                    "storage": {"tserver": {"size": "100Gi"}}}],
    }  # fmt: skip
    return {"dev": dev, "production": production}
