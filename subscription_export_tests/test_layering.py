"""The domain code does not import Dagster (DESIGN.md: "the Dagster wiring stays thin")."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import subscription_export

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

import subscription_export
from subscription_export.core.db import engine_for
from subscription_export.runtime import Project
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.core.settings import Settings
from subscription_export.source.demo_table import init_demo_source
from subscription_export_tests.helpers import insert

work = Path(sys.argv[1])
source = f"sqlite:///{work / 'source.db'}"
engine = engine_for(source, writer=True)
init_demo_source(engine)
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


# -- the package layout's rules, read statically from every import (in-function ones included) --

PACKAGE_ROOT = Path(subscription_export.__file__).parent
DOMAIN_FOLDERS = frozenset(DOMAIN)
WIRING_FOLDERS = ("defs", "cli")  # Dagster and the terminal: they call domain functions only
SQL_WORDS = re.compile(r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE TABLE)\b")


def _room(module: str) -> str:
    """`subscription_export.delivery.window` -> `delivery`; a top-level module is its own room."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path, package: str) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m == package or m.startswith(package + ".")}


def layering_violations(root: Path) -> list[str]:
    """Every broken rule of the layout under the package folder `root`, one line each."""
    package = root.name
    edges: dict[str, set[str]] = {}
    problems: list[str] = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        room = relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 else relative.stem
        targets = {_room(m) for m in _imports(path, package)} - {"", room}
        # `from pkg import folder` names a room too
        targets = {t for t in targets if (root / t).is_dir() or (root / f"{t}.py").exists()}
        edges.setdefault(room, set()).update(targets)
        text = path.read_text()
        if room in DOMAIN_FOLDERS and re.search(r"^\s*(import|from) dagster\b", text, re.M):
            problems.append(f"{relative}: domain code imports dagster")
        if room in WIRING_FOLDERS and (
            re.search(r"^\s*(import sqlalchemy|from sqlalchemy(?!\.exc))\b", text, re.M)
            or SQL_WORDS.search(text)
        ):
            problems.append(f"{relative}: {room}/ holds SQL (move the query to the domain)")
    for room, targets in sorted(edges.items()):
        if room == "core" and targets:
            problems.append(f"core imports {sorted(targets)} (core imports nothing above it)")
        if room == "delivery" and "reconcile" in targets:
            problems.append("delivery imports reconcile (outbound never depends on inbound)")
        for target in sorted(targets):
            if target > room and room in edges.get(target, set()):
                problems.append(f"{room} and {target} import each other")
    return problems


def test_the_package_keeps_its_layout() -> None:
    assert layering_violations(PACKAGE_ROOT) == []


def test_the_layout_check_finds_each_kind_of_break(tmp_path: Path) -> None:
    """The rules above fail when broken (a check that cannot fail proves nothing)."""
    package = tmp_path / "pkg"
    files = {
        "core/__init__.py": "",
        "core/values.py": "from pkg.formats.schema import X\n",
        "formats/__init__.py": "",
        "formats/schema.py": "def f():\n    from pkg.source import reader\n",
        "source/__init__.py": "",
        "source/reader.py": "from pkg.formats import schema\n",
        "delivery/__init__.py": "",
        "delivery/window.py": "import pkg.reconcile.flow\n",
        "reconcile/__init__.py": "",
        "reconcile/flow.py": "import dagster as dg\n",
        "defs/__init__.py": "",
        "defs/assets.py": "import sqlalchemy as sa\n",
        "cli/__init__.py": "",
        "cli/status.py": 'Q = "SELECT count(*) FROM windows"\n',
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    problems = "\n".join(layering_violations(package))
    for expected in (
        "core imports ['formats']",
        "formats and source import each other",
        "delivery imports reconcile",
        "reconcile/flow.py: domain code imports dagster",
        "defs/assets.py: defs/ holds SQL",
        "cli/status.py: cli/ holds SQL",
    ):
        assert expected in problems, problems
