"""The checked-in Dagster instances of `deploy/` load: Dagster's instance schema accepts them,
each configurable class (storage, run launcher, run coordinator) accepts its config, the run
launchers are built from it without a Docker daemon or a cluster, and the Helm chart's instance
records runs on a real PostgreSQL."""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.instance.config import dagster_instance_config
from dagster._serdes import ConfigurableClassData
from sqlalchemy.engine import make_url

from subscription_export_tests.defs.test_pg_instance import one
from subscription_export_tests.deploy.configs import (
    DOCKER,
    INSTANCES,
    K8S,
    RUN_ENV,
    env_sources,
    load,
)

CLASS_SECTIONS = ("run_launcher", "run_coordinator")
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: not-a-secret}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"""


def _with_env(config: object, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in env_sources(config):
        monkeypatch.setenv(name, "postgresql://u:p@db:5432/dagster" if "URL" in name else "x")


def _class_config(section: Mapping[str, Any]) -> tuple[type, Mapping[str, Any]]:
    # Resolved as the instance does (`dagster.core…` is read as `dagster._core…`).
    data = ConfigurableClassData(section["module"], section["class"], "{}")
    klass = getattr(importlib.import_module(data.module_name), data.class_name)
    config_type = resolve_to_config_type(klass.config_type())
    result = process_config(config_type, section.get("config") or {})
    assert result.success, [error.message for error in result.errors or []]
    return klass, result.value or {}


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_instance_yaml_validates_against_dagsters_schema(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(INSTANCES[name], tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    _with_env(config, monkeypatch)
    sections = [config[key] for key in CLASS_SECTIONS if key in config]
    if "custom" in config["storage"]:
        sections.append(config["storage"]["custom"])
    for section in sections:  # what the instance does when it loads each of them
        _class_config(section)
    coordinator = config["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    assert {
        "key": "dagster/partition",
        "value": {"applyLimitPerUniqueValue": True},
        "limit": 1,
    } in (coordinator["config"]["tag_concurrency_limits"]), "one run per window at a time"
    assert config["run_retries"]["enabled"] is True


def test_docker_run_launcher_is_built_from_its_config(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load(INSTANCES["docker"])
    _with_env(config, monkeypatch)
    klass, value = _class_config(config["run_launcher"])
    launcher = klass.from_config_value(None, value)  # no Docker daemon needed until a launch
    assert type(launcher).__name__ == "DockerRunLauncher"
    # Runs read their settings, the instance's database and object storage from the env.
    assert {"DAGSTER_PG_URL", *RUN_ENV} <= set(launcher.env_vars)
    compose = load(DOCKER / "docker-compose.yaml")
    assert launcher.networks == [compose["networks"]["dagster"]["name"]]


def test_k8s_run_launcher_is_built_with_a_dummy_kubeconfig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load(INSTANCES["k8s"])
    _with_env(config, monkeypatch)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    launcher_config = config["run_launcher"]
    launcher_config["config"] |= {
        "load_incluster_config": False,
        "kubeconfig_file": str(kubeconfig),
    }
    klass, value = _class_config(launcher_config)
    launcher = klass.from_config_value(None, value)
    assert type(launcher).__name__ == "K8sRunLauncher"
    values = load(K8S / "values.yaml")
    secrets = [s["name"] for s in values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"]]
    assert secrets and launcher.env_secrets == secrets


def test_k8s_instance_is_what_the_helm_values_render() -> None:
    # No helm binary in CI: the checked-in rendering is held to the values it came from.
    values, instance = load(K8S / "values.yaml"), load(INSTANCES["k8s"])
    pg, db = values["postgresql"], instance["storage"]["postgres"]["postgres_db"]
    assert pg["enabled"] is False
    assert db["scheme"] == pg["postgresqlScheme"] == "postgresql+psycopg2"
    assert (db["hostname"], db["db_name"], db["port"]) == (
        pg["postgresqlHost"],
        pg["postgresqlDatabase"],
        pg["service"]["port"],
    )
    assert db["password"] == {"env": "DAGSTER_PG_PASSWORD"}  # from the chart's PG secret
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    rendered = instance["run_coordinator"]["config"]
    assert rendered["max_concurrent_runs"] == queued["maxConcurrentRuns"]
    assert rendered["tag_concurrency_limits"] == queued["tagConcurrencyLimits"]
    retries = values["dagsterDaemon"]["runRetries"]
    assert instance["run_retries"] == {"enabled": True, "max_retries": retries["maxRetries"]}
    handler = values["pythonLogs"]["dagsterHandlerConfig"]
    assert instance["python_logs"]["dagster_handler_config"] == handler


@pytest.mark.integration
@pytest.mark.slow
def test_k8s_instance_records_runs_on_a_real_postgresql(
    dagster_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The chart builds the URL from parts; with its default scheme `postgresql`, SQLAlchemy 2.1
    # picks psycopg 3 and every event write fails (NOTIFY run_events, $1).
    url = make_url(dagster_db)
    instance_yaml = load(INSTANCES["k8s"])
    db = instance_yaml["storage"]["postgres"]["postgres_db"]
    db |= {"hostname": url.host, "port": url.port, "db_name": url.database}
    db |= {"username": url.username}
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", url.password or "")
    del instance_yaml["run_launcher"]  # needs a cluster; the storage is what is tested here
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        result = dg.materialize([one], instance=instance)
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        assert instance.get_latest_materialization_event(one.key) is not None
