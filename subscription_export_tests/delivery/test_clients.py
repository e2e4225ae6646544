"""Delivery clients against mocked HTTP (`responses`); sleeps go to a fake clock."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
import requests
import responses

from subscription_export.delivery.clients import (
    AccountingClient,
    CrmClient,
    ErpClient,
    batch_idempotency_key,
    idempotency_key,
)
from subscription_export_tests.delivery.factories import (
    FakeClock,
    TopOfRange,
    change_row,
    fake_policy,
)

ERP = "http://erp.test"
CRM = "http://crm.test"
ACC = "http://accounting.test"
WINDOW = "00000000000000000001-00000000000000000100"


def SingleErp(base_url: str, **kwargs: Any) -> ErpClient:
    """The ERP client's one-request-per-change path (ERPs without `$batch`)."""
    return ErpClient(base_url, batch=False, **kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mocked() -> responses.RequestsMock:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def sent_json(call: Any) -> Any:
    return json.loads(call.request.body)


def batch_answer(
    decide: Callable[[dict[str, Any]], tuple[str, int, str | None]],
    field: str = "items",
    ident: str = "id",
) -> Callable[[requests.PreparedRequest], tuple[int, dict, str]]:
    """A callback answering each batch item with `decide(item) -> (status, code, error)`."""

    def callback(request: requests.PreparedRequest) -> tuple[int, dict, str]:
        results = []
        for item in json.loads(request.body)[field]:
            status, code, error = decide(item)
            result = {ident: item[ident], "idempotency_key": item["idempotency_key"]}
            results.append({**result, "status": status, "code": code, "error": error})
        return 200, {}, json.dumps({"results": results})

    return callback


# -- keys ------------------------------------------------------------------------------------


def test_keys_are_deterministic() -> None:
    assert idempotency_key("erp", WINDOW, 42) == idempotency_key("erp", WINDOW, 42)
    assert idempotency_key("erp", WINDOW, 42) != idempotency_key("crm", WINDOW, 42)
    assert batch_idempotency_key(["a", "b"]) == batch_idempotency_key(["a", "b"])
    assert batch_idempotency_key(["a", "b"]) != batch_idempotency_key(["a"])


# -- ERP ---------------------------------------------------------------------------------------


def test_erp_success_puts_and_deletes_with_keys(mocked, clock) -> None:
    mocked.put(f"{ERP}/subscriptions/sub_1", status=201, json={"id": "sub_1"})
    mocked.delete(f"{ERP}/subscriptions/sub_1", status=200, json={"deleted": True})
    client = SingleErp(ERP, retry=fake_policy(clock))

    results = client.send_rows([change_row(1), change_row(2, op="d")], window_key=WINDOW)

    assert [(r.lsn, r.status, r.attempts) for r in results] == [
        (1, "delivered", 1),
        (2, "delivered", 1),
    ]
    put, delete = mocked.calls
    assert put.request.headers["Idempotency-Key"] == f"erp:{WINDOW}:1"
    assert sent_json(put)["amount"] == "10.00"
    assert delete.request.headers["Idempotency-Key"] == f"erp:{WINDOW}:2"
    assert sent_json(delete) == {"version": 1}


def test_erp_429_waits_retry_after(mocked, clock) -> None:
    url = f"{ERP}/subscriptions/sub_1"
    mocked.put(url, status=429, headers={"Retry-After": "3"}, json={"error": "rate_limited"})
    mocked.put(url, status=200, json={})
    results = SingleErp(ERP, retry=fake_policy(clock)).send_rows([change_row(1)], window_key=WINDOW)
    assert (results[0].status, results[0].attempts) == ("delivered", 2)
    assert clock.sleeps == [3.0]
    keys = {call.request.headers["Idempotency-Key"] for call in mocked.calls}
    assert keys == {f"erp:{WINDOW}:1"}  # the retry is the same logical operation


def test_erp_503_is_retried_within_the_budget_then_dead_lettered(mocked, clock) -> None:
    mocked.put(f"{ERP}/subscriptions/sub_1", status=503, json={"error": "unavailable"})
    policy = fake_policy(clock, max_attempts=50, budget_s=5.0, rng=TopOfRange())
    [result] = SingleErp(ERP, retry=policy).send_rows([change_row(1)], window_key=WINDOW)
    assert result.status == "dead_letter"
    assert "HTTP 503" in (result.error or "")
    assert clock.sleeps == [0.5, 1.0, 2.0]  # a 4 s sleep would end past the 5 s budget
    assert result.attempts == len(mocked.calls) == 4


def test_erp_422_is_dead_lettered_without_retry(mocked, clock) -> None:
    mocked.put(f"{ERP}/subscriptions/sub_1", status=422, json={"error": "invalid_field"})
    [result] = SingleErp(ERP, retry=fake_policy(clock)).send_rows(
        [change_row(1)], window_key=WINDOW
    )
    assert (result.status, result.attempts) == ("dead_letter", 1)
    assert "invalid_field" in (result.error or "")
    assert len(mocked.calls) == 1 and clock.sleeps == []


def test_erp_404_on_delete_means_already_deleted(mocked, clock) -> None:
    mocked.delete(f"{ERP}/subscriptions/sub_1", status=404, json={"error": "not_found"})
    client = SingleErp(ERP, retry=fake_policy(clock))
    [result] = client.send_rows([change_row(1, op="d")], window_key=WINDOW)
    assert (result.status, result.attempts) == ("delivered", 1)


def test_erp_404_on_put_is_permanent(mocked, clock) -> None:
    mocked.put(f"{ERP}/subscriptions/sub_1", status=404, json={"error": "no_route"})
    [result] = SingleErp(ERP, retry=fake_policy(clock)).send_rows(
        [change_row(1)], window_key=WINDOW
    )
    assert (result.status, result.attempts) == ("dead_letter", 1)


@pytest.mark.parametrize("failure", [requests.ConnectionError("reset"), requests.ReadTimeout("t")])
def test_erp_transport_failures_are_retried(mocked, clock, failure: Exception) -> None:
    url = f"{ERP}/subscriptions/sub_1"
    mocked.put(url, body=failure)
    mocked.put(url, status=200, json={})
    [result] = SingleErp(ERP, retry=fake_policy(clock)).send_rows(
        [change_row(1)], window_key=WINDOW
    )
    assert (result.status, result.attempts) == ("delivered", 2)
    assert len(clock.sleeps) == 1 and 0.0 <= clock.sleeps[0] <= 0.5


def test_echoes_are_skipped_and_unmappable_rows_dead_lettered_without_requests(
    mocked, clock
) -> None:
    bad = change_row(2, "sub_2")
    bad["amount"] = 1.5
    rows = [change_row(1, origin="erp"), bad]
    results = SingleErp(ERP, retry=fake_policy(clock)).send_rows(rows, window_key=WINDOW)
    assert [(r.status, r.attempts) for r in results] == [("skipped", 0), ("dead_letter", 0)]
    assert "amount" in (results[1].error or "")
    assert len(mocked.calls) == 0


# -- CRM ---------------------------------------------------------------------------------------


def test_crm_partial_failure_resends_only_failed_items(mocked, clock) -> None:
    fails_once = {f"crm:{WINDOW}:2"}

    def decide(item: dict) -> tuple[str, int, str | None]:
        if item["idempotency_key"] in fails_once:
            fails_once.discard(item["idempotency_key"])
            return "error", 500, "injected_failure"
        if item["id"] == "c":
            return "error", 422, "invalid_field"
        return "ok", 200, None

    mocked.add_callback(responses.POST, f"{CRM}/batch", callback=batch_answer(decide))
    rows = [change_row(1, "a"), change_row(2, "b"), change_row(3, "c")]
    results = CrmClient(CRM, retry=fake_policy(clock)).send_rows(rows, window_key=WINDOW)

    assert [(r.status, r.attempts) for r in results] == [
        ("delivered", 1),
        ("delivered", 2),
        ("dead_letter", 1),
    ]
    assert "422" in (results[2].error or "")
    first, second = mocked.calls
    assert [i["id"] for i in sent_json(first)["items"]] == ["a", "b", "c"]
    assert [i["id"] for i in sent_json(second)["items"]] == ["b"]
    assert sent_json(second)["items"][0]["idempotency_key"] == f"crm:{WINDOW}:2"
    all_keys = [f"crm:{WINDOW}:{n}" for n in (1, 2, 3)]
    assert first.request.headers["Idempotency-Key"] == batch_idempotency_key(all_keys)
    assert second.request.headers["Idempotency-Key"] == batch_idempotency_key(all_keys[1:2])
    assert len(clock.sleeps) == 1


def test_crm_items_failing_every_time_become_dead_letters_after_max_attempts(mocked, clock) -> None:
    def decide(item: dict) -> tuple[str, int, str | None]:
        return ("error", 503, "busy") if item["id"] == "b" else ("ok", 200, None)

    mocked.add_callback(responses.POST, f"{CRM}/batch", callback=batch_answer(decide))
    rows = [change_row(1, "a"), change_row(2, "b")]
    policy = fake_policy(clock, max_attempts=3)
    results = CrmClient(CRM, retry=policy).send_rows(rows, window_key=WINDOW)
    assert [(r.status, r.attempts) for r in results] == [("delivered", 1), ("dead_letter", 3)]
    assert "item HTTP 503 busy" in (results[1].error or "")


def test_crm_in_flight_conflict_is_retried_with_the_same_batch_key(mocked, clock) -> None:
    in_flight = {"error": "request_in_progress"}
    mocked.post(f"{CRM}/batch", status=409, json=in_flight, headers={"Retry-After": "1"})
    mocked.add_callback(
        responses.POST, f"{CRM}/batch", callback=batch_answer(lambda item: ("ok", 200, None))
    )
    [result] = CrmClient(CRM, retry=fake_policy(clock)).send_rows(
        [change_row(1)], window_key=WINDOW
    )
    assert (result.status, result.attempts) == ("delivered", 2)
    assert clock.sleeps == [1.0]
    first, second = mocked.calls
    assert first.request.headers["Idempotency-Key"] == second.request.headers["Idempotency-Key"]
    assert first.request.body == second.request.body


def test_crm_malformed_answer_dead_letters_the_batch(mocked, clock) -> None:
    mocked.post(f"{CRM}/batch", status=200, json={"results": []})
    results = CrmClient(CRM, retry=fake_policy(clock)).send_rows(
        [change_row(1, "a"), change_row(2, "b")], window_key=WINDOW
    )
    assert [r.status for r in results] == ["dead_letter", "dead_letter"]
    assert "0 results for 2 items" in (results[0].error or "")


def test_crm_delete_item(mocked, clock) -> None:
    mocked.add_callback(
        responses.POST, f"{CRM}/batch", callback=batch_answer(lambda item: ("ok", 200, None))
    )
    CrmClient(CRM, retry=fake_policy(clock)).send_rows(
        [change_row(4, op="d", version=3)], window_key=WINDOW
    )
    assert sent_json(mocked.calls[0])["items"] == [
        {"op": "delete", "id": "sub_1", "version": 3, "idempotency_key": f"crm:{WINDOW}:4"}
    ]


def test_crm_fetch_changes_parses_the_feed_and_retries(mocked, clock) -> None:
    change = {
        "cursor": 3,
        "id": "sub_1",
        "op": "upsert",
        "record": {"price": "9.00"},
        "remote_version": 4,
        "updated_at": "2026-03-01T10:00:00Z",
    }
    mocked.get(f"{CRM}/changes", status=503)
    mocked.get(f"{CRM}/changes", json={"changes": [change], "next_cursor": 3})
    page = CrmClient(CRM, retry=fake_policy(clock)).fetch_changes(after=2, limit=10)
    assert page.next_cursor == 3
    [remote] = page.changes
    assert (remote.cursor, remote.id, remote.op, remote.remote_version) == (3, "sub_1", "upsert", 4)
    assert remote.updated_at == dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC)
    assert mocked.calls[-1].request.url == f"{CRM}/changes?after=2&limit=10"


# -- accounting --------------------------------------------------------------------------------


def test_accounting_posts_entries_with_per_entry_keys(mocked, clock) -> None:
    mocked.add_callback(
        responses.POST,
        f"{ACC}/journal/batch",
        callback=batch_answer(lambda e: ("ok", 200, None), "entries", "entry_id"),
    )
    rows = [
        change_row(1, "a", amount="10.00"),
        change_row(2, "a", "u", amount="12.00", currency="USD", version=2),
        change_row(3, "a", "u", amount="12.00", currency="USD", version=3, name="renamed"),
    ]
    results = AccountingClient(ACC, retry=fake_policy(clock)).send_rows(rows, window_key=WINDOW)
    assert [r.status for r in results] == ["delivered", "delivered", "skipped"]
    entries = sent_json(mocked.calls[0])["entries"]
    assert [(e["entry_id"], e["kind"], e["amount"], e["currency"]) for e in entries] == [
        ("JE-1-0", "revenue", "10.00", "EUR"),
        ("JE-2-0", "credit", "10.00", "EUR"),
        ("JE-2-1", "revenue", "12.00", "USD"),
    ]
    assert [e["idempotency_key"] for e in entries] == [
        f"accounting:{WINDOW}:1.0",
        f"accounting:{WINDOW}:2.0",
        f"accounting:{WINDOW}:2.1",
    ]


def test_accounting_row_is_dead_letter_if_any_of_its_entries_is_refused(mocked, clock) -> None:
    def decide(entry: dict) -> tuple[str, int, str | None]:
        if entry["entry_id"] == "JE-2-1":
            return "error", 409, "duplicate_entry"
        return "ok", 200, None

    mocked.add_callback(
        responses.POST, f"{ACC}/journal/batch", callback=batch_answer(decide, "entries", "entry_id")
    )
    rows = [change_row(1, "a"), change_row(2, "a", "u", currency="USD", version=2)]
    results = AccountingClient(ACC, retry=fake_policy(clock)).send_rows(rows, window_key=WINDOW)
    assert [(r.status, r.attempts) for r in results] == [("delivered", 1), ("dead_letter", 1)]
    assert "duplicate_entry" in (results[1].error or "")


def test_accounting_update_needs_prior_state(mocked, clock) -> None:
    mocked.add_callback(
        responses.POST,
        f"{ACC}/journal/batch",
        callback=batch_answer(lambda e: ("ok", 200, None), "entries", "entry_id"),
    )
    client = AccountingClient(ACC, retry=fake_policy(clock))
    update = change_row(5, "a", "u", amount="15.00", version=2)
    [without] = client.send_rows([update], window_key=WINDOW)
    assert without.status == "dead_letter" and "prior_state" in (without.error or "")
    assert len(mocked.calls) == 0
    prior = {"a": change_row(1, "a", amount="10.00")}
    [with_prior] = client.send_rows([update], window_key=WINDOW, prior_state=prior)
    assert with_prior.status == "delivered"
    assert sent_json(mocked.calls[0])["entries"][0]["amount"] == "5.00"
