"""Pure mappings from change rows to ERP, CRM and accounting payloads (and back)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from subscription_export.delivery.mapping import (
    MappingError,
    crm_item,
    erp_record,
    erp_request,
    journal_entries,
    journal_plan,
    subscription_from_crm,
    subscription_from_erp,
)
from subscription_export_tests.delivery.factories import T0, change_row


def kinds(entries: list[dict]) -> list[tuple[str, str, str]]:
    return [(e["kind"], e["amount"], e["currency"]) for e in entries]


def test_erp_record_is_the_subscription_with_exact_strings() -> None:
    record = erp_record(change_row(7, amount="12.3400", version=3))
    assert record == {
        "id": "sub_1",
        "user_id": "user_sub_1",
        "name": "Premium Music",
        "category": "music",
        "amount": "12.3400",
        "currency": "EUR",
        "billing_cycle": "monthly",
        "status": "active",
        "next_billing_date": "2026-04-01",
        "timezone": "Europe/Berlin",
        "created_at": "2026-03-01T12:00:00Z",
        "updated_at": "2026-03-01T12:00:07Z",
        "version": 3,
    }


def test_erp_request_for_upsert_and_delete() -> None:
    upsert = erp_request(change_row(1, "a/b c"))
    assert (upsert.method, upsert.path) == ("PUT", "/subscriptions/a%2Fb%20c")
    delete = erp_request(change_row(2, "a/b c", "d", version=4))
    assert (delete.method, delete.path, delete.body) == (
        "DELETE",
        "/subscriptions/a%2Fb%20c",
        {"version": 4},
    )


def test_extra_columns_travel_json_ready() -> None:
    row = change_row(1, loyalty_points=12, discount=Decimal("0.15"), trial_end=dt.date(2026, 5, 1))
    assert erp_record(row)["extra"] == {
        "discount": "0.15",
        "loyalty_points": 12,
        "trial_end": "2026-05-01",
    }
    assert crm_item(row)["record"]["custom_fields"]["discount"] == "0.15"


def test_crm_item_uses_crm_field_names() -> None:
    item = crm_item(change_row(1, amount="9.99", version=2))
    assert item["op"] == "upsert" and item["id"] == "sub_1"
    record = item["record"]
    assert (record["customer_id"], record["plan_name"], record["price"]) == (
        "user_sub_1",
        "Premium Music",
        "9.99",
    )
    assert "amount" not in record and "id" not in record
    assert crm_item(change_row(2, op="d", version=2)) == {
        "op": "delete",
        "id": "sub_1",
        "version": 2,
    }


def test_money_as_float_is_refused() -> None:
    row = change_row(1)
    row["amount"] = 9.99
    with pytest.raises(MappingError, match="Decimal"):
        erp_record(row)
    with pytest.raises(MappingError, match="Decimal"):
        journal_entries(row, None)


def test_naive_timestamps_are_refused() -> None:
    row = change_row(1)
    row["updated_at"] = dt.datetime(2026, 1, 1, 10, 0)
    with pytest.raises(MappingError, match="naive"):
        crm_item(row)


def test_timestamps_are_converted_to_utc_z() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    row = change_row(1, updated_at=dt.datetime(2026, 1, 1, 10, 0, tzinfo=plus_two))
    assert erp_record(row)["updated_at"] == "2026-01-01T08:00:00Z"


def test_inverse_mappings_round_trip() -> None:
    row = change_row(3, amount="19.9900", version=5, loyalty_points=3)
    subscription = {k: v for k, v in row.items() if not k.startswith("_")}
    assert subscription_from_erp(erp_record(row)) == subscription
    assert subscription_from_crm("sub_1", crm_item(row)["record"]) == subscription


@pytest.mark.parametrize(
    "record",
    [
        {"id": "x", "amount": 1.5},
        {"id": "x", "amount": "1,5"},
        {"id": "x", "next_billing_date": "tomorrow"},
        {"id": "x", "updated_at": "2026-01-01T10:00:00"},
    ],
)
def test_inverse_mapping_rejects_inexact_or_ambiguous_values(record: dict) -> None:
    with pytest.raises(MappingError):
        subscription_from_erp(record)


# -- accounting ------------------------------------------------------------------------------


def test_create_of_active_subscription_books_revenue() -> None:
    entries = journal_entries(change_row(5, amount="12.34"), None)
    assert entries == [
        {
            "entry_id": "JE-5-0",
            "subscription_id": "sub_1",
            "kind": "revenue",
            "amount": "12.34",
            "currency": "EUR",
            "billing_date": "2026-04-01",
            "lsn": 5,
        }
    ]


def test_create_of_paused_subscription_books_nothing() -> None:
    assert journal_entries(change_row(1, status="paused"), None) == []


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ({"amount": "10.00"}, {"amount": "15.50"}, [("revenue", "5.50", "EUR")]),
        ({"amount": "15.50"}, {"amount": "10.00"}, [("credit", "5.50", "EUR")]),
        ({"amount": "10.00"}, {"status": "cancelled"}, [("credit", "10.00", "EUR")]),
        ({"amount": "10.00"}, {"status": "paused"}, [("credit", "10.00", "EUR")]),
        ({"status": "paused"}, {"amount": "10.00"}, [("revenue", "10.00", "EUR")]),
        ({"amount": "10.00"}, {"amount": "10.00", "status": "past_due"}, []),
        ({"amount": "10.00"}, {"amount": "10.00"}, []),
        (
            {"amount": "10.00"},
            {"amount": "11.00", "currency": "USD"},
            [("credit", "10.00", "EUR"), ("revenue", "11.00", "USD")],
        ),
    ],
)
def test_updates_book_the_price_difference(before: dict, after: dict, expected: list) -> None:
    previous = change_row(1, **before)
    row = change_row(2, "sub_1", "u", version=2, **after)
    assert kinds(journal_entries(row, previous)) == expected


def test_delete_refunds_an_active_subscription_and_not_a_cancelled_one() -> None:
    assert kinds(journal_entries(change_row(9, op="d", amount="7.00"), None)) == [
        ("refund", "7.00", "EUR")
    ]
    assert journal_entries(change_row(9, op="d", status="cancelled"), None) == []


def test_update_without_previous_state_is_an_error_not_a_guess() -> None:
    with pytest.raises(MappingError, match="prior_state"):
        journal_entries(change_row(2, op="u", version=2), None)


def test_billing_date_falls_back_to_change_date() -> None:
    row = change_row(3, next_billing_date=None)
    assert journal_entries(row, None)[0]["billing_date"] == (T0.date().isoformat())


def test_window_plan_chains_images_and_uses_prior_state() -> None:
    rows = [
        change_row(11, "a", "u", amount="20.00", version=2),  # prior: 12.00
        change_row(10, "b", "c", amount="5.00"),
        change_row(12, "b", "u", amount="8.00", version=2),
        change_row(13, "b", "d", amount="8.00", version=2),
        change_row(14, "c", "u", version=2),  # no prior state
    ]
    plan = journal_plan(rows, {"a": change_row(1, "a", amount="12.00")})
    assert kinds(plan[11]) == [("revenue", "8.00", "EUR")]
    assert kinds(plan[10]) == [("revenue", "5.00", "EUR")]
    assert kinds(plan[12]) == [("revenue", "3.00", "EUR")]
    assert kinds(plan[13]) == [("refund", "8.00", "EUR")]
    assert isinstance(plan[14], MappingError)


def test_plan_is_deterministic() -> None:
    rows = [change_row(1, "a"), change_row(2, "a", "u", amount="11.00", version=2)]
    assert journal_plan(rows) == journal_plan(list(reversed(rows)))
