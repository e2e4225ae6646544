"""The checked-in deployment files (`deploy/docker`, `deploy/k8s`) and readers for them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
K8S = REPO / "deploy" / "k8s"
INSTANCES = {
    "postgres": REPO / "deploy" / "dagster.postgres.yaml",
    "docker": DOCKER / "dagster.yaml",
    "k8s": K8S / "dagster-instance.yaml",
}
MODULE = "subscription_export.definitions"
# What a run needs from the environment (settings, the instance's database, object storage).
RUN_ENV = {
    "SUBSCRIPTION_EXPORT_SOURCE_URL",
    "SUBSCRIPTION_EXPORT_STATE_URL",
    "SUBSCRIPTION_EXPORT_WATERMARK_URL",
    "SUBSCRIPTION_EXPORT_EXPORT_DIR",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def env_sources(node: object) -> Iterator[str]:
    """Every `{env: NAME}` a Dagster config reads, at any depth."""
    if isinstance(node, Mapping):
        if set(node) == {"env"}:
            yield str(node["env"])
        for value in node.values():
            yield from env_sources(value)
    elif isinstance(node, list):
        for value in node:
            yield from env_sources(value)
