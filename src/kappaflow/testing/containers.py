"""kappaflow's image built and run with podman, for tests, with no registry: the base
image is made from Debian's packages (``debootstrap`` bookworm minbase plus Debian's
``python3``, imported with ``podman import``) and the image is built from it by ``make
image``, which installs the project's wheels offline.

Podman runs with a configuration of its own (``CONTAINERS_CONF``): cgroups managed by
cgroupfs (no systemd), open-file and process limits within this process's own hard
limits (given to the build too, which does not read them there), logs in files (no
journald), and the host's network, so that containers reach the servers the tests run
on 127.0.0.1 and the tests reach the containers' ports there."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

BASE = "localhost/kappaflow-base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
INSTALL_HINT = "podman and debootstrap are needed (Debian: apt-get install podman debootstrap)"


class ContainersUnavailable(RuntimeError):
    """podman or debootstrap is missing; the message says what to install."""


def engine_environment(directory: Path) -> dict[str, str]:
    """The environment to run podman in: ours, with ``CONTAINERS_CONF`` pointing at a
    configuration written into ``directory``."""
    for tool in ("podman", "debootstrap"):
        if shutil.which(tool) is None:
            raise ContainersUnavailable(f"{tool} not found: {INSTALL_HINT}")
    conf = directory / "containers.conf"
    limits = ", ".join(f'"{limit}"' for limit in _limits())
    conf.write_text(
        "[containers]\n"
        f"default_ulimits = [{limits}]\n"
        'netns = "host"\n'
        'log_driver = "k8s-file"\n'
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def _limits() -> list[str]:
    """Open files and processes for containers, within what this machine grants (the
    engine's defaults may exceed it, and a container then fails to start): this
    process's hard limits, and a few thousand processes, below the kernel's pid_max."""
    files = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    processes = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
    return [f"nofile={files}:{files}", f"nproc={processes}:{processes}"]


def podman(env: Mapping[str, str], *arguments: str, timeout_s: float = 120) -> str:
    """Run ``podman ARGUMENTS``; its output, or an error carrying what it printed."""
    done = subprocess.run(["podman", *arguments], env=env, capture_output=True, text=True,
                          timeout=timeout_s)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(arguments)}: exit {done.returncode}\n"
                           f"{done.stdout}{done.stderr}")  # fmt: skip
    return done.stdout


def base_image(env: Mapping[str, str]) -> str:
    """The Debian base image (made once per machine; kept in podman's storage)."""
    if subprocess.run(["podman", "image", "exists", BASE], env=env).returncode == 0:
        return BASE
    with tempfile.TemporaryDirectory(prefix="kappaflow-rootfs-") as root:
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv",
             "bookworm", root, os.environ.get("KAPPAFLOW_DEBIAN_MIRROR", DEBIAN_MIRROR)],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["podman", "import", "-", BASE], stdin=tar.stdout, env=env,
                                  capture_output=True, timeout=300)  # fmt: skip
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise RuntimeError(f"podman import: {imported.stderr.decode()}")
    return BASE


def build_image(env: Mapping[str, str], repository: Path, base: str) -> str:
    """kappaflow's image of the checkout at ``repository``, built on ``base`` by ``make
    image``; its name."""
    image = f"localhost/kappaflow:test-{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        ["make", "-C", str(repository), "image", f"BASE={base}", f"IMAGE={image}",
         "ENGINE=podman", "BUILD_OPTIONS=" + " ".join(f"--ulimit {u}" for u in _limits())],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"make image: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return image


class Container:
    """A container started from an image, stopped and removed by `remove`."""

    def __init__(self, env: Mapping[str, str], name: str) -> None:
        self.env, self.name = env, name

    def podman(self, *arguments: str, timeout_s: float = 120) -> str:
        return podman(self.env, *arguments, timeout_s=timeout_s)

    def healthy(self) -> bool:
        """Whether the image's health check passes now."""
        return subprocess.run(["podman", "healthcheck", "run", self.name], env=self.env,
                              capture_output=True, timeout=30).returncode == 0  # fmt: skip

    def running(self) -> bool:
        return self.podman("inspect", "--format", "{{.State.Running}}", self.name).strip() == "true"

    def exit_code(self) -> int:
        return int(self.podman("inspect", "--format", "{{.State.ExitCode}}", self.name))

    def logs(self) -> str:
        """What the container wrote, standard output and error interleaved."""
        return subprocess.run(["podman", "logs", self.name], env=self.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=60).stdout  # fmt: skip

    def stop(self, timeout_s: int = 60) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit code."""
        self.podman("stop", "--time", str(timeout_s), self.name, timeout_s=timeout_s + 30)
        return self.exit_code()

    def remove(self) -> None:
        subprocess.run(["podman", "rm", "--force", "--time", "0", self.name], env=self.env,
                       capture_output=True, timeout=60)  # fmt: skip


@contextmanager
def run_container(
    env: Mapping[str, str], image: str, arguments: list[str], environment: Mapping[str, str]
) -> Iterator[Container]:
    """A container of ``image`` running ``arguments`` with ``environment``, removed
    after. Its host name is its own (as a pod's is), though it shares the host's network."""
    name = f"kappaflow-test-{uuid.uuid4().hex[:10]}"
    variables = [f"--env={key}={value}" for key, value in environment.items()]
    podman(env, "run", "--detach", "--name", name, "--hostname", name, *variables, image,
           *arguments)  # fmt: skip
    container = Container(env, name)
    try:
        yield container
    finally:
        container.remove()
