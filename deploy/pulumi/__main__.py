"""The Pulumi program: `pulumi up` in this directory (see README.md)."""

import pulumi
from program import declare

config = pulumi.Config()
declare(
    config.get("namespace") or "kappaflow",
    config.get("overlay") or "production",
    config.get_secret("postgresPassword"),
)
