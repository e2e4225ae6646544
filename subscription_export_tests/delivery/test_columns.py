"""The destinations file's `table` and `columns`: defaults, and one-line errors naming the
file, the destination and the key when they do not fit the captured table (real SQLite)."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from subscription_export.delivery.columns import ColumnMap, destination_columns
from subscription_export.delivery.config import DestinationConfigError, load_destinations
from subscription_export.delivery.mapping import MappingError, crm_item, erp_request
from subscription_export.source.demo_table import init_demo_source
from subscription_export.source.schema import init_source
from subscription_export_tests.helpers import writer

ACCOUNTS = (
    "CREATE TABLE accounts (account_no INTEGER PRIMARY KEY, customer text, plan text,"
    " monthly_fee TEXT DECIMAL(12, 2), ccy text, state text, rev integer, status text,"
    " opened DATE)"
)
MAPPED = {
    "user_id": "customer",
    "name": "plan",
    "amount": "monthly_fee",
    "currency": "ccy",
    "status": "state",
    "version": "rev",
}


def _load(tmp_path: Path, body: str, kind: str = "erp") -> Any:
    path = tmp_path / "destinations.toml"
    path.write_text(f'[destinations.{kind}]\nbase_url = "http://127.0.0.1:1"\n{body}')
    return load_destinations(path, env={}).destinations[kind]


def _columns_table(mapping: dict[str, str]) -> str:
    return "[destinations.erp.columns]\n" + "".join(f'{k} = "{v}"\n' for k, v in mapping.items())


@pytest.fixture
def accounts_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    engine = writer(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(ACCOUNTS)
    init_source(engine, "accounts")
    return url


def test_the_demo_table_maps_every_field_to_itself(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    init_demo_source(writer(url))
    for kind in ("erp", "crm", "accounting"):
        columns = destination_columns(writer(url), _load(tmp_path, "", kind), ["subscriptions"])
        assert columns.identity and columns.key == "id", kind


def test_a_mapped_row_becomes_the_records_each_kind_sends(
    accounts_url: str, tmp_path: Path
) -> None:
    config = _load(tmp_path, _columns_table(MAPPED))
    columns = destination_columns(writer(accounts_url), config, ["accounts"])
    row = {
        "_lsn": 5,
        "_op": "u",
        "_deleted": False,
        "account_no": 42,
        "customer": "c-1",
        "plan": "Team",
        "monthly_fee": Decimal("9.50"),
        "ccy": "EUR",
        "state": "active",
        "rev": 3,
        "status": "ignored: status comes from state",
        "opened": dt.date(2026, 1, 2),
    }
    fields = columns.to_fields(row)
    assert fields["id"] == "42" and fields["status"] == "active"
    request = erp_request(fields)
    assert (request.path, request.body["amount"], request.body["extra"]) == (
        "/subscriptions/42",
        "9.50",
        {"opened": "2026-01-02"},
    )
    assert crm_item(fields)["record"]["customer_id"] == "c-1"
    back = columns.to_columns({"id": "42", "amount": Decimal("1.00"), "opened": None})
    assert back == {"account_no": 42, "monthly_fee": Decimal("1.00"), "opened": None}


def test_a_uuid_key_is_sent_in_lower_case_and_written_back_as_a_uuid() -> None:
    key = uuid.UUID("6F9619FF-8B86-D011-B42D-00C04FC964FF")
    columns = ColumnMap("t", "k", {"k": "uuid", "v": "integer"}, {"id": "k", "version": "v"})
    assert columns.to_fields({"k": key, "v": 1})["id"] == str(key).lower()
    assert columns.to_columns({"id": str(key)}) == {"k": key}
    with pytest.raises(MappingError, match="'nope' is not a valid uuid key"):
        columns.key_value("nope")


@pytest.mark.parametrize(
    ("body", "kind", "expected"),
    [
        (
            _columns_table({**MAPPED, "amount": "fee"}),
            "erp",
            "destination 'erp': key 'columns.amount' = 'fee': table 'accounts' has no column"
            " 'fee' (columns: account_no, customer",
        ),
        (
            _columns_table({k: v for k, v in MAPPED.items() if k != "version"}),
            "erp",
            "destination 'erp': table 'accounts' has no column for required field 'version';"
            ' map one: columns.version = "COLUMN"',
        ),
        (
            _columns_table({**MAPPED, "version": "plan"}),
            "erp",
            "destination 'erp': key 'columns.version' = 'plan': column 'plan' is text; field"
            " 'version' takes integer",
        ),
        (
            _columns_table({**MAPPED, "id": "customer"}),
            "erp",
            "destination 'erp': key 'columns.id' = 'customer': id is the table's primary key"
            " ('account_no')",
        ),
        (
            'table = "plans"\n' + _columns_table(MAPPED),
            "erp",
            "destination 'erp': key 'table' = 'plans' is not a captured table (captured: accounts)",
        ),
    ],
)
def test_a_mapping_that_does_not_fit_the_table_is_one_line_naming_the_key(
    accounts_url: str, tmp_path: Path, body: str, kind: str, expected: str
) -> None:
    config = _load(tmp_path, body, kind)
    with pytest.raises(DestinationConfigError) as caught:
        destination_columns(writer(accounts_url), config, ["accounts"])
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "destinations.toml"))
    assert expected in message, message


def test_an_unknown_field_is_refused_when_the_file_loads(tmp_path: Path) -> None:
    with pytest.raises(DestinationConfigError) as caught:
        _load(tmp_path, '[destinations.accounting.columns]\nuser_id = "customer"\n', "accounting")
    assert "destination 'accounting': key 'columns.user_id': not a field of kind 'accounting'" in (
        str(caught.value)
    )


def test_a_composite_key_is_refused_for_a_destination(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    engine = writer(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE seats (region text, n integer, amount TEXT DECIMAL(10, 2), ccy text,"
            " state text, PRIMARY KEY (region, n))"
        )
    init_source(engine, "seats")
    config = _load(tmp_path, "", "accounting")
    with pytest.raises(DestinationConfigError) as caught:
        destination_columns(engine, config, ["seats"])
    assert "table 'seats' has a composite key (region, n); a destination needs a single-column" in (
        str(caught.value)
    )
