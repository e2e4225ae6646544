"""Each subscription's image just before a window, read from the source change log.

Accounting books price differences, so an update needs the state it changes from. For the
first change of a subscription in a window that state lies before the window; it is taken from
the change log - the after-image of the subscription's latest change with `lsn < window.lo`,
or nothing when that change was a delete - never from mutable sync state, so delivering a
window again (after a crash, a retry, a replay) computes identical journal entries and
therefore identical request bodies under the same idempotency keys.

Values are normalized like the export does (`formats.values.convert`: exact decimals at scale
4, dates, UTC datetimes), so a prior image compares with the window's Parquet rows field by
field. JSON numbers are parsed with `parse_float=Decimal`: PostgreSQL images hold `amount` as a
JSON number, which must not pass through a float. A value that does not convert (its change was
quarantined) is kept raw, and the accounting mapping refuses it as a dead letter instead of
guessing a price.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.columns import BASE_TYPES
from subscription_export.core.datasets import DEFAULT_TABLE
from subscription_export.core.values import BadValue, convert
from subscription_export.delivery.mapping import ChangeRow, is_delete
from subscription_export.state.windows import Window

if TYPE_CHECKING:
    from subscription_export.delivery.columns import ColumnMap

# One statement for SQLite and PostgreSQL: a grouped max per subscription id over the log
# before the window, restricted to the ids of the table changed in the window (keys of two
# captured tables may be equal). CAST(... AS TEXT) returns
# jsonb as text on PostgreSQL (not a dict of floats) and is a no-op on SQLite.
_PRIOR_IMAGES = sa.text(
    """
    SELECT log.subscription_id, log.op, CAST(log.after AS TEXT) AS after
    FROM subscription_change_log AS log
    JOIN (
        SELECT subscription_id, MAX(lsn) AS lsn
        FROM subscription_change_log
        WHERE lsn < :lo AND source_table = :table
          AND subscription_id IN (
              SELECT subscription_id FROM subscription_change_log
              WHERE lsn BETWEEN :lo AND :hi AND source_table = :table
          )
        GROUP BY subscription_id
    ) AS latest ON latest.lsn = log.lsn
    ORDER BY log.subscription_id
    """
)


def parse_image(text: str, types: Mapping[str, str] = BASE_TYPES) -> dict[str, Any]:
    """A change-log JSON image with exact numbers and the export's value types (`types`: the
    table's columns; by default the demo's)."""
    raw = json.loads(text, parse_float=Decimal)
    if not isinstance(raw, dict):
        raise ValueError(f"a change-log image must be a JSON object, got {text[:80]!r}")
    image: dict[str, Any] = {}
    for column, value in raw.items():
        logical = types.get(column)
        if logical is None:
            image[column] = value
            continue
        try:
            image[column] = convert(value, logical)
        except BadValue:
            image[column] = value
    return image


def prior_images(
    source: Engine, window: Window, columns: ColumnMap | None = None
) -> dict[str, Mapping[str, Any] | None]:
    """Subscription id -> its image before `window` (None: deleted before it), as a row of
    the destination's fields when `columns` is given.

    Ids changed in the window with no earlier change are absent: they did not exist before it.
    """
    with source.connect() as conn:
        table = columns.table if columns is not None else DEFAULT_TABLE
        params = {"lo": window.lo, "hi": window.hi, "table": table}
        rows = conn.execute(_PRIOR_IMAGES, params).all()
    images: dict[str, Mapping[str, Any] | None] = {}
    for ident, op, after in rows:
        if op == "d" or after is None:
            images[str(ident)] = None
        elif columns is None:
            images[str(ident)] = parse_image(after)
        else:
            images[str(ident)] = columns.to_fields(parse_image(after, columns.types))
    return images


def mapping_prior_state(
    source: Engine, window: Window, columns: ColumnMap | None = None
) -> dict[str, Mapping[str, Any]]:
    """Prior images as the accounting mapping takes them: a subscription absent or deleted
    before the window has no previous state."""
    images = prior_images(source, window, columns)
    return {ident: image for ident, image in images.items() if image is not None}


def move_past(prior: dict[str, Mapping[str, Any]], rows: Iterable[ChangeRow]) -> None:
    """Advance `prior` over a delivered batch: the next batch's previous images are this
    batch's last ones (a window is delivered in several batches)."""
    for row in rows:
        if is_delete(row):
            prior.pop(row["id"], None)
        else:
            prior[row["id"]] = row
