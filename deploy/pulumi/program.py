"""What the Pulumi program declares: a namespace, the Strimzi, KEDA and YugabyteDB Helm
releases, the Secret of the database password when one is given, and the kappaflow
kustomize overlay applied after them."""

from __future__ import annotations

from pathlib import Path

import pulumi
import yaml
from pulumi_kubernetes.core.v1 import Namespace, Secret
from pulumi_kubernetes.helm.v3 import Release, ReleaseArgs, RepositoryOptsArgs
from pulumi_kubernetes.kustomize.v2 import Directory, DirectoryArgs

K8S = Path(__file__).resolve().parents[1] / "k8s"
OPERATORS = {
    # release name: (chart, repository, version)
    "strimzi": ("strimzi-kafka-operator", "https://strimzi.io/charts/", "0.49.0"),
    "keda": ("keda", "https://kedacore.github.io/charts", "2.16.1"),
    "yugabytedb": ("yugabyte", "https://charts.yugabyte.com", "2.25.1"),
}


def declare(
    namespace: str = "kappaflow",
    overlay: str = "production",
    postgres_password: pulumi.Input[str] | None = None,
) -> list[pulumi.Resource]:
    """Declare the resources; returns them (the last is the kappaflow overlay). With
    ``postgres_password``, the Secret ``kappaflow-postgres`` the roles read it from (the
    production overlay's database user's; the dev overlay ships its own)."""
    directory = K8S / "overlays" / overlay
    if not (directory / "kustomization.yaml").exists():
        raise ValueError(f"no kustomize overlay {overlay!r} under {K8S / 'overlays'}")
    space = Namespace("namespace", metadata={"name": namespace})
    values_file = directory / "yugabytedb-values.yaml"
    needed: list[pulumi.Resource] = []  # in the cluster before the overlay's objects
    for name, (chart, repository, version) in OPERATORS.items():
        values = yaml.safe_load(values_file.read_text()) if name == "yugabytedb" and \
            values_file.exists() else {}  # fmt: skip
        needed.append(Release(name, ReleaseArgs(
            chart=chart, version=version, namespace=namespace, values=values,
            repository_opts=RepositoryOptsArgs(repo=repository),
        ), opts=pulumi.ResourceOptions(depends_on=[space])))  # fmt: skip
    if postgres_password is not None:
        needed.append(Secret("postgres-password", metadata={
            "name": "kappaflow-postgres", "namespace": namespace,
        }, string_data={"password": postgres_password},
            opts=pulumi.ResourceOptions(depends_on=[space])))  # fmt: skip
    stack = Directory("kappaflow", DirectoryArgs(directory=str(directory), namespace=namespace),
                      opts=pulumi.ResourceOptions(depends_on=needed))  # fmt: skip
    return [space, *needed, stack]
