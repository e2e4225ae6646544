"""What the demo takes from the sandbox: how much to write, and where to deliver."""

from __future__ import annotations

from pathlib import Path

from subscription_export.core.db import engine_for
from subscription_export.delivery.config import load_destinations
from subscription_export.sandbox.demo import (
    DemoPlan,
    destinations_file_for,
    plan_changes,
    running_destinations,
)
from subscription_export.sandbox.generator import generate
from subscription_export.source.demo_table import init_demo_source


def test_a_fresh_source_gets_the_full_demo_and_a_used_one_more_changes(sqlite_url: str) -> None:
    source = engine_for(sqlite_url, writer=True)
    init_demo_source(source)
    assert plan_changes(source, 50, 400, 100) == DemoPlan(subscriptions=50, changes=400)
    generate(source, subscriptions=5, changes=20)
    assert plan_changes(source, 50, 400, 100) == DemoPlan(subscriptions=5, changes=100)
    assert plan_changes(source, 50, 400, 10) == DemoPlan(subscriptions=1, changes=10)


def test_the_destinations_file_points_at_the_running_systems(tmp_path: Path) -> None:
    path = destinations_file_for(f"sqlite:///{tmp_path / 'state.db'}")
    assert path == tmp_path / "demo_destinations.toml"
    with running_destinations(path) as (servers, written):
        config = load_destinations(written, env={})
        assert sorted(config.names) == sorted(servers) == ["accounting", "crm", "erp"]
        for name, server in servers.items():
            destination = config.get(name)
            assert destination is not None and destination.base_url == server.url
            assert destination.kind == name and destination.max_concurrency == 8
