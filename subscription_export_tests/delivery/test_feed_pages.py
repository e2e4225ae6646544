"""What a change feed page may hold: a change whose `op` is neither `upsert` nor `delete` is a
malformed page (the system's reconcile fails, its cursor stays), never read as an upsert.
Real sandbox ERP over HTTP, its feed altered as a system with another vocabulary answers."""

from __future__ import annotations

import pytest

from subscription_export.delivery.clients import ErpClient
from subscription_export.delivery.retry import PermanentDeliveryError
from subscription_export.sandbox.server import SandboxServer
from subscription_export.sandbox.systems import ErpSystem
from subscription_export_tests.delivery.factories import change_row, fast_policy

WINDOW = "00000000000000000001-00000000000000001000"


def test_a_feed_change_with_an_unknown_op_is_a_malformed_page_not_an_upsert() -> None:
    """A feed saying `deleted` (not `delete`) carries the record's last state: read as an
    upsert, the remote deletion would be applied as a write of that state, silently."""
    erp = ErpSystem()
    with SandboxServer(erp) as server, ErpClient(server.url, retry=fast_policy()) as client:
        client.send_rows([change_row(1, "s1", "c")], window_key=WINDOW)
        erp.delete("s1")
        with erp._lock:
            erp._feed[-1]["op"] = "deleted"
        with pytest.raises(PermanentDeliveryError, match="op 'deleted'"):
            client.fetch_changes(after=0)
