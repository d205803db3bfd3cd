"""kappaflow's commands (``up``, ``ingest``, ``worker``, ...) as real processes for
tests: on a free port of 127.0.0.1, until they answer; their output in a file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from kappaflow.keys import bearer
from kappaflow.server.tls import client_context
from kappaflow.settings import PREFIX, Settings
from kappaflow.testing import wait_until
from kappaflow.up import free_port


class Running:
    """A kappaflow process: its URL, HTTP clients of it, and its output so far. Its
    clients send the settings' admin key if they give one, and trust their
    ``tls_ca_file``."""

    def __init__(self, process: subprocess.Popen[bytes], settings: Settings, output: Path) -> None:
        self.process, self.url, self.output = process, settings.url, output
        self.headers = bearer(settings.admin_key)
        self.verify = client_context(settings)
        self._clients: list[httpx.Client] = []

    def client(self) -> httpx.Client:
        """An HTTP client of this process, closed when it stops."""
        client = httpx.Client(base_url=self.url, timeout=10, headers=self.headers,
                              verify=self.verify)  # fmt: skip
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()

    def wait_for_no_lag(self, group: str = "", timeout_s: float = 60) -> None:
        """Until /metrics shows no lag for the groups whose names start with ``group``
        (``<app>.<stream>``): every event logged so far is in the results."""
        client = self.client()
        prefix = f'kappaflow_lag{{group="{group}'
        behind: list[str] = []

        def drained() -> bool:
            lines = [line for line in client.get("/metrics").text.splitlines()
                     if line.startswith(prefix)]  # fmt: skip
            behind[:] = [line for line in lines if float(line.split()[-1]) != 0]
            if not lines:
                behind[:] = [
                    "no such kappaflow_lag line (the server knows no such group, or "
                    "could not read the log or store)"
                ]
            return not behind

        try:
            wait_until(drained, timeout_s, f"no lag for groups {group}*", 0.1)
        except AssertionError as error:
            raise AssertionError(f"{error}; last seen: {behind}") from None

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, as a service manager stops it; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)


def environment(env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a kappaflow process whose settings are those of ``env``
    alone: this process's, without its ``KAPPAFLOW_*`` variables, then ``env``."""
    inherited = {name: value for name, value in os.environ.items() if not name.startswith(PREFIX)}
    return {**inherited, **env}


@contextmanager
def run_kappaflow(
    directory: Path,
    *arguments: str,
    env: Mapping[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    probe: str = "/readyz",
) -> Iterator[Running]:
    """Run ``kappaflow ARGUMENTS --port P`` until it answers ``probe`` with 200, its
    output going to a file in ``directory``; stop it after the block. It imports what
    this process can (its ``sys.path``), and its settings are those of ``env`` alone:
    ``KAPPAFLOW_*`` variables of this process's environment are not passed on. Its
    clients send the admin key of ``env`` and trust its ``tls_ca_file``."""
    port = free_port()
    given = {name: value for name, value in (env or {}).items() if name.startswith(PREFIX)}
    settings = Settings.load(given).replace(host="127.0.0.1", port=port)
    output = directory / f"{arguments[0]}-{port}.log"
    path = os.pathsep.join(os.path.abspath(entry) for entry in sys.path)
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "kappaflow", *arguments, "--port", str(port)],
            env=environment({"PYTHONPATH": path, **(env or {})}),
            stdout=sink,
            stderr=sink,
            preexec_fn=preexec_fn,
        )
    running = Running(process, settings, output)
    probing = running.client()
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, f"no {probe} within 30 s"
            try:
                if probing.get(probe, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield running
    finally:
        running.close_clients()
        if process.poll() is None:  # SIGTERM first: `up` then stops the processes it ran
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
