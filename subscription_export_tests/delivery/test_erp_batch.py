"""ERP delivery through the sandbox's `POST /subscriptions/$batch`, over real HTTP.

Requests are counted at the sandbox; per-item failures are scripted per record id, so one
item of a batch fails (for good or once) while the others are applied.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from subscription_export.delivery.clients import HELD_BACK, ErpClient, idempotency_key
from subscription_export.delivery.config import load_destinations
from subscription_export.delivery.dispatch import deliver
from subscription_export.sandbox.faults import FaultPlan
from subscription_export.sandbox.server import SandboxServer
from subscription_export.sandbox.systems import ErpSystem
from subscription_export_tests.delivery.factories import change_row, fast_policy

WINDOW = "00000000000000000001-00000000000000001000"
BATCH = "POST /subscriptions/$batch"


def posts(system: ErpSystem) -> int:
    """Requests the ERP answered (any status), which are batch POSTs unless single ones ran."""
    return sum(system.requests_by_status.values())


def rows_for(n: int) -> list[dict[str, Any]]:
    return [change_row(lsn, f"s{lsn}", "c", amount=f"{lsn}.00") for lsn in range(1, n + 1)]


def test_a_window_takes_ceil_n_over_batch_requests() -> None:
    erp = ErpSystem()
    with SandboxServer(erp) as server, ErpClient(server.url, retry=fast_policy()) as client:
        report = deliver(
            rows_for(250), client, window_key=WINDOW, batch_size=100, max_concurrency=1
        )
    assert report.stats.delivered == 250
    assert posts(erp) == math.ceil(250 / 100)
    assert len(erp.records) == 250
    assert set(erp.applications.values()) == {1}


def test_one_permanent_and_one_transient_item_failure() -> None:
    """s3 is refused as stale (409, permanent), s5 fails once with 503 then goes through: one
    dead letter, s3's later change is held back behind it, everything else is delivered."""
    erp = ErpSystem(FaultPlan(item_script={"s5": (503,)}))
    with SandboxServer(erp) as server, ErpClient(server.url, retry=fast_policy()) as client:
        erp._records["s3"] = {"id": "s3", "version": 9}  # the ERP holds a newer s3
        rows = [change_row(n, f"s{n}", "c") for n in range(1, 9)]
        rows.append(change_row(9, "s3", "u", version=2))
        rows.append(change_row(10, "s5", "u", version=2, amount="55.00"))
        report = deliver(rows, client, window_key=WINDOW, batch_size=100, max_concurrency=1)
    by_lsn = {r.lsn: r for r in report.results}
    assert by_lsn[3].status == "dead_letter" and "409" in (by_lsn[3].error or "")
    assert by_lsn[9].error == HELD_BACK
    assert by_lsn[5].status == "delivered" and by_lsn[5].attempts == 2
    assert [r.lsn for r in report.results if r.status == "dead_letter"] == [3, 9]
    assert report.stats.delivered == 8
    assert erp.records["s5"]["amount"] == "55.00" and erp.records["s5"]["version"] == 2
    assert erp.faults_injected == {"scripted_item": 1}


def test_changes_of_one_record_arrive_in_order_and_redelivery_changes_nothing() -> None:
    erp = ErpSystem()
    rows = []
    for n in range(1, 31):  # s1..s10 created, then updated twice, interleaved
        sid = f"s{(n - 1) % 10 + 1}"
        version = (n - 1) // 10 + 1
        rows.append(change_row(n, sid, "c" if version == 1 else "u", version=version))
    rows.append(change_row(31, "s4", "d", version=3))
    with SandboxServer(erp) as server, ErpClient(server.url, retry=fast_policy()) as client:
        first = deliver(rows, client, window_key=WINDOW, batch_size=100, max_concurrency=2)
        held = erp.records, erp.remote_versions
        again = deliver(rows, client, window_key=WINDOW, batch_size=100, max_concurrency=2)
        assert (erp.records, erp.remote_versions) == held
    assert first.stats.delivered == again.stats.delivered == 31
    assert {r["version"] for r in erp.records.values()} == {3}
    assert "s4" not in erp.records and erp.deleted_ids == {"s4"}
    keys = {idempotency_key("erp", WINDOW, n) for n in range(1, 32)}
    assert erp.applications == dict.fromkeys(keys, 1)


def test_single_request_path_is_kept_for_erps_without_a_batch_endpoint() -> None:
    erp = ErpSystem()
    with SandboxServer(erp) as server:
        client = ErpClient(server.url, retry=fast_policy(), batch=False)
        with client:
            report = deliver(rows_for(20), client, window_key=WINDOW, max_concurrency=1)
    assert report.stats.delivered == 20
    assert posts(erp) == 20
    assert erp.faults.spec_for(BATCH) is not None


def test_destinations_file_batch_endpoint_and_field_mapping(tmp_path: Path) -> None:
    """The config-built client batches by default (renamed fields inside the items) and
    `batch_endpoint = false` sends one request per change."""
    erp = ErpSystem()
    with SandboxServer(erp) as server:
        text = f"""
[destinations.erp]
base_url = "{server.url}"
[destinations.erp.field_mapping]
category = "product_line"
[destinations.erp_single]
kind = "erp"
base_url = "{server.url}"
batch_endpoint = false
"""
        (tmp_path / "d.toml").write_text(text)
        config = load_destinations(tmp_path / "d.toml", env={})
        with config.destinations["erp"].client(fast_policy()) as client:
            deliver(rows_for(10), client, window_key=WINDOW, max_concurrency=1)
        assert posts(erp) == 1
        assert erp.records["s1"]["product_line"] == "music" and "category" not in erp.records["s1"]
        single = config.destinations["erp_single"]
        assert single.batch_endpoint is False
        with single.client(fast_policy()) as client:
            rows = [change_row(n, f"s{n}", "u", version=2) for n in range(1, 11)]
            deliver(rows, client, window_key=WINDOW, max_concurrency=1)
        assert posts(erp) == 1 + 10
        assert {r["version"] for r in erp.records.values()} == {2}
