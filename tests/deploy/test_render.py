"""The deploy files, validated offline: Kubernetes objects against Kubernetes' schemas,
the compose file against the Compose Specification's schema, and every port, command,
probe path and variable name against the code. The committed files must be what
`kappaflow deploy render` writes from the default settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import msgspec
import pytest
import yaml
from click.testing import CliRunner
from test_overlays import crd_errors

from kappaflow.app import App, Stream
from kappaflow.cli import main
from kappaflow.deploy import render
from kappaflow.deploy.render import PORT, UID, compose, dump, k8s_base, k8s_overlays, scaled_object
from kappaflow.errors import AppError, SettingsError
from kappaflow.settings import Rule, Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DEFAULTS = Settings.load({})


def k8s_objects(settings: Settings = DEFAULTS) -> list[dict]:
    return [obj for objects in k8s_base(settings).values() for obj in objects]


def test_the_committed_files_are_a_render_of_the_default_settings() -> None:
    assert (DEPLOY / "compose.yaml").read_text() == dump([compose(DEFAULTS)])
    for name, objects in k8s_base(DEFAULTS).items():
        assert (DEPLOY / "k8s" / "base" / name).read_text() == dump(objects), name


@pytest.mark.parametrize(
    "obj",
    [o for o in k8s_objects() if o["kind"] not in ("ScaledObject", "Kustomization")],
    ids=lambda o: f"{o['kind']}-{o['metadata']['name']}",
)
def test_kubernetes_objects_validate_against_the_kubernetes_schema(obj: dict) -> None:
    kubernetes_validate.validate(obj, "1.37", strict=True)


def test_the_compose_file_validates_against_the_compose_specification() -> None:
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    document = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    jsonschema.Draft201909Validator(schema).validate(document)
    broken = {**document, "services": {"x": {"image": 3}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft201909Validator(schema).validate(broken)


def test_the_scaled_object_carries_the_autoscaler_settings() -> None:
    settings = DEFAULTS.replace(lag_threshold=12_345, max_replicas=16, behavior=True,
                                scale_up_policies=(Rule("pods", 2, 30),),
                                partitions=32)  # fmt: skip
    spec = scaled_object(settings)["spec"]
    triggers = [trigger["metadata"] for trigger in spec["triggers"]]
    groups = {trigger["consumerGroup"] for trigger in triggers}
    assert groups == {"video.heartbeats", "clicks.clicks"}
    assert all(trigger["lagThreshold"] == "12345" for trigger in triggers)
    assert spec["maxReplicaCount"] == 16
    assert spec["advanced"]["scalingModifiers"]["target"] == "12345"
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["policies"] == [{"type": "Pods", "value": 2, "periodSeconds": 30}]
    down = settings.scaling.scale_down_stabilization_s
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == down
    unruled = scaled_object(settings.replace(behavior=False))["spec"]["advanced"]
    assert "horizontalPodAutoscalerConfig" not in unruled


class View(msgspec.Struct):
    page: str
    ts: int


def test_streams_whose_triggers_keda_could_not_tell_apart_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = App("web", [Stream(name, View, key="page", time="ts")
                      for name in ("page-views", "page_views")], [])  # fmt: skip
    monkeypatch.setattr(render, "app_streams", lambda _: [(app, s) for s in app.streams])
    with pytest.raises(AppError, match=r"web\.page-views.*web\.page_views.*rename"):
        scaled_object(DEFAULTS)


def test_a_stream_named_unlike_a_kubernetes_object_gets_its_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = App("web", [Stream("Page_Views", View, key="page", time="ts")], [])
    monkeypatch.setattr(render, "app_streams", lambda _: [(app, s) for s in app.streams])
    (topic,) = (o for o in k8s_overlays(DEFAULTS)["production"]["kafka.yaml"]
                if o["kind"] == "KafkaTopic")  # fmt: skip
    assert (topic["metadata"]["name"], topic["spec"]["topicName"]) == ("page-views", "Page_Views")


def test_render_names_an_app_it_cannot_import(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["deploy", "render", "--target", "k8s", "--output", str(tmp_path)],
        env={"KAPPAFLOW_APPS": "video,mycompany.nosuch"},
    )  # fmt: skip
    assert result.exit_code == 1
    assert "KAPPAFLOW_APPS: cannot import app 'mycompany.nosuch'" in result.output
    assert not any(tmp_path.iterdir())


def test_commands_ports_and_variables_exist_in_the_code() -> None:
    commands = set(main.commands)
    fields = {f"KAPPAFLOW_{name.upper()}" for name in Settings.names()}
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    for name, service in services.items():
        if service["image"] == DEFAULTS.image:
            assert service["command"][0] in commands, name
            assert set(service["environment"]) <= fields, name
            assert all(p.endswith(f":{PORT}") for p in service.get("ports", []))
    for obj in k8s_objects():
        if obj["kind"] == "ConfigMap":
            assert set(obj["data"]) <= fields
        if obj["kind"] == "Deployment":
            (container,) = obj["spec"]["template"]["spec"]["containers"]
            assert container["args"][0] in commands
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["kappaflow"]' in dockerfile
    assert re.search(r'CMD \["(\w+)"\]', dockerfile).group(1) in commands
    assert f"EXPOSE {PORT}" in dockerfile and "/healthz" in dockerfile
    assert re.search(r"^ARG UID=(\d+)$", dockerfile, re.M).group(1) == str(UID)
    assert "USER ${UID}:${UID}" in dockerfile


def test_overlays_are_rendered_valid_and_complete() -> None:
    overlays = k8s_overlays(DEFAULTS)
    for name, files in overlays.items():
        directory = DEPLOY / "k8s" / "overlays" / name
        for file, objects in files.items():
            assert (directory / file).read_text() == dump(objects), f"{name}/{file}"
        (kustomization,) = files["kustomization.yaml"]
        for resource in kustomization["resources"]:
            assert (directory / resource).exists(), f"{name}: {resource}"
        (settings_patch,) = files["settings-patch.yaml"]
        assert set(settings_patch["data"]) <= {f"KAPPAFLOW_{f.upper()}"
                                              for f in Settings.names()}  # fmt: skip
        for patch in kustomization["patches"]:
            assert patch["path"] in files, f"{name}: {patch['path']}"
    strimzi = overlays["production"]["kafka.yaml"]
    (cluster,) = (o["metadata"]["name"] for o in strimzi if o["kind"] == "Kafka")
    topics = {o["spec"]["topicName"]: o["spec"]["partitions"]
              for o in strimzi if o["kind"] == "KafkaTopic"}  # fmt: skip
    assert topics == {"heartbeats": DEFAULTS.partitions, "clicks": DEFAULTS.partitions}
    members = [o for o in strimzi if o["kind"] in ("KafkaNodePool", "KafkaTopic")]
    assert all(o["metadata"]["labels"]["strimzi.io/cluster"] == cluster for o in members)
    (patch,) = overlays["production"]["settings-patch.yaml"]
    assert patch["data"]["KAPPAFLOW_KAFKA_BOOTSTRAP_SERVERS"].startswith(
        f"{cluster}-kafka-bootstrap:"
    )


def test_the_scaled_object_carries_kedas_lifecycle_and_trigger_settings() -> None:
    settings = DEFAULTS.replace(min_replicas=2, idle_replica_count=0, initial_cooldown_period_s=60,
                                fallback_replicas=5, fallback_failure_threshold=4,
                                fallback_behavior="currentReplicasIfHigher", partitions=8,
                                partition_limitation="0-3,6", topics=("heartbeats",),
                                ensure_even_distribution_of_partitions=True)  # fmt: skip
    found = scaled_object(settings)
    spec = found["spec"]
    assert (spec["idleReplicaCount"], spec["minReplicaCount"], spec["initialCooldownPeriod"]) == (
        0, 2, 60)  # fmt: skip
    assert spec["fallback"] == {"failureThreshold": 4, "replicas": 5,
                                "behavior": "currentReplicasIfHigher"}  # fmt: skip
    (trigger,) = (trigger["metadata"] for trigger in spec["triggers"])
    assert trigger["topic"] == "heartbeats" and trigger["partitionLimitation"] == "0-3,6"
    assert trigger["ensureEvenDistributionOfPartitions"] == "true"
    assert crd_errors([found]) == [[]]
    paused = scaled_object(settings.replace(paused_replicas=0))["metadata"]["annotations"]
    assert paused == {"autoscaling.keda.sh/paused-replicas": "0"}
    plain = scaled_object(DEFAULTS)["spec"]
    assert "fallback" not in plain and "idleReplicaCount" not in plain
    assert all("partitionLimitation" not in t["metadata"] for t in plain["triggers"])
    with pytest.raises(SettingsError, match="KAPPAFLOW_IDLE_REPLICA_COUNT"):
        scaled_object(DEFAULTS.replace(idle_replica_count=1))
