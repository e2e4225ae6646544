"""The ledger books a subscription's price while its status is billable (`active`,
`past_due`) and nothing while it is `paused` or `cancelled`. A table of the user's own whose
status column holds other values (`ACTIVE`, `trialing`, null) cannot be told billable or not:
taking each as "not billable" booked nothing for every change, all `skipped`, the window
complete - an empty ledger reported as success. Real sandbox accounting server over HTTP."""

from __future__ import annotations

import pytest

from subscription_export.delivery.clients import AccountingClient
from subscription_export.sandbox.server import SandboxServer
from subscription_export.sandbox.systems import AccountingSystem
from subscription_export_tests.delivery.factories import change_row, fast_policy

WINDOW = "00000000000000000001-00000000000000001000"


@pytest.mark.parametrize("status", ["ACTIVE", "trialing", None])
def test_a_status_outside_the_known_ones_is_a_dead_letter_not_skipped(
    status: str | None,
) -> None:
    ledger = AccountingSystem()
    rows = [
        change_row(1, "a", "c", status=status),
        change_row(2, "b", "c", status="active", amount="7.00"),
        change_row(3, "c", "c", status="paused"),
    ]
    with SandboxServer(ledger) as server, AccountingClient(server.url, retry=fast_policy()) as c:
        results = c.send_rows(rows, window_key=WINDOW)
    assert [r.status for r in results] == ["dead_letter", "delivered", "skipped"], results
    assert f"status {status!r}" in (results[0].error or ""), results[0]
    assert [(e["subscription_id"], e["kind"], e["amount"]) for e in ledger.journal] == [
        ("b", "revenue", "7.00")
    ]
