"""The Host check in front of the HTTP routes (setting ``allowed_hosts``): a request
for a host name the services do not answer to is refused with 400, so that no web page
reaches them under a name of its own (DNS rebinding). The probes answer any name: the
kubelet asks a pod by its address."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from kappaflow.server.http import error

PROBES = frozenset({"/healthz", "/readyz"})
"""The probes' routes, which answer any host name and need no API key."""


def host_name(header: str) -> str:
    """The host name of a ``Host`` header, without its port (``[::1]:8000``: ``::1``)."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether host ``name`` is one of ``patterns`` (``*.example.com``: a subdomain)."""
    name = name.lower().rstrip(".")
    for pattern in (pattern.lower() for pattern in patterns):
        if name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


class AllowedHosts:
    """ASGI middleware: only requests for one of ``hosts`` reach ``app``."""

    def __init__(self, app: ASGIApp, hosts: Sequence[str]) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PROBES:
            given = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not matches(host_name(given), self.hosts):
                message = (f"host {given!r} is not one these services answer to: "
                           f"{', '.join(self.hosts)} (KAPPAFLOW_ALLOWED_HOSTS)")  # fmt: skip
                await error(400, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)
