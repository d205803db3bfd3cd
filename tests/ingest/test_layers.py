"""Ingest writes only the log: none of its modules loads the store."""

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
