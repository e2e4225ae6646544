"""The Dagster instance the CLI records its runs in (the same one `make ui` shows)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

DEFAULT_DAGSTER_HOME = Path(".subscription_export") / "dagster_home"


def ensure_dagster_home() -> Path:
    """Use $DAGSTER_HOME, or create the project default with the embedded dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).absolute()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        template = resources.files("subscription_export").joinpath("templates/dagster.yaml")
        config.write_text(template.read_text())
    os.environ["DAGSTER_HOME"] = str(home)
    return home
