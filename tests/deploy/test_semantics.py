"""What a cluster would refuse, or run wrongly, that no schema catches: checked over the
manifests `kappaflow deploy render` writes and `kubectl kustomize` builds (the base and
each overlay), for the built-in apps and for a user's app (examples/sensors.py, as
docs/apps.md renders it). The settings are those the pods get from the ConfigMap, and
each role is asked what it serves by running its real code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from kappaflow.app import App, load_apps
from kappaflow.keys import new_secret
from kappaflow.scale.supervisor import workers_for
from kappaflow.settings import PREFIX, Settings
from kappaflow.stream.endpoints import WorkerEndpoints
from kappaflow.testing.services import serving

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
DIRECTORIES = ("base", "overlays/dev", "overlays/production")
OVERLAYS = DIRECTORIES[1:]
ROLES = ("ingest", "query", "worker")
RENDERS = {
    "built-in": {},
    # A user's app beside a built-in one, and autoscaling numbers other than the defaults.
    "sensors": {"KAPPAFLOW_APPS": "video,sensors", "KAPPAFLOW_PARTITIONS": "4",
                "KAPPAFLOW_LAG_THRESHOLD": "5000", "KAPPAFLOW_ACTIVATION_LAG_THRESHOLD": "10",
                "KAPPAFLOW_MIN_REPLICAS": "0", "KAPPAFLOW_MAX_REPLICAS": "6",
                "KAPPAFLOW_BEHAVIOR": "true", "KAPPAFLOW_SCALE_UP_POLICIES": "pods:2:30"},
}  # fmt: skip


@dataclass
class Built:
    """One kustomization as `kubectl kustomize` builds it, and the settings and apps its
    pods run with."""

    objects: list[dict]
    settings: Settings
    apps: list[App]

    def of(self, kind: str) -> list[dict]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def named(self, kind: str, name: str) -> dict | None:
        return next((obj for obj in self.of(kind) if obj["metadata"]["name"] == name), None)

    def containers(self) -> Iterator[tuple[dict, dict]]:
        """(pod template, container) of every Deployment."""
        for deployment in self.of("Deployment"):
            template = deployment["spec"]["template"]
            for container in template["spec"]["containers"]:
                yield template, container

    def roles(self) -> Iterator[tuple[str, dict, dict]]:
        """(role, pod template, container) of every kappaflow container."""
        for template, container in self.containers():
            if container.get("args", [""])[0] in ROLES:
                yield container["args"][0], template, container

    def triggers(self) -> list[dict]:
        (scaled,) = self.of("ScaledObject")
        return scaled["spec"]["triggers"]


@pytest.fixture(scope="module", params=list(RENDERS))
def rendered(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    kustomize: Callable[[Path], list[dict]],
) -> Iterator[dict[str, Built]]:
    """Directory -> `Built`, for the settings of one of `RENDERS`; the example app is
    importable meanwhile, as the docs have it (PYTHONPATH=examples)."""
    output = tmp_path_factory.mktemp(request.param)
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env.update(RENDERS[request.param])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(EXAMPLES)]))
    subprocess.run([sys.executable, "-m", "kappaflow", "deploy", "render", "--target", "k8s",
                    "--output", str(output)], env=env, check=True, capture_output=True,
                   timeout=60)  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLES))
        builds = {}
        for directory in DIRECTORIES:
            objects = kustomize(output / "k8s" / directory)
            (config,) = (o for o in objects if o["kind"] == "ConfigMap")
            settings = Settings.load(config["data"])
            builds[directory] = Built(objects, settings, load_apps(settings))
        yield builds


@pytest.fixture(scope="module")
def worker_endpoints() -> WorkerEndpoints:
    return WorkerEndpoints("127.0.0.1", 0)


def listening_port(role: str, settings: Settings) -> int:
    """Where the role serves HTTP, as its code reads the settings."""
    return settings.worker_port if role == "worker" else settings.port


def container_port(container: dict, port: int | str) -> int | None:
    """A probe's or Service's port (a number, or a port's name) as a number of the
    container's declared ports; None if it names none."""
    for declared in container.get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            return declared["containerPort"]
    return None


def answers(role: str, path: str, settings: Settings, worker: WorkerEndpoints) -> int:
    """The status the role's real code answers GET ``path`` with."""
    if role == "worker":
        return httpx.get(f"http://127.0.0.1:{worker.port}{path}", timeout=5).status_code
    with serving(settings, (role,)) as client:
        return client.get(path).status_code


def dockerfile_uid() -> int:
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    return int(re.search(r"^ARG UID=(\d+)$", dockerfile, re.M).group(1))


@pytest.mark.parametrize("directory", DIRECTORIES)
def test_run_as_non_root_comes_with_the_images_numeric_user(rendered, directory: str) -> None:
    """The kubelet refuses to start a runAsNonRoot container whose user it cannot verify
    as a number (CreateContainerConfigError)."""
    built = rendered[directory]
    for template, container in built.containers():
        context = {**template["spec"].get("securityContext", {}),
                   **container.get("securityContext", {})}  # fmt: skip
        if context.get("runAsNonRoot"):
            assert type(context.get("runAsUser")) is int and context["runAsUser"] > 0, context
    uid = dockerfile_uid()
    for role, template, container in built.roles():
        pod = template["spec"].get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, role
        assert (pod.get("runAsUser"), pod.get("runAsGroup"), pod.get("fsGroup")) == (uid,) * 3
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("directory", DIRECTORIES)
def test_every_probe_service_and_scrape_target_is_served_by_its_role(
    rendered, directory: str, worker_endpoints: WorkerEndpoints, tmp_path: Path
) -> None:
    built = rendered[directory]
    # The roles' own code, on the embedded log and SQLite: what a role serves does not
    # depend on where its data lives.
    settings = built.settings.replace(log="embedded", store="sqlite", data_dir=str(tmp_path))
    served: dict[tuple[str, str], int] = {}

    def assert_served(role: str, path: str, port: int | str, container: dict) -> None:
        listening = listening_port(role, built.settings)
        assert listening != 0, f"{role} serves no HTTP with these settings"
        assert container_port(container, port) == listening, (role, port)
        if (role, path) not in served:
            served[role, path] = answers(role, path, settings, worker_endpoints)
        assert served[role, path] not in (404, 405), (role, path, served[role, path])

    for role, template, container in built.roles():
        assert "livenessProbe" in container, role
        startup = container["startupProbe"]  # a slow start is no failed liveness probe
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, role
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            if kind in container:
                probe = container[kind]["httpGet"]
                assert_served(role, probe["path"], probe["port"], container)
        annotations = template["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", role
        assert_served(role, annotations["prometheus.io/path"],
                      int(annotations["prometheus.io/port"]), container)  # fmt: skip
        assert any(p.get("name") for p in container["ports"]), f"{role}: no port for a PodMonitor"
    for service in built.of("Service"):
        selector = service["spec"]["selector"]
        for role, template, container in built.roles():
            if selector.items() <= template["metadata"]["labels"].items():
                assert "readinessProbe" in container, f"{role} gets requests before it is ready"
                for port in service["spec"]["ports"]:
                    assert_served(role, container["readinessProbe"]["httpGet"]["path"],
                                  port["targetPort"], container)  # fmt: skip


def resolves(built: Built, address: str) -> bool:
    """Whether ``host:port`` is a Service of this build with that port, or the bootstrap
    Service Strimzi makes for one of its Kafka clusters' listeners."""
    host, _, port = address.strip().rpartition(":")
    name = host.split(".")[0]  # kafka.<namespace>.svc... is the Service kafka too
    service = built.named("Service", name)
    if service is not None:
        return any(str(p["port"]) == port for p in service["spec"]["ports"])
    for kafka in built.of("Kafka"):
        if name == f"{kafka['metadata']['name']}-kafka-bootstrap":
            return any(str(lsn["port"]) == port for lsn in kafka["spec"]["kafka"]["listeners"])
    return False


@pytest.mark.parametrize("directory", DIRECTORIES)
def test_every_trigger_watches_the_kafka_its_workers_read(rendered, directory: str) -> None:
    built = rendered[directory]
    workers_read = built.settings.kafka_bootstrap_servers
    for trigger in built.triggers():
        assert trigger["metadata"]["bootstrapServers"] == workers_read, trigger["metadata"]["topic"]
    if directory in OVERLAYS:  # the base is no cluster: its overlays name one
        for address in workers_read.split(","):
            assert resolves(built, address), f"{directory}: no Service answers {address}"


@pytest.mark.parametrize("directory", DIRECTORIES)
def test_every_app_stream_has_a_trigger_and_a_topic(rendered, directory: str) -> None:
    built = rendered[directory]
    streams = {(stream.name, app.group(stream)) for app in built.apps for stream in app.streams}
    assert len(streams) == sum(len(app.streams) for app in built.apps) > 1
    triggers = built.triggers()
    assert {(t["metadata"]["topic"], t["metadata"]["consumerGroup"]) for t in triggers} == streams
    assert len(triggers) == len(streams)
    # One worker pod processes every stream, so KEDA adds up their lags, as `up` does.
    (scaled,) = built.of("ScaledObject")
    formula = scaled["spec"]["advanced"]["scalingModifiers"]["formula"]
    terms = sorted(term.strip() for term in formula.split("+"))
    assert terms == sorted(trigger["name"] for trigger in triggers)
    if directory == "overlays/production":
        (kafka,) = built.of("Kafka")
        topics = {t["spec"].get("topicName", t["metadata"]["name"]): t
                  for t in built.of("KafkaTopic")}  # fmt: skip
        for name, _ in streams:
            assert topics[name]["spec"]["partitions"] == built.settings.partitions
            assert topics[name]["metadata"]["labels"]["strimzi.io/cluster"] == \
                kafka["metadata"]["name"]  # fmt: skip


@pytest.mark.parametrize("directory", DIRECTORIES)
def test_the_scaled_objects_numbers_are_the_policy_up_runs(rendered, directory: str) -> None:
    built = rendered[directory]
    settings, policy = built.settings, built.settings.scaling
    (scaled,) = built.of("ScaledObject")
    spec = scaled["spec"]

    def at_most_partitions(replicas: int) -> int:
        return workers_for(replicas, settings.partitions, policy.allow_idle_consumers)

    assert spec["pollingInterval"] == round(settings.polling_interval_s)
    assert spec["cooldownPeriod"] == round(policy.cooldown_period_s)
    assert spec["minReplicaCount"] == at_most_partitions(policy.min_replicas)
    assert spec["maxReplicaCount"] == at_most_partitions(policy.max_replicas)
    modifiers = spec["advanced"]["scalingModifiers"]
    assert (modifiers["target"], modifiers["activationTarget"], modifiers["metricType"]) == (
        str(policy.lag_threshold),
        str(policy.activation_lag_threshold),
        "AverageValue",
    )
    flags = {"allowIdleConsumers": policy.allow_idle_consumers,
             "excludePersistentLag": policy.exclude_persistent_lag,
             "scaleToZeroOnInvalidOffset": policy.scale_to_zero_on_invalid_offset,
             "limitToPartitionsWithLag": policy.limit_to_partitions_with_lag}  # fmt: skip
    for trigger in built.triggers():
        metadata = trigger["metadata"]
        assert metadata["lagThreshold"] == str(policy.lag_threshold)
        assert metadata["activationLagThreshold"] == str(policy.activation_lag_threshold)
        assert metadata["offsetResetPolicy"] == policy.offset_reset_policy
        assert {key: metadata[key] for key in flags} == {
            key: str(value).lower() for key, value in flags.items()
        }
    hpa = spec["advanced"].get("horizontalPodAutoscalerConfig")
    assert (hpa is not None) == policy.behavior
    for direction in ("up", "down") if hpa else ():
        rules = hpa["behavior"][f"scale{direction.capitalize()}"]
        rendered_rules = [(p["type"].lower(), p["value"], p["periodSeconds"])
                          for p in rules["policies"]]  # fmt: skip
        assert (rules["stabilizationWindowSeconds"], rules["selectPolicy"].lower(),
                rendered_rules) == (
            round(getattr(policy, f"scale_{direction}_stabilization_s")),
            getattr(policy, f"scale_{direction}_select"),
            [(r.kind, r.value, r.period_s) for r in getattr(policy, f"scale_{direction}_policies")],
        ), direction  # fmt: skip
    target = built.named("Deployment", spec["scaleTargetRef"]["name"])
    assert target is not None, spec["scaleTargetRef"]
    assert target["spec"]["template"]["spec"]["containers"][0]["args"] == ["worker"]


@pytest.mark.parametrize("directory", DIRECTORIES)
def test_the_database_password_comes_from_a_secret(rendered, directory: str) -> None:
    built = rendered[directory]
    dsn = conninfo_to_dict(built.settings.postgres_dsn)
    assert "password" not in dsn, "the DSN in the ConfigMap holds the password"
    references = set()
    for role, _, container in built.roles():
        env = {e["name"]: e for e in container.get("env", [])}
        assert "PGPASSWORD" in env, f"{role}: no password for the DSN"
        reference = env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]
        references.add((reference["name"], reference["key"]))
    ((secret_name, key),) = references
    database = built.named("Service", dsn["host"])
    if database is not None:  # the overlay runs the database: it holds the password too
        secret = built.named("Secret", secret_name)
        assert secret is not None and key in {**secret.get("data", {}),
                                              **secret.get("stringData", {})}  # fmt: skip
        for template, container in built.containers():
            if database["spec"]["selector"].items() <= template["metadata"]["labels"].items():
                password = {e["name"]: e for e in container["env"]}["POSTGRES_PASSWORD"]
                assert "valueFrom" in password, "the database's password is not the Secret's"
                reference = password["valueFrom"]["secretKeyRef"]
                assert (reference["name"], reference["key"]) == (secret_name, key)


def test_every_compose_health_check_is_served_by_its_role(
    worker_endpoints: WorkerEndpoints, tmp_path: Path
) -> None:
    """Compose starts a service once those it depends on are healthy, and restarts none
    of them: a check on what the role does not serve keeps it unhealthy for good."""
    services = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())["services"]
    roles = {name: s for name, s in services.items() if s.get("command", [""])[0] in ROLES}
    assert sorted(service["command"][0] for service in roles.values()) == sorted(ROLES)
    for name, service in roles.items():
        role = service["command"][0]
        assert "healthcheck" in service, name
        path, variable = re.search(r"http://127\.0\.0\.1:%s(/\S*?)' % os\.environ\['(\w+)'\]",
                                   " ".join(service["healthcheck"]["test"])).groups()  # fmt: skip
        environment = {**service["environment"], "KAPPAFLOW_ADMIN_KEY": new_secret()}  # as compose
        settings = Settings.load(environment)  # fills ${KAPPAFLOW_ADMIN_KEY:?...} in from yours
        port = int(environment[variable])
        assert port == listening_port(role, settings) != 0, name
        settings = settings.replace(log="embedded", store="sqlite", data_dir=str(tmp_path))
        assert answers(role, path, settings, worker_endpoints) not in (404, 405), (name, path)
