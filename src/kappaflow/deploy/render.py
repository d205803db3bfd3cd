"""``kappaflow deploy render``: the compose file and the Kubernetes manifests, from the
settings, so that one settings file drives the embedded stack, the containers and the
cluster alike. Every role is the one image with a different command; every setting
reaches it as its ``KAPPAFLOW_*`` variable; the KEDA ScaledObject carries the same
autoscaling numbers as ``kappaflow up``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kappaflow.settings import Settings

IMAGE = "ghcr.io/kappaflow/kappaflow:0.1.0"
PORT = 8000
ROLES = ("ingest", "query", "worker")
PROBES = {"liveness": "/healthz", "readiness": "/readyz"}
ONE_BROKER_INTERNAL_TOPICS = {
    "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
}
"""A single broker's consumer offsets and transaction state (ingest appends in
transactions): Kafka's defaults want 3 replicas of each."""
Doc = dict[str, Any]


def role_environment(settings: Settings, **overrides: str) -> dict[str, str]:
    """The settings as environment variables for containers (Kafka and PostgreSQL)."""
    environ = settings.to_environ()
    environ.update(overrides)
    environ["KAPPAFLOW_HOST"] = "0.0.0.0"
    environ["KAPPAFLOW_PORT"] = str(PORT)
    return environ


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
    healthy = {"kafka": {"condition": "service_healthy"},
               "postgres": {"condition": "service_healthy"}}  # fmt: skip
    http_check = {
        "test": ["CMD", "python", "-c", "import urllib.request; "
                 f"urllib.request.urlopen('http://127.0.0.1:{PORT}/readyz')"],
        "interval": "10s", "timeout": "3s", "retries": 5,
    }  # fmt: skip
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
            "image": IMAGE, "command": ["ingest"], "environment": environment,
            "ports": [f"{PORT}:{PORT}"], "depends_on": healthy, "healthcheck": http_check,
        },
        "query": {
            "image": IMAGE, "command": ["query"], "environment": environment,
            "ports": [f"{PORT + 1}:{PORT}"], "depends_on": healthy, "healthcheck": http_check,
        },
        "worker": {
            "image": IMAGE, "command": ["worker"], "environment": environment,
            "depends_on": healthy, "deploy": {"replicas": settings.workers},
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


def _deployment(role: str, replicas: int) -> Doc:
    container: Doc = {
        "name": role,
        "image": IMAGE,
        "args": [role],
        "envFrom": [{"configMapRef": {"name": "kappaflow-settings"}}],
        "resources": {
            "requests": {"cpu": "500m", "memory": "512Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
    }
    if role != "worker":
        container["ports"] = [{"name": "http", "containerPort": PORT}]
        for kind, path in PROBES.items():
            container[f"{kind}Probe"] = {"httpGet": {"path": path, "port": "http"},
                                         "periodSeconds": 10}  # fmt: skip
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"kappaflow-{role}", "labels": _labels(role)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _labels(role)},
            "template": {"metadata": {"labels": _labels(role)},
                         "spec": {"containers": [container]}},
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


def scaled_object(settings: Settings) -> Doc:
    """KEDA's Kafka trigger and the HPA behavior, with the numbers of `up`."""
    topic = "heartbeats"
    trigger = {
        "type": "kafka",
        "metadata": {
            "bootstrapServers": settings.kafka_bootstrap_servers,
            "consumerGroup": "video.heartbeats",
            "topic": topic,
            "lagThreshold": str(settings.lag_threshold),
            "activationLagThreshold": str(settings.activation_lag_threshold),
            "offsetResetPolicy": settings.offset_reset_policy,
            "allowIdleConsumers": str(settings.allow_idle_consumers).lower(),
            "excludePersistentLag": str(settings.exclude_persistent_lag).lower(),
            "scaleToZeroOnInvalidOffset": str(settings.scale_to_zero_on_invalid_offset).lower(),
            "limitToPartitionsWithLag": str(settings.limit_to_partitions_with_lag).lower(),
        },
    }
    spec: Doc = {
        "scaleTargetRef": {"name": "kappaflow-worker"},
        "pollingInterval": round(settings.polling_interval_s),
        "cooldownPeriod": round(settings.cooldown_period_s),
        "minReplicaCount": settings.min_replicas,
        "maxReplicaCount": settings.max_replicas,
        "triggers": [trigger],
    }
    if settings.behavior:
        spec["advanced"] = {"horizontalPodAutoscalerConfig": {"behavior": _behavior(settings)}}
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": "kappaflow-worker"}, "spec": spec}  # fmt: skip


def _behavior(settings: Settings) -> Doc:
    from kappaflow.scale.policy import parse_rules

    def direction(window: float, rules: str, select: str) -> Doc:
        return {
            "stabilizationWindowSeconds": round(window),
            "selectPolicy": select.capitalize(),
            "policies": [{"type": "Pods" if r.kind == "pods" else "Percent", "value": r.value,
                          "periodSeconds": r.period_s} for r in parse_rules(rules)],
        }  # fmt: skip

    return {
        "scaleUp": direction(settings.scale_up_stabilization_s, settings.scale_up_policies,
                             settings.scale_up_select),
        "scaleDown": direction(settings.scale_down_stabilization_s,
                               settings.scale_down_policies, settings.scale_down_select),
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
    """File name -> objects of the kustomize base."""
    environment = role_environment(settings, KAPPAFLOW_LOG="kafka", KAPPAFLOW_STORE="postgres")
    config = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "kappaflow-settings"}, "data": environment}  # fmt: skip
    files = {
        "settings.yaml": [config],
        "ingest.yaml": [_deployment("ingest", 2), _service("ingest"), _budget("ingest"),
                        _ingest_autoscaler()],
        "query.yaml": [_deployment("query", 2), _service("query"), _budget("query")],
        "worker.yaml": [_deployment("worker", max(settings.min_replicas, 1)),
                        _budget("worker"), scaled_object(settings)],
    }  # fmt: skip
    files["kustomization.yaml"] = [{
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "labels": [{"pairs": {"app.kubernetes.io/part-of": "kappaflow"}}],
        "resources": sorted(name for name in files if name != "kustomization.yaml"),
    }]  # fmt: skip
    return files


def write(files: dict[str, list[Doc]], directory: Path) -> list[Path]:
    """Write each file's objects as YAML documents."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, objects in files.items():
        path = directory / name
        path.write_text(dump(objects))
        written.append(path)
    return written


def dump(objects: list[Doc]) -> str:
    header = "# Rendered by `kappaflow deploy render` from the settings; edit those instead.\n"
    return header + yaml.safe_dump_all(objects, sort_keys=False, width=100)


def _in_cluster(
    name: str, image: str, port: int, env: dict[str, str], args: list[str]
) -> list[Doc]:
    """A single-replica Deployment and Service, for the dev overlay's Kafka and Postgres."""
    labels = {"app.kubernetes.io/name": name}
    container: Doc = {"name": name, "image": image, "ports": [{"containerPort": port}],
                      "env": [{"name": k, "value": v} for k, v in env.items()]}  # fmt: skip
    if args:
        container["args"] = args
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"containers": [container]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
         "spec": {"selector": labels, "ports": [{"port": port, "targetPort": port}]}},
    ]  # fmt: skip


def _settings_patch(bootstrap: str, dsn: str) -> Doc:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kappaflow-settings"},
            "data": {"KAPPAFLOW_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                     "KAPPAFLOW_POSTGRES_DSN": dsn}}  # fmt: skip


def _kustomization(resources: list[str], patches: list[str]) -> Doc:
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": resources, "patches": [{"path": p} for p in patches]}  # fmt: skip


def k8s_overlays(settings: Settings) -> dict[str, dict[str, list[Doc]]]:
    """Overlay name -> file name -> objects. ``dev``: one Kafka and one PostgreSQL in
    the cluster. ``production``: Strimzi's Kafka (KRaft, one node pool) and KafkaTopic
    resources, and the values for YugabyteDB's Helm chart."""
    kafka_env = {
        "KAFKA_NODE_ID": "1", "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://kafka:9092",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        **ONE_BROKER_INTERNAL_TOPICS, "KAFKA_NUM_PARTITIONS": str(settings.partitions),
    }  # fmt: skip
    postgres_env = {"POSTGRES_USER": "kappaflow", "POSTGRES_PASSWORD": "kappaflow",
                    "POSTGRES_DB": "kappaflow"}  # fmt: skip
    dev = {
        "kafka.yaml": _in_cluster("kafka", "apache/kafka:3.9.0", 9092, kafka_env, []),
        "postgres.yaml": _in_cluster("postgres", "postgres:16", 5432, postgres_env, []),
        "settings-patch.yaml": [_settings_patch(
            "kafka:9092", "postgresql://kappaflow:kappaflow@postgres:5432/kappaflow")],
        "kustomization.yaml": [_kustomization(
            ["../../base", "kafka.yaml", "postgres.yaml"], ["settings-patch.yaml"])],
    }  # fmt: skip
    cluster = {"strimzi.io/cluster": "kappaflow"}
    strimzi = [
        {"apiVersion": "kafka.strimzi.io/v1beta2", "kind": "KafkaNodePool",
         "metadata": {"name": "brokers", "labels": cluster},
         "spec": {"replicas": 3, "roles": ["controller", "broker"],
                  "storage": {"type": "persistent-claim", "size": "100Gi"}}},
        {"apiVersion": "kafka.strimzi.io/v1beta2", "kind": "Kafka",
         "metadata": {"name": "kappaflow", "annotations": {
             "strimzi.io/kraft": "enabled", "strimzi.io/node-pools": "enabled"}},
         "spec": {"kafka": {"listeners": [
                      {"name": "plain", "port": 9092, "type": "internal", "tls": False}],
                            "config": {"default.replication.factor": 3,
                                       "min.insync.replicas": 2,
                                       "transaction.state.log.replication.factor": 3,
                                       "transaction.state.log.min.isr": 2}},
                  "entityOperator": {"topicOperator": {}}}},
        *({"apiVersion": "kafka.strimzi.io/v1beta2", "kind": "KafkaTopic",
           "metadata": {"name": stream, "labels": cluster},
           "spec": {"partitions": settings.partitions, "replicas": 3}}
          for stream in ("heartbeats", "clicks")),
    ]  # fmt: skip
    production = {
        "kafka.yaml": strimzi,
        "settings-patch.yaml": [_settings_patch(
            "kappaflow-kafka-bootstrap:9092",
            "postgresql://yugabyte@yb-tservers:5433/yugabyte")],
        "kustomization.yaml": [_kustomization(["../../base", "kafka.yaml"],
                                              ["settings-patch.yaml"])],
        "yugabytedb-values.yaml": [{"replicas": {"master": 3, "tserver": 3},
                                    "storage": {"tserver": {"size": "100Gi"}}}],
    }  # fmt: skip
    return {"dev": dev, "production": production}
