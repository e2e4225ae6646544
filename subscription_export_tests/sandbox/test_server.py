"""The sandbox systems over real HTTP on 127.0.0.1: idempotency, faults, admin, lifecycle."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from subscription_export.sandbox.faults import FaultPlan, FaultSpec
from subscription_export.sandbox.server import SandboxServer, running_sandbox
from subscription_export.sandbox.systems import CrmSystem, ErpSystem


def record(version: int = 1, **fields: Any) -> dict[str, Any]:
    base = {
        "id": "s1",
        "user_id": "u1",
        "name": "Basic",
        "amount": "10.00",
        "currency": "EUR",
        "status": "active",
        "version": version,
    }
    return {**base, **fields}


@pytest.fixture
def erp() -> Iterator[SandboxServer]:
    with SandboxServer(ErpSystem(in_flight_retry_after_s=0.5)) as server:
        yield server


def put(
    server: SandboxServer, key: str | None, body: dict, timeout: float = 5.0
) -> requests.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return requests.put(
        f"{server.url}/subscriptions/s1", json=body, headers=headers, timeout=timeout
    )


def wait_until(condition: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_replay_and_key_reuse_over_http(erp: SandboxServer) -> None:
    first = put(erp, "k1", record())
    replay = put(erp, "k1", record())
    assert (first.status_code, replay.status_code) == (201, 201)
    assert replay.json() == first.json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    reused = put(erp, "k1", record(amount="99.00"))
    assert (reused.status_code, reused.json()["error"]) == (422, "idempotency_key_reused")
    assert erp.system.applications == {"k1": 1}


def test_in_flight_key_gets_409(erp: SandboxServer) -> None:
    erp.system.set_faults(FaultPlan(default=FaultSpec(latency_s=0.3)))
    answers: list[requests.Response] = []
    slow = threading.Thread(target=lambda: answers.append(put(erp, "k1", record())))
    slow.start()
    time.sleep(0.1)  # the first request holds the key during its latency
    in_flight = put(erp, "k1", record())
    slow.join()
    assert (in_flight.status_code, in_flight.json()["error"]) == (409, "request_in_progress")
    assert in_flight.headers["Retry-After"] == "0.5"
    assert answers[0].status_code == 201
    assert put(erp, "k1", record()).status_code == 201  # now a replay
    assert erp.system.applications == {"k1": 1}


def test_reset_is_a_connection_error_and_applies_nothing(erp: SandboxServer) -> None:
    erp.system.set_faults(FaultPlan(default=FaultSpec(reset=1.0)))
    with pytest.raises(requests.ConnectionError):
        put(erp, "k1", record())
    assert erp.system.records == {}
    assert erp.system.requests_by_status == {"reset": 1}


def test_lost_response_applies_then_replays(erp: SandboxServer) -> None:
    erp.system.set_faults(FaultPlan(default=FaultSpec(lost_response=1.0)))
    with pytest.raises(requests.ConnectionError):
        put(erp, "k1", record())
    assert erp.system.applications == {"k1": 1}
    erp.system.set_faults(FaultPlan())
    assert put(erp, "k1", record()).headers["Idempotent-Replayed"] == "true"
    assert erp.system.applications == {"k1": 1}


def test_timeout_fault_outlasts_the_client_then_applies(erp: SandboxServer) -> None:
    erp.system.set_faults(FaultPlan(default=FaultSpec(timeout=1.0, timeout_s=0.3)))
    with pytest.raises(requests.Timeout):
        put(erp, "k1", record(), timeout=0.1)
    wait_until(lambda: erp.system.applications == {"k1": 1})
    erp.system.set_faults(FaultPlan())
    assert put(erp, "k1", record()).status_code == 201
    assert erp.system.applications == {"k1": 1}


def test_admin_endpoints(erp: SandboxServer) -> None:
    plan = {"seed": 4, "default": {"error": 1.0, "error_statuses": [502]}}
    assert requests.post(f"{erp.url}/_sandbox/faults", json=plan, timeout=5).status_code == 200
    assert requests.get(f"{erp.url}/_sandbox/faults", timeout=5).json()["seed"] == 4
    assert put(erp, None, record()).status_code == 502
    bad = requests.post(f"{erp.url}/_sandbox/faults", json={"default": {"error": 2}}, timeout=5)
    assert bad.status_code == 422
    requests.post(f"{erp.url}/_sandbox/faults", json={}, timeout=5)
    assert put(erp, "k1", record()).status_code == 201

    edit = {"id": "s1", "fields": {"status": "paused"}}
    assert requests.post(f"{erp.url}/_sandbox/edit", json=edit, timeout=5).status_code == 200
    gone = requests.post(
        f"{erp.url}/_sandbox/edit", json={"id": "nope", "fields": {"a": 1}}, timeout=5
    )
    assert gone.status_code == 404
    delete = requests.post(f"{erp.url}/_sandbox/edit", json={"id": "s1", "delete": True}, timeout=5)
    assert delete.json()["op"] == "delete"

    feed = requests.get(f"{erp.url}/changes", params={"after": 0}, timeout=5).json()
    assert [(c["op"], c["record"]["status"]) for c in feed["changes"]] == [
        ("upsert", "paused"),
        ("delete", "paused"),
    ]
    assert all(c["updated_at"].endswith("Z") for c in feed["changes"])
    state = requests.get(f"{erp.url}/_sandbox/state", timeout=5).json()
    assert state["system"] == "erp"
    assert state["applications"] == {"k1": 1}
    assert state["deleted"] == ["s1"] and state["records"] == {}
    assert state["requests_by_status"] == {"502": 1, "201": 1, "200": 1}  # PUT, PUT, feed


def test_stop_does_not_wait_for_held_requests_or_idle_connections() -> None:
    server = SandboxServer(CrmSystem(FaultPlan(default=FaultSpec(timeout=1.0, timeout_s=30))))
    server.start()
    session = requests.Session()
    session.get(f"{server.url}/_sandbox/state", timeout=5)  # leaves an idle keep-alive socket
    errors: list[Exception] = []

    def held() -> None:
        try:
            session.post(f"{server.url}/batch", json={"items": []}, timeout=10)
        except requests.RequestException as exc:
            errors.append(exc)

    worker = threading.Thread(target=held)
    worker.start()
    wait_until(lambda: server.system.faults_injected.get("timeout") == 1)
    started = time.monotonic()
    server.stop()
    worker.join(timeout=5)
    assert time.monotonic() - started < 2.0
    assert len(errors) == 1 and isinstance(errors[0], requests.ConnectionError)


def test_running_sandbox_starts_every_system_on_its_own_port() -> None:
    plan = FaultPlan(default=FaultSpec(latency_s=0.001), seed=3)
    with running_sandbox(faults=plan) as servers:
        assert set(servers) == {"erp", "crm", "accounting"}
        assert len({s.port for s in servers.values()}) == 3
        for name, server in servers.items():
            state = requests.get(f"{server.url}/_sandbox/state", timeout=5).json()
            assert (state["system"], state["faults"]["seed"]) == (name, 3)
        assert servers["erp"].system.faults is not servers["crm"].system.faults


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _default_sigint() -> None:
    # pytest-xdist workers ignore SIGINT and children inherit an ignored signal through exec,
    # so without this Python would never turn Ctrl-C into KeyboardInterrupt in the child.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serve_forever_serves_until_interrupted(stop_signal: signal.Signals) -> None:
    port = free_port()
    code = (
        "from subscription_export.sandbox.server import serve_forever; "
        f"serve_forever('accounting', {port})"
    )
    process = subprocess.Popen([sys.executable, "-c", code], preexec_fn=_default_sigint)
    try:
        url = f"http://127.0.0.1:{port}/_sandbox/state"
        deadline = time.monotonic() + 10
        while True:
            try:
                assert requests.get(url, timeout=1).json()["system"] == "accounting"
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        process.send_signal(stop_signal)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
