"""Each kustomization built by the real `kubectl kustomize`, and every object it yields
validated: built-in kinds against Kubernetes' schemas, KEDA's and Strimzi's custom
resources against their CRDs' schemas (deploy/schemas, run by Node.js)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import kubernetes_validate
import pytest

from kappaflow.deploy.render import k8s_overlays
from kappaflow.settings import Settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
SCHEMAS = REPO / "deploy" / "schemas"
CUSTOM_GROUPS = ("keda.sh", "kafka.strimzi.io")
Kustomize = Callable[[Path], list[dict]]
"""The `kustomize` fixture (conftest.py)."""
DEFAULTS = Settings.load({})


def crd_errors(objects: list[dict]) -> list[list[str]]:
    """Per object, what its CRD's schema finds wrong with it."""
    if not (SCHEMAS / "node_modules").is_dir():
        pytest.fail("CRD schemas not installed: `make test` runs npm ci in deploy/schemas")
    checked = subprocess.run(["node", "validate-crds.mjs"], cwd=SCHEMAS, input=json.dumps(objects),
                             capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return json.loads(checked.stdout)


def is_custom(obj: dict) -> bool:
    return obj["apiVersion"].split("/")[0] in CUSTOM_GROUPS


@pytest.mark.parametrize("directory", ["base", "overlays/dev", "overlays/production"])
def test_each_kustomization_builds_into_valid_objects(kustomize: Kustomize, directory: str) -> None:
    objects = kustomize(K8S / directory)
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for role in ("ingest", "query", "worker"):
        assert ("Deployment", f"kappaflow-{role}") in names
    assert ("ScaledObject", "kappaflow-worker") in names
    for obj in objects:
        if not is_custom(obj):
            kubernetes_validate.validate(obj, "1.37", strict=True)
    custom = [o for o in objects if is_custom(o)]
    assert crd_errors(custom) == [[] for _ in custom]
    if directory != "base":
        overlay = k8s_overlays(DEFAULTS)[directory.split("/")[1]]
        (settings,) = (o for o in objects if o["kind"] == "ConfigMap")
        (patch,) = overlay["settings-patch.yaml"]
        assert patch["data"].items() <= settings["data"].items()


def test_the_production_overlay_declares_a_kraft_cluster_and_the_topics(
    kustomize: Kustomize,
) -> None:
    objects = kustomize(K8S / "overlays" / "production")
    kinds = sorted(o["kind"] for o in objects if is_custom(o))
    assert kinds == ["Kafka", "KafkaNodePool", "KafkaTopic", "KafkaTopic", "ScaledObject"]
    (pool,) = (o for o in objects if o["kind"] == "KafkaNodePool")
    assert sorted(pool["spec"]["roles"]) == ["broker", "controller"]


def test_the_crd_schemas_reject_what_the_operators_would(kustomize: Kustomize) -> None:
    production = kustomize(K8S / "overlays" / "production")
    scaled, topic = (next(o for o in production if o["kind"] == kind)
                     for kind in ("ScaledObject", "KafkaTopic"))  # fmt: skip
    broken = [
        {**scaled, "spec": {**scaled["spec"], "pollingInterval": "5"}},
        {**scaled, "spec": {k: v for k, v in scaled["spec"].items() if k != "scaleTargetRef"}},
        {**topic, "spec": {**topic["spec"], "partitions": "eight"}},
        {**topic, "kind": "KafkaTopics"},
    ]
    assert all(crd_errors(broken)), crd_errors(broken)
