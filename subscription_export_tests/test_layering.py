"""The domain code does not import Dagster (DESIGN.md: "the Dagster wiring stays thin")."""

from __future__ import annotations

import subprocess
import sys

DOMAIN = ("source", "state", "formats", "sync")

_CHECK = """
import importlib, pkgutil, sys
import subscription_export
loaded = []
for package in {packages!r}:
    module = importlib.import_module(f"subscription_export.{{package}}")
    for info in pkgutil.walk_packages(module.__path__, f"{{module.__name__}}."):
        importlib.import_module(info.name)
        loaded.append(info.name)
assert "subscription_export.sync.reconcile" in loaded, loaded
dagster = sorted(m for m in sys.modules if m == "dagster" or m.startswith("dagster."))
print(len(loaded), dagster[:5])
sys.exit(1 if dagster else 0)
"""


def test_domain_packages_import_without_dagster() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CHECK.format(packages=DOMAIN)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
