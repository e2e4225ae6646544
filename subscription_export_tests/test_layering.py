"""The domain code does not import Dagster (DESIGN.md: "the Dagster wiring stays thin")."""

from __future__ import annotations

import subprocess
import sys

DOMAIN = (
    "core",
    "source",
    "state",
    "formats",
    "export",
    "delivery",
    "reconcile",
    "metrics",
    "reports",
    "sandbox",
)

_CHECK = """
import importlib, pkgutil, sys
import subscription_export
loaded = []
for package in {packages!r}:
    module = importlib.import_module(f"subscription_export.{{package}}")
    for info in pkgutil.walk_packages(module.__path__, f"{{module.__name__}}."):
        importlib.import_module(info.name)
        loaded.append(info.name)
assert "subscription_export.reconcile.flow" in loaded, loaded
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


_EXPORT = """
import sys
from pathlib import Path
from subscription_export.core.db import engine_for
from subscription_export.runtime import Project
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.core.settings import Settings
from subscription_export.source.schema import init_source
from subscription_export_tests.helpers import insert

work = Path(sys.argv[1])
source = f"sqlite:///{work / 'source.db'}"
engine = engine_for(source, writer=True)
init_source(engine)
with engine.begin() as conn:
    insert(conn, "s1")
settings = Settings(
    source_url=source, state_url=f"sqlite:///{work / 'state.db'}", export_dir=work / "out",
    window_max_age_s=0.0,
)
project = Project(settings)
[window] = cut_windows(project).new_windows
for fmt in ("parquet", "csv", "jsonl"):
    export_window_file(project, fmt, window)
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"dagster", "pandas", "redis", "requests"})
print(heavy)
sys.exit(1 if heavy else 0)
"""


def test_an_export_loads_neither_dagster_nor_the_clients_it_does_not_use(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Each of these costs the exporter 6-40 MB of RSS (bench: peak 263 -> 221 MB without
    redis and the HTTP clients; pandas is imported by pyarrow whenever it is installed)."""
    blocker = (  # as installed: pandas is only a bench/test extra
        "import sys\n"
        "from subscription_export.bench import _NoPandas\n"
        "sys.meta_path.insert(0, _NoPandas())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocker + _EXPORT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
