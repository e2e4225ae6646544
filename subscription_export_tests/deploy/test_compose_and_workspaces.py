"""The Docker and Kubernetes deployments wire up: the workspaces point at the user-code gRPC
server that the image starts, the compose file takes every secret from the environment, and
the image's own command serves definitions that `dagster definitions validate` accepts."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import yaml
from dagster._core.workspace.config_schema import ensure_workspace_config

from subscription_export_tests.deploy.configs import DOCKER, K8S, MODULE, RUN_ENV, load
from subscription_export_tests.ui.dagster_processes import free_port, wait_until

SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|_URL$")
INTERPOLATION = re.compile(r"\$\{[A-Z0-9_]+(?::?[-?][^}]*)?\}")
# user:password@ with a password that is not a `${…}` interpolation.
LITERAL_USERINFO = re.compile(r"://[^/:@\s]+:(?!\$\{)[^@\s]+@")


def _dockerfile_cmd() -> list[str]:
    lines = (DOCKER / "Dockerfile").read_text().splitlines()
    cmd = [line for line in lines if line.startswith("CMD ")][-1]
    return list(yaml.safe_load(cmd.removeprefix("CMD ")))


def _environment(service: Mapping[str, object]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    assert isinstance(env, dict)
    return {str(k): str(v) for k, v in env.items()}


def _literal_secrets(compose: Mapping[str, object]) -> Iterator[str]:
    services = compose["services"]
    assert isinstance(services, dict)
    for name, service in services.items():
        for key, value in _environment(service).items():
            # A secret is either a whole `${VAR}` or, inside a URL, only its password is.
            plain = SECRET_KEY.search(key) and "://" not in value and value
            if (plain and not INTERPOLATION.fullmatch(value)) or LITERAL_USERINFO.search(value):
                yield f"{name}: {key}={value}"


def test_docker_workspace_points_at_the_user_code_service() -> None:
    workspace = load(DOCKER / "workspace.yaml")
    ensure_workspace_config(workspace, str(DOCKER / "workspace.yaml"))
    [entry] = workspace["load_from"]
    grpc = entry["grpc_server"]
    compose = load(DOCKER / "docker-compose.yaml")
    user_code = compose["services"][grpc["host"]]
    command = user_code.get("command") or _dockerfile_cmd()
    assert command[:3] == ["dagster", "code-server", "start"]
    assert command[command.index("-m") + 1] == MODULE
    assert int(command[command.index("-p") + 1]) == grpc["port"]
    assert grpc["location_name"] == "subscription_export"
    # Runs are started in the image the code server reports, and see the same settings.
    assert "DAGSTER_CURRENT_IMAGE" in _environment(user_code)
    for service in ("webserver", "daemon"):
        assert compose["services"][service]["command"][-2:] == ["-w", "workspace.yaml"]


def test_k8s_user_deployment_serves_the_module_with_its_secrets() -> None:
    values = load(K8S / "values.yaml")
    subchart = values["dagster-user-deployments"]
    [deployment] = subchart["deployments"]
    args = deployment["codeServerArgs"]
    assert args[args.index("-m") + 1] == MODULE
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert deployment["envSecrets"], "settings and AWS credentials come from a Secret"
    assert deployment["image"]["repository"] == values["dagsterDaemon"]["image"]["repository"]


def test_compose_file_parses_and_has_no_literal_secret() -> None:
    compose = load(DOCKER / "docker-compose.yaml")
    assert {"postgres", "user_code", "webserver", "daemon"} <= set(compose["services"])
    assert list(_literal_secrets(compose)) == []
    assert not LITERAL_USERINFO.search((DOCKER / "docker-compose.yaml").read_text())
    run_env = _environment(compose["services"]["daemon"])
    assert set(run_env) >= RUN_ENV, "the daemon passes these on to run containers"


def test_env_example_holds_no_secret_values() -> None:
    lines = (DOCKER / ".env.example").read_text().splitlines()
    pairs = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert "POSTGRES_PASSWORD" in pairs
    assert {k: v for k, v in pairs.items() if SECRET_KEY.search(k) and "://" not in v and v} == {}
    assert not [v for v in pairs.values() if LITERAL_USERINFO.search(v)]


def test_k8s_values_hold_no_secret_values() -> None:
    text = (K8S / "values.yaml").read_text()
    values = yaml.safe_load(text)
    assert values["generatePostgresqlPasswordSecret"] is False
    assert "postgresqlPassword" not in values["postgresql"]
    assert not LITERAL_USERINFO.search(text)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_images_code_server_serves_definitions_that_validate(tmp_path: Path) -> None:
    # The image's own CMD on a free port, then the Docker workspace pointed at it.
    cmd = _dockerfile_cmd()
    port = free_port()
    cmd[cmd.index("-p") + 1], cmd[cmd.index("-h") + 1] = str(port), "127.0.0.1"
    workspace = load(DOCKER / "workspace.yaml")
    workspace["load_from"][0]["grpc_server"] |= {"host": "127.0.0.1", "port": port}
    (tmp_path / "workspace.yaml").write_text(yaml.safe_dump(workspace))
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen(
        [str(bin_dir / cmd[0]), *cmd[1:]],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        validate = [sys.executable, "-m", "dagster", "definitions", "validate", "-w"]

        def listening() -> bool | None:
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0 or None

        wait_until("the code server listens", listening, 90, 0.2)
        result = subprocess.run(
            [*validate, str(tmp_path / "workspace.yaml")],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            cwd=tmp_path,
        )
        assert result.returncode == 0, shlex.join(cmd) + "\n" + result.stdout + result.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
