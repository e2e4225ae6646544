"""The ERP answers a DELETE of a record it does not have with 404 `not_found`, which the
client counts as already deleted. Any other 404 - a `base_url` whose path is wrong answers
every request 404 `no_route` - is not a deletion: counted as one, each DELETE of a window was
"delivered" while the ERP still held the record. Real sandbox ERP over HTTP."""

from __future__ import annotations

import pytest

from subscription_export.delivery.clients import ErpClient
from subscription_export.sandbox.server import SandboxServer
from subscription_export.sandbox.systems import ErpSystem
from subscription_export_tests.delivery.factories import change_row, fast_policy

WINDOW = "00000000000000000001-00000000000000001000"


@pytest.mark.parametrize("batch", [False, True])
def test_a_delete_answered_404_no_route_is_a_dead_letter(batch: bool) -> None:
    erp = ErpSystem()
    with SandboxServer(erp) as server:
        with ErpClient(server.url, retry=fast_policy()) as direct:
            direct.send_rows([change_row(1, "s1", "c")], window_key=WINDOW)
        with ErpClient(server.url + "/v2", retry=fast_policy(), batch=batch) as wrong_path:
            (result,) = wrong_path.send_rows([change_row(2, "s1", "d")], window_key=WINDOW)
    assert "s1" in erp.records  # the ERP never deleted it...
    assert result.status == "dead_letter", result  # ...so it is not delivered
    assert "404" in (result.error or "")


def test_a_delete_of_a_record_the_erp_lacks_is_delivered() -> None:
    with SandboxServer(ErpSystem()) as server:
        for batch in (False, True):
            with ErpClient(server.url, retry=fast_policy(), batch=batch) as client:
                (result,) = client.send_rows([change_row(3, "gone", "d")], window_key=WINDOW)
            assert result.status == "delivered", (batch, result)
