"""The layers point one way: ingest writes only the log (none of its modules loads the
store), and the core knows no app."""

from __future__ import annotations

import subprocess
import sys

IMPORT_INGEST = """
import pkgutil, sys
import kappaflow.ingest
for module in pkgutil.walk_packages(kappaflow.ingest.__path__, "kappaflow.ingest."):
    __import__(module.name)
print(sorted(m for m in sys.modules if m.startswith("kappaflow.ingest.")))
print(sorted(m for m in sys.modules if m.split(".")[:2] == ["kappaflow", "store"]))
"""


def test_ingest_imports_nothing_from_the_store() -> None:
    # A fresh interpreter: modules the test session imported would hide an import.
    done = subprocess.run([sys.executable, "-c", IMPORT_INGEST], capture_output=True,
                          text=True, check=True)  # fmt: skip
    ingest, store = done.stdout.splitlines()
    assert "kappaflow.ingest.service" in ingest
    assert store == "[]"


IMPORT_CORE = """
import pkgutil, sys
import kappaflow

def walk(path, prefix):  # every module but the apps' (walk_packages would import them)
    for module in pkgutil.iter_modules(path, prefix):
        if module.name not in ("kappaflow.apps", "kappaflow.__main__"):
            imported = __import__(module.name, fromlist=["_"])
            if module.ispkg:
                walk(imported.__path__, module.name + ".")

walk(kappaflow.__path__, "kappaflow.")
print(sorted(m for m in sys.modules if m.startswith("kappaflow.")))
"""


def test_the_core_imports_no_app() -> None:
    """kappaflow's own modules name no built-in app: the apps are found as installed
    apps (entry points), as a user's are."""
    done = subprocess.run([sys.executable, "-c", IMPORT_CORE], capture_output=True,
                          text=True, check=True)  # fmt: skip
    imported = done.stdout.strip()
    assert "'kappaflow.cli'" in imported and "'kappaflow.stream.worker'" in imported
    assert "kappaflow.apps" not in imported
