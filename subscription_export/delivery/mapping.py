"""Pure mappings between export change rows and each destination's payloads.

A change row has the metadata columns `_lsn`, `_op` (`c|u|d|r`), `_changed_at`, `_origin`,
`_deleted`, `_schema_version` and the subscription columns (after-image; before-image for
deletes), plus any columns added later. Payloads carry money as decimal strings (never floats),
dates as ISO dates and timestamps as ISO-8601 UTC with `Z`. A row that cannot be mapped raises
`MappingError`; the delivery turns it into a dead letter rather than sending something wrong.

ERP receives the subscription as is (extra columns under `extra`); the CRM uses its own field
names (`customer_id`, `plan_name`, `price`; extra columns under `custom_fields`). The inverse
mappings turn records read back from their change feeds into subscription fields.

Accounting rule. The ledger books what each change does to the recognized price of a
subscription. The recognized price of an image is `(currency, amount)` when its status is
billable (`active`, `past_due`) and nothing otherwise (`paused`, `cancelled`, deleted):

* create: the previous image is nothing;
* update: the previous image is the subscription's state before this change (an earlier row of
  the same window, or `prior_state` for its first change in the window); without it the
  row cannot be booked and is a mapping error, never a guess;
* delete: the row (its before-image) is the previous image, the new image is nothing;
* snapshot (`r`, a row that existed before capture): with a previous state (a change or an
  earlier snapshot row) it is booked like an update, so a re-snapshot books nothing new;
  without one it is the subscription's opening balance: one `opening` entry for its
  recognized price, and it becomes the prior state its later updates are booked against.

Then, in one currency, an increase books a `revenue` entry for the difference (create,
upgrade, reactivation) and a decrease a `credit` entry (downgrade, pause, cancellation) or a
`refund` entry when the subscription was deleted. A currency change reverses the old price
(credit/refund) and books the new one (revenue). No price change, no entry. An opening
balance is booked as kind `opening` (not `revenue`: no change earned it). Each entry's
`billing_date` is the image's `next_billing_date` (else the UTC date of `_changed_at`) and its
`entry_id` is `JE-{lsn}-{n}`, so a re-run of a window produces identical entries.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

from subscription_export.core.columns import BASE_TYPES, STATUSES

ChangeRow = Mapping[str, Any]

META_COLUMNS = ("_lsn", "_op", "_changed_at", "_origin", "_deleted", "_schema_version")
BILLABLE_STATUSES = frozenset({"active", "past_due"})
CRM_FIELD_NAMES = {"user_id": "customer_id", "name": "plan_name", "amount": "price"}
_FROM_CRM = {crm: ours for ours, crm in CRM_FIELD_NAMES.items()}
UTC = dt.UTC
_NO_OFFSET = dt.timedelta(0)
_URL_SAFE = re.compile(r"[A-Za-z0-9_.~-]+")  # what `quote(..., safe="")` leaves as it is

# The fields each kind's payload is built from, named as subscription fields (the CRM sends
# user_id as customer_id, ...). The destinations file's `columns` says which source column
# feeds each (`delivery.columns`); without it a field comes from the column of its name.
RECORD_FIELDS = tuple(BASE_TYPES)
FIELDS_OF_KIND: dict[str, tuple[str, ...]] = {
    "erp": RECORD_FIELDS,
    "crm": RECORD_FIELDS,
    "accounting": ("id", "amount", "currency", "status", "next_billing_date"),
}
# Without these a payload is refused by the remote (or, for the ledger, cannot be booked).
_RECORD_REQUIRED = ("id", "user_id", "name", "amount", "currency", "status", "version")
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "erp": _RECORD_REQUIRED,
    "crm": _RECORD_REQUIRED,
    "accounting": ("id", "amount", "currency", "status"),
}


class MappingError(ValueError):
    """A change row that cannot become a valid payload for a destination."""


# -- values ------------------------------------------------------------------------------------


def money(value: Any, column: str = "amount") -> str:
    """An exact decimal string; floats are refused because they already lost exactness."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise MappingError(f"{column} must be a Decimal, got {type(value).__name__} {value!r}")
    number = Decimal(value)
    if not number.is_finite():
        raise MappingError(f"{column}={value!r} is not finite")
    return format(number, "f")


def utc_text(value: Any, column: str) -> str:
    if not isinstance(value, dt.datetime):
        raise MappingError(f"{column} must be a datetime, got {type(value).__name__} {value!r}")
    if value.tzinfo is None:
        raise MappingError(f"{column}={value!r} is naive; change rows carry UTC-aware times")
    if value.utcoffset() != _NO_OFFSET:  # rows read from Parquet are UTC already
        value = value.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z")


def json_value(value: Any, column: str) -> Any:
    """A JSON-ready form of one column value by its Python type."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Decimal):
        return money(value, column)
    if isinstance(value, dt.datetime):
        return utc_text(value, column)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float):
        if column in BASE_TYPES and BASE_TYPES[column] == "decimal":
            return money(value, column)  # raises: money never travels as float
        return value
    raise MappingError(f"{column}: cannot send a {type(value).__name__} value")


def _date_text(value: Any, column: str) -> str:
    if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
        raise MappingError(f"{column} must be a date, got {value!r}")
    return value.isoformat()


# Each base column with the function that makes its value JSON-ready, decided once rather than
# per value (mapping is most of the delivery's client time). Text and integer columns holding
# plain JSON values are taken as they are, without a call.
_BY_KIND = {"decimal": money, "timestamp": utc_text, "date": _date_text}
_PLAIN = frozenset({str, int})
_EXTRA_NAMES: dict[tuple[str, ...], tuple[str, ...]] = {}  # row keys -> extra columns


@functools.cache
def _converters(
    rename: tuple[tuple[str, str], ...] = (),
) -> tuple[tuple[str, str, Callable[[Any, str], Any], bool], ...]:
    """Per base column: its name, its name in the payload, its converter, and whether a plain
    str/int value may skip the converter."""
    names = dict(rename)
    return tuple(
        (column, names.get(column, column), _BY_KIND.get(kind, json_value), kind not in _BY_KIND)
        for column, kind in BASE_TYPES.items()
    )


def _base_record(row: ChangeRow, rename: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The base columns JSON-ready (`None` stays `None`), keys renamed by `rename`."""
    record = {}
    for column, name, convert, plain_ok in _converters(tuple(rename.items()) if rename else ()):
        value = row.get(column)
        if value is not None and not (plain_ok and type(value) in _PLAIN):
            value = convert(value, column)
        record[name] = value
    return record


def extra_columns(row: ChangeRow) -> dict[str, Any]:
    """Columns added after the base schema, JSON-ready, in name order."""
    keys = tuple(row)
    names = _EXTRA_NAMES.get(keys)
    if names is None:  # rows of one file share their keys: sorted once per shape
        names = tuple(sorted(k for k in keys if k not in BASE_TYPES and k not in META_COLUMNS))
        if len(_EXTRA_NAMES) < 64:
            _EXTRA_NAMES[keys] = names
    return {name: json_value(row[name], name) for name in names}


def subscription_id(row: ChangeRow) -> str:
    ident = row.get("id")
    if not isinstance(ident, str) or not ident:
        raise MappingError(f"change row at LSN {row.get('_lsn')} has no subscription id")
    return ident


def is_delete(row: ChangeRow) -> bool:
    return row.get("_op") == "d" or bool(row.get("_deleted"))


def _version(row: ChangeRow) -> int:
    version = row.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise MappingError(f"{subscription_id(row)}: version must be an integer, got {version!r}")
    return version


# -- ERP ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErpRequest:
    method: str  # PUT or DELETE
    path: str
    body: dict[str, Any]


def erp_record(row: ChangeRow) -> dict[str, Any]:
    record = _base_record(row)
    record["id"] = subscription_id(row)
    record["version"] = _version(row)
    extra = extra_columns(row)
    if extra:
        record["extra"] = extra
    return record


def erp_request(row: ChangeRow) -> ErpRequest:
    ident = subscription_id(row)
    path = f"/subscriptions/{ident if _URL_SAFE.fullmatch(ident) else quote(ident, safe='')}"
    if is_delete(row):
        return ErpRequest("DELETE", path, {"version": _version(row)})
    return ErpRequest("PUT", path, erp_record(row))


# -- CRM ---------------------------------------------------------------------------------------


def crm_record(row: ChangeRow) -> dict[str, Any]:
    record = _base_record(row, CRM_FIELD_NAMES)
    del record["id"]
    record["version"] = _version(row)
    extra = extra_columns(row)
    if extra:
        record["custom_fields"] = extra
    return record


def crm_item(row: ChangeRow) -> dict[str, Any]:
    """One `/batch` item (the client adds its `idempotency_key`)."""
    ident = subscription_id(row)
    if is_delete(row):
        return {"op": "delete", "id": ident, "version": _version(row)}
    return {"op": "upsert", "id": ident, "record": crm_record(row)}


# -- accounting --------------------------------------------------------------------------------


def recognized_price(image: Mapping[str, Any] | None) -> tuple[str, Decimal] | None:
    """`(currency, amount)` of a billable image, None for a non-billable or absent one.

    A status that is none of `STATUSES` (a table of one's own: `ACTIVE`, `trialing`, null) is
    a mapping error, not "not billable": that guess booked nothing for every change of such a
    table and reported each as skipped."""
    if image is None:
        return None
    status = image.get("status")
    if status not in STATUSES:
        raise MappingError(
            f"{image.get('id')}: status {status!r} is none of {', '.join(STATUSES)}: the ledger"
            " cannot tell whether it is billable; map a column holding these values"
            " (columns.status) or fix the value"
        )
    if status not in BILLABLE_STATUSES:
        return None
    amount = image.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, Decimal | int):
        raise MappingError(f"{image.get('id')}: amount must be a Decimal, got {amount!r}")
    currency = image.get("currency")
    if not isinstance(currency, str) or not currency:
        raise MappingError(f"{image.get('id')}: a billable subscription needs a currency")
    return currency, Decimal(amount)


def _billing_date(row: ChangeRow) -> str:
    due = row.get("next_billing_date")
    if isinstance(due, dt.date) and not isinstance(due, dt.datetime):
        return due.isoformat()
    changed_at = row.get("_changed_at")
    if isinstance(changed_at, dt.datetime) and changed_at.tzinfo is not None:
        return changed_at.astimezone(UTC).date().isoformat()
    raise MappingError(f"LSN {row.get('_lsn')}: no next_billing_date and no UTC _changed_at")


def journal_entries(row: ChangeRow, previous: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The journal entries one change books (see the module docstring for the rule)."""
    ident = subscription_id(row)
    lsn = row.get("_lsn")
    if isinstance(lsn, bool) or not isinstance(lsn, int):
        raise MappingError(f"{ident}: _lsn must be an integer, got {lsn!r}")
    deleted = is_delete(row)
    if deleted:
        before, after = recognized_price(row), None
    elif row.get("_op") == "c" or (row.get("_op") == "r" and previous is None):
        before, after = None, recognized_price(row)
    elif previous is None:
        raise MappingError(
            f"{ident} at LSN {lsn}: update without the previous state; pass prior_state"
        )
    else:
        before, after = recognized_price(previous), recognized_price(row)

    decrease = "refund" if deleted else "credit"
    increase = "opening" if row.get("_op") == "r" and previous is None else "revenue"
    movements: list[tuple[str, str, Decimal]] = []
    if before and after and before[0] == after[0]:
        delta = after[1] - before[1]
        if delta > 0:
            movements.append((increase, after[0], delta))
        elif delta < 0:
            movements.append((decrease, after[0], -delta))
    else:
        if before:
            movements.append((decrease, *before))
        if after:
            movements.append((increase, *after))

    billing_date = _billing_date(row)
    return [
        {
            "entry_id": f"JE-{lsn}-{n}",
            "subscription_id": ident,
            "kind": kind,
            "amount": money(amount),
            "currency": currency,
            "billing_date": billing_date,
            "lsn": lsn,
        }
        for n, (kind, currency, amount) in enumerate(movements)
        if amount != 0
    ]


def journal_plan(
    rows: Iterable[ChangeRow], prior_state: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[int, list[dict[str, Any]] | MappingError]:
    """Entries for every row of a window by LSN, chaining each subscription's images.

    `prior_state` is each subscription's image just before the window; derive it from the
    change log (not from mutable sync state) so a re-run maps the window identically.
    """
    known: dict[str, Mapping[str, Any] | None] = dict(prior_state or {})
    plan: dict[int, list[dict[str, Any]] | MappingError] = {}
    for row in sorted(rows, key=lambda r: r["_lsn"]):
        ident = row.get("id")
        try:
            plan[row["_lsn"]] = journal_entries(row, known.get(ident) if ident else None)
        except MappingError as exc:
            plan[row["_lsn"]] = exc
        if isinstance(ident, str):
            known[ident] = None if is_delete(row) else row
    return plan


# -- inverse: records read back from a destination's change feed --------------------------------


def _parse(column: str, value: Any) -> Any:
    """A feed value back to its Python type; money must come as a decimal string."""
    kind = BASE_TYPES.get(column)
    if value is None or kind not in ("decimal", "date", "timestamp"):
        return value
    if not isinstance(value, str):
        raise MappingError(f"{column} must be a string, got {type(value).__name__} {value!r}")
    try:
        if kind == "decimal":
            return Decimal(value)
        if kind == "date":
            return dt.date.fromisoformat(value)
        moment = dt.datetime.fromisoformat(value)
    except (InvalidOperation, ValueError) as exc:
        raise MappingError(f"{column}={value!r}: {exc}") from None
    if moment.tzinfo is None:
        raise MappingError(f"{column}={value!r} has no UTC offset")
    return moment.astimezone(UTC)


def subscription_from_erp(record: Mapping[str, Any]) -> dict[str, Any]:
    """Subscription fields (Python types) from an ERP record; extra columns flattened back."""
    fields = {k: _parse(k, v) for k, v in record.items() if k in BASE_TYPES}
    fields.update(record.get("extra") or {})
    return fields


def subscription_from_crm(ident: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """Subscription fields (Python types) from a CRM record."""
    fields: dict[str, Any] = {"id": ident}
    for name, value in record.items():
        column = _FROM_CRM.get(name, name)
        if column in BASE_TYPES and column != "id":
            fields[column] = _parse(column, value)
    fields.update(record.get("custom_fields") or {})
    return fields
