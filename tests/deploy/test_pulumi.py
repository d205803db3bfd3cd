"""The Pulumi program under Pulumi's mocks (no cluster, no Pulumi service): what it
declares and in which order."""

from __future__ import annotations

import sys
from pathlib import Path

import pulumi
import pytest

from kappaflow.deploy.render import POSTGRES_SECRET

PROGRAM = Path(__file__).resolve().parents[2] / "deploy" / "pulumi"
declared: list[tuple[str, str, dict]] = []


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        declared.append((args.typ, args.name, dict(args.inputs)))
        return f"{args.name}-id", args.inputs

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}


pulumi.runtime.set_mocks(Mocks(), preview=False)
sys.path.insert(0, str(PROGRAM))
import program  # noqa: E402  (after the mocks, as Pulumi requires)


@pulumi.runtime.test
def test_operators_then_the_overlay_into_the_namespace():
    resources = program.declare("streams", "production")

    def check(_):
        kinds = {(typ, name) for typ, name, _ in declared}
        assert ("kubernetes:core/v1:Namespace", "namespace") in kinds
        charts = {inputs.get("chart"): inputs for typ, _, inputs in declared
                  if typ == "kubernetes:helm.sh/v3:Release"}  # fmt: skip
        assert set(charts) == {"strimzi-kafka-operator", "keda", "yugabyte"}
        assert all(inputs["namespace"] == "streams" for inputs in charts.values())
        assert charts["yugabyte"]["values"]["replicas"]["tserver"] == 3
        overlay = next(inputs for typ, _, inputs in declared if typ.endswith("Directory"))
        assert overlay["directory"].endswith("k8s/overlays/production")
        assert overlay["namespace"] == "streams"

    return pulumi.Output.all(*[r.urn for r in resources]).apply(check)


@pulumi.runtime.test
def test_a_database_password_becomes_the_secret_the_roles_read():
    resources = program.declare("streams", "production", "s3cret")

    def check(_):
        (secret,) = [inputs for typ, _, inputs in declared if typ == "kubernetes:core/v1:Secret"]
        assert secret["metadata"] == {"name": POSTGRES_SECRET, "namespace": "streams"}
        assert secret["stringData"]["value"] == {"password": "s3cret"}  # wrapped: a secret

    return pulumi.Output.all(*[r.urn for r in resources]).apply(check)


def test_an_unknown_overlay_is_refused() -> None:
    with pytest.raises(ValueError, match="no kustomize overlay 'staging'"):
        program.declare("x", "staging")
