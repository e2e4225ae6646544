"""Export rows for report tests, in the real export schema (metadata + base columns)."""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from subscription_export.core.columns import BASE_COLUMNS
from subscription_export.formats.manifest import manifest_path, write_manifest
from subscription_export.formats.schema import export_schema

SCHEMA = export_schema(BASE_COLUMNS, 1)
UTC = dt.UTC


def utc(text: str) -> dt.datetime:
    """`2026-11-01T05:30:00` (or with microseconds) as an aware UTC datetime."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def row(
    lsn: int,
    op: str,
    at: dt.datetime,
    sid: str = "s1",
    amount: str | None = "10",
    currency: str | None = "EUR",
    cycle: str | None = "monthly",
    status: str | None = "active",
) -> dict[str, Any]:
    """One export row: the after-image for c/u, the before-image for d."""
    return {
        "_lsn": lsn,
        "_op": op,
        "_changed_at": at,
        "_origin": "app",
        "_deleted": op == "d",
        "_schema_version": 1,
        "id": sid,
        "user_id": "u1",
        "name": f"plan {sid}",
        "category": "software",
        "amount": None if amount is None else Decimal(amount),
        "currency": currency,
        "billing_cycle": cycle,
        "status": status,
        "next_billing_date": dt.date(2027, 1, 31),
        "timezone": "Europe/Berlin",
        "created_at": at,
        "updated_at": at,
        "version": 1,
    }


def table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write_window(folder: Path, rows: list[dict[str, Any]], *, published: bool = True) -> Path:
    """A window file named by its LSN range, as the Parquet IO manager names them, and (unless
    `published` is False: a write that stopped before it) the manifest that vouches for it."""
    lo, hi = rows[0]["_lsn"], rows[-1]["_lsn"]
    path = folder / f"{lo:020d}-{hi:020d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table(rows), path)
    if published:
        data = path.read_bytes()
        recorded = {
            "path": path.relative_to(folder.parent).as_posix(),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        manifest = manifest_path(folder.parent, folder.name, path.stem)
        write_manifest(manifest, {"asset": folder.name, "window": path.stem, "file": recorded})
    return path
