"""kappaflow's HTTP services in a thread of the test's own process: the server of
`kappaflow ingest` and `kappaflow query` (the same app, uvicorn and limits), on a free
port of 127.0.0.1, for tests that call them over HTTP without starting a process."""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager

import httpx

from kappaflow.server.serve import ROLES, server
from kappaflow.server.tls import client_context
from kappaflow.settings import Settings
from kappaflow.testing import wait_until
from kappaflow.up import free_port


@contextmanager
def serving(settings: Settings, roles: Collection[str] = ROLES) -> Iterator[httpx.Client]:
    """Serve ``roles`` (ingest, query or both) on the settings' log and store for the
    block, and yield an HTTP client of them (over HTTPS if the settings give a
    certificate, which it checks against ``tls_ca_file``). The server stops after the block as on
    SIGTERM: requests in flight are answered, then the log and store close. An error
    of the app is logged and answered 500, as in production."""
    settings = settings.replace(host="127.0.0.1", port=free_port())
    running = server(settings, roles)
    thread = threading.Thread(target=running.run, name=f"kappaflow services :{settings.port}")
    thread.start()
    try:
        wait_until(lambda: running.started or not thread.is_alive(), 30, "the services started")
        assert running.started, "the services did not start: uvicorn's log says why"
        verify = client_context(settings)
        with httpx.Client(base_url=settings.url, timeout=30, verify=verify) as client:
            yield client
    finally:
        running.should_exit = True
        thread.join()
