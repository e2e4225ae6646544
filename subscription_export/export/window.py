"""One CDC window as a stream of Arrow record batches, with bad rows set aside (quarantine).

Each batch is converted in Arrow first (fast path: C++ JSON parsing and safe casts). If any
value in the batch does not convert cleanly, the batch is converted row by row in Python
(slow path) with the same rules, so that the offending rows are quarantined with their LSN,
field and reason. Both paths give the same values, so file bytes never depend on the path.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.columns import SourceColumn
from subscription_export.core.domains import DOMAINS, check_domain
from subscription_export.core.errors import RangeError, SchemaMissingError
from subscription_export.core.values import BadValue, convert, to_utc
from subscription_export.formats.contract import DatasetPlan, VersionMapping
from subscription_export.formats.schema import UTC_TIMESTAMP, export_schema
from subscription_export.source.reader import (
    LogRow,
    census,
    iter_log_tables,
    log_rows,
)
from subscription_export.source.schema import capture_schemas
from subscription_export.state.windows import window_key

_JSON_BLOCK = 8 << 20
# Arrow's JSON reader reads some numbers with a negative exponent (5e-324,
# 2.82570458292870072598653689433800598e-8: more than 38 digits once scaled) into a decimal as 0
# instead of failing on the lost digits (a 200k-case fuzz: every miss was 0, and none remained
# with this pattern). PostgreSQL never writes exponents.
_NEGATIVE_EXPONENT = r"[0-9][eE]-"
# Column name → its allowed values, as Arrow arrays for `is_in`.
_DOMAIN_ARRAYS = {name: pa.array(sorted(d.values), pa.string()) for name, d in DOMAINS.items()}
# What Arrow's JSON reader should expect per logical type; text forms are cast afterwards.
_JSON_READ_TYPES: dict[str, pa.DataType] = {
    "integer": pa.int64(),
    "float": pa.float64(),
    "boolean": pa.bool_(),
}


@dataclass(frozen=True)
class QuarantinedRow:
    lsn: int
    field: str | None
    reason: str
    raw: str


@dataclass
class WindowStream:
    """A lazily read window. Iterate `batches()` once; counts fill in as it is consumed."""

    lo: int
    hi: int
    schema: pa.Schema
    plan: DatasetPlan
    _tables: Iterator[pa.Table]
    rows_by_op: Counter[str] = field(default_factory=Counter)
    quarantined: list[QuarantinedRow] = field(default_factory=list)
    dropped_values: Counter[str] = field(default_factory=Counter)  # discard_value, per column
    # LSN → (field, reason): changes quarantined before and not released by `quarantine
    # replay`; they stay out of the files as they were, so re-exporting a window never lets a
    # change in silently (a rerun `init` or a fix would otherwise change its files unnoticed).
    held: dict[int, tuple[str | None, str]] = field(default_factory=dict)
    # The table's changes in [lo, hi] as counted when the window was planned (None: not
    # counted); the export's coverage check compares the file with it.
    source_changes: int | None = None

    @property
    def columns(self) -> tuple[SourceColumn, ...]:
        return self.plan.columns

    @property
    def key(self) -> str:
        return window_key(self.lo, self.hi)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The window's batches in LSN order; the counts are complete once it has ended.

        Converted in the caller's thread: a converter thread of its own (two batches ahead of
        the writer) cost 0.5-1 s more exporter CPU per 1M changes in GIL hand-offs, on two
        cores the server needs as well (docs/architecture.md, issue 15).
        """
        try:
            for table in self._tables:
                batch = self._convert_fast(table)
                if batch is None:
                    batch = self._convert_slow(log_rows(table))
                else:
                    self.rows_by_op.update(_counts(table.column("op")))
                if batch.num_rows:
                    yield batch
        finally:  # a caller that stops early stops the reader now, not when collected
            close = getattr(self._tables, "close", None)
            if close is not None:
                close()

    def _convert_fast(self, log: pa.Table) -> pa.RecordBatch | None:
        """All images parsed by Arrow; None if the batch needs the row-by-row path (mixed
        schema versions, discarded rows or dropped values, or any value that does not
        convert cleanly)."""
        versions = pc.unique(log.column("schema_version")).to_pylist()
        if len(versions) != 1 or any(_row_path_only(c.type) for c in self.columns):
            return None
        if self.held and pc.any(pc.is_in(log.column("lsn"), pa.array(list(self.held)))).as_py():
            return None
        mapping = self.plan.by_version.get(versions[0])
        if mapping is None or mapping.discard_reason or mapping.dropped_values:
            return None
        images = log.column("image").combine_chunks()
        if images.null_count or log.column("unreadable").null_count != log.num_rows:
            return None
        json_schema = pa.schema(
            list(_json_read_types(mapping.sources, self.columns, self.schema).items())
        )
        try:
            table = pajson.read_json(
                pa.BufferReader(_lines(images)),
                read_options=pajson.ReadOptions(block_size=_JSON_BLOCK, use_threads=False),
                # A key outside the capture schema (PostgreSQL captures whole rows) sends the
                # batch to the row path, which quarantines it instead of dropping the value.
                parse_options=pajson.ParseOptions(
                    explicit_schema=_with_captured(json_schema, mapping.captured),
                    unexpected_field_behavior="error",
                ),
            )
            if table.num_rows != log.num_rows:
                return None
            ops = log.column("op").combine_chunks()
            meta = [
                log.column("lsn").combine_chunks(),
                ops,
                log.column("changed_at").combine_chunks().cast(UTC_TIMESTAMP),
                log.column("origin").combine_chunks(),
                pc.equal(ops, "d"),
                log.column("schema_version").combine_chunks(),
            ]
            if any(m.null_count for m in meta):
                return None
            data_fields = list(self.schema)[len(meta) :]
            values = [
                pa.nulls(log.num_rows, f.type)
                if src is None
                else _cast_column(table.column(src).combine_chunks(), f.type)
                for src, f in zip(mapping.sources, data_fields, strict=True)
            ]
            if not _clean_text(self.schema, values, len(meta)) or _zero_maybe_misread(
                images, values
            ):
                return None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return None
        return pa.RecordBatch.from_arrays(meta + values, schema=self.schema)

    def _convert_slow(self, rows: list[LogRow]) -> pa.RecordBatch:
        columns: list[list[object]] = [[] for _ in self.schema]
        for row in rows:
            converted = self._convert_row(row)
            if converted is None:
                continue
            for column, value in zip(columns, converted, strict=True):
                column.append(value)
            self.rows_by_op[row.op] += 1
        arrays = [_arrow_array(c, f.type) for c, f in zip(columns, self.schema, strict=True)]
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _convert_row(self, row: LogRow) -> list[object] | None:
        parsed = self._image_of(row)
        if parsed is None:
            return None
        image, mapping = parsed
        for dropped in mapping.dropped_values:
            if image.get(dropped) is not None:
                self.dropped_values[dropped] += 1
        name = "_changed_at"
        try:
            values: list[object] = [
                row.lsn,
                row.op,
                to_utc(row.changed_at),
                row.origin,
                row.op == "d",
                row.schema_version,
            ]
            for column, source in zip(self.columns, mapping.sources, strict=True):
                name = column.name
                value = None if source is None else convert(image.get(source), column.type)
                check_domain(name, value)
                values.append(value)
        except BadValue as exc:
            self._quarantine(row.lsn, name, str(exc), row.image)
            return None
        return values

    def _image_of(self, row: LogRow) -> tuple[dict[str, Any], VersionMapping] | None:
        """The row's image and how its capture version maps to the dataset, or None once the
        whole row is quarantined (unreadable, no image, unknown or discarded version...)."""
        raw = row.image
        if row.lsn in self.held:
            self._quarantine(row.lsn, *self.held[row.lsn], raw)
            return None
        if row.unreadable:
            self._quarantine(row.lsn, row.unreadable_field, row.unreadable, raw)
            return None
        try:
            image = json.loads(raw, parse_float=Decimal) if raw else None
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            self._quarantine(row.lsn, None, f"invalid JSON image: {exc}", raw)
            return None
        if not isinstance(image, dict):
            self._quarantine(row.lsn, None, "the change has no row image", raw)
            return None
        mapping = self.plan.by_version.get(row.schema_version)
        if mapping is None:
            self._quarantine(row.lsn, "_schema_version", "unknown capture schema version", raw)
            return None
        if mapping.discard_reason:
            self._quarantine(row.lsn, mapping.discard_field, mapping.discard_reason, raw)
            return None
        # PostgreSQL captures whole rows: a column added but not yet `init`-ed shows up as an
        # extra key. Null carries nothing; a value must not vanish, so it is quarantined.
        unknown = sorted(k for k in set(image) - mapping.captured if image[k] is not None)
        carried = frozenset(k for k, v in image.items() if v is not None)
        adopted = self.plan.adopting(row.schema_version, carried) if unknown else None
        if adopted is not None:
            return image, adopted
        if unknown:
            self._quarantine(
                row.lsn,
                unknown[0],
                f"column(s) {', '.join(unknown)} not in capture schema version"
                f" {row.schema_version}: run `subscription-export init` after ALTER TABLE",
                raw,
            )
            return None
        return image, mapping

    def _quarantine(self, lsn: int, field: str | None, reason: str, raw: str | None) -> None:
        # A literal NUL (SQLite keeps one in a broken image) cannot be stored in PostgreSQL text.
        kept = (raw or "").replace("\x00", "\\u0000")
        self.quarantined.append(QuarantinedRow(lsn, field, reason, kept))


def _row_path_only(logical: str) -> bool:
    """Types whose text form Arrow would pass through unconverted (a uuid not lower-cased, JSON
    not canonical, `\\x` hex not decoded) or cannot cast: converted row by row."""
    return logical in ("uuid", "json", "binary", "time") or logical.startswith("list<")


def _json_read_types(
    sources: tuple[str | None, ...], columns: tuple[SourceColumn, ...], schema: pa.Schema
) -> dict[str, pa.DataType]:
    """The type Arrow's JSON reader should give each image key.

    Decimals are read with the exported scale: PostgreSQL's `to_jsonb` writes numeric as a JSON
    number, SQLite as text, and Arrow reads both exactly (failing on lost scale, which sends the
    batch to the row path). They are read at the widest precision because the reader does not
    check precision (10**14 would pass as decimal(18, 4)); the cast to the exported type does.
    Other text forms are read as strings and cast.
    """
    data_fields = list(schema)[len(schema) - len(columns) :]
    types: dict[str, pa.DataType] = {}
    for src, column, exported in zip(sources, columns, data_fields, strict=True):
        if src is None:
            continue
        wanted = (
            pa.decimal128(38, exported.type.scale)
            if pa.types.is_decimal(exported.type)
            else _JSON_READ_TYPES.get(column.type, pa.string())
        )
        # Two dataset columns from one key (a type change under `evolve`) read it as text.
        types[src] = wanted if types.get(src, wanted) == wanted else pa.string()
    return types


def _zero_maybe_misread(images: pa.Array, values: list[pa.Array]) -> bool:
    """A zero decimal in a row whose image holds a negative exponent: maybe Arrow's misread
    (see `_NEGATIVE_EXPONENT`), so the row path decides. Zeros are rare, so only their rows'
    images are scanned (the whole batch's were: ~0.1 s per 1M changes of the bench)."""
    zero: pa.Array | None = None
    for v in values:
        if pa.types.is_decimal(v.type):
            here = pc.equal(v, pa.scalar(Decimal(0), v.type))
            zero = here if zero is None else pc.or_kleene(zero, here)
    if zero is None or not pc.any(zero).as_py():
        return False
    return bool(pc.any(pc.match_substring_regex(images.filter(zero), _NEGATIVE_EXPONENT)).as_py())


def _clean_text(schema: pa.Schema, values: list[pa.Array], offset: int) -> bool:
    """No text value holds a NUL, and named columns (currency, time zone) are in their domain;
    otherwise the row path says which row and why."""
    for exported, column in zip(list(schema)[offset:], values, strict=True):
        if not pa.types.is_string(exported.type):
            continue
        if pc.any(pc.match_substring(column, "\x00")).as_py():
            return False
        domain = _DOMAIN_ARRAYS.get(exported.name)
        if domain is not None:
            inside = pc.is_in(column.drop_null(), value_set=domain)
            if pc.all(inside).as_py() is False:
                return False
    return True


def _with_captured(schema: pa.Schema, captured: frozenset[str]) -> pa.Schema:
    """Captured keys the dataset does not use are still expected (read as JSON, then unused)."""
    extra = sorted(captured - set(schema.names))
    return pa.schema(list(schema) + [pa.field(name, pa.string()) for name in extra])


def _cast_column(column: pa.Array, arrow_type: pa.DataType) -> pa.Array:
    if pa.types.is_floating(column.type) and pc.any(pc.invert(pc.is_finite(column))).as_py():
        raise pa.ArrowInvalid("non-finite number")
    if column.type == arrow_type:
        return column
    return column.cast(arrow_type)  # a safe cast: raises on data loss or unparseable text


def _lines(images: pa.Array) -> pa.Buffer:
    """NDJSON bytes: each image followed by a newline, straight from Arrow's buffers."""
    lines = pc.binary_join_element_wise(images, "", "\n")
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
    begin, stop = offsets[lines.offset], offsets[lines.offset + len(lines)]
    return lines.buffers()[2].slice(int(begin), int(stop - begin))


def _counts(ops: pa.ChunkedArray) -> dict[str, int]:
    return {v["values"]: v["counts"] for v in pc.value_counts(ops).to_pylist()}


def _arrow_array(values: list[object], arrow_type: pa.DataType) -> pa.Array:
    if pa.types.is_decimal(arrow_type):
        # Building from Decimal objects is ~70x slower than parsing their exact text in Arrow.
        return pa.array([None if v is None else str(v) for v in values], pa.string()).cast(
            arrow_type
        )
    return pa.array(values, type=arrow_type)


def check_range(engine: Engine, lo: int, hi: int, count: int) -> None:
    """Every LSN of [lo, hi] is in the change log (`count`: how many of them are), or a clear
    error."""
    if count != hi - lo + 1:
        with engine.connect() as conn:
            top = conn.execute(
                sa.text("SELECT COALESCE(MAX(lsn), 0) FROM subscription_change_log")
            ).scalar_one()
        raise RangeError(
            f"LSNs {lo}..{hi} are not all in the change log (found {count}, last sequenced LSN"
            f" is {top}); export a range at or below {top}"
        )


def capture_columns(
    engine: Engine, lo: int, hi: int, table: str
) -> tuple[dict[int, tuple[SourceColumn, ...]], dict[int, int], int]:
    """(`table`'s capture schema versions → columns, its versions in [lo, hi] → their first
    LSN, its changes in [lo, hi]); the second is empty when the table has no change in
    [lo, hi]. Raises `RangeError` first when [lo, hi] is not wholly in the change log."""
    count, present, changes = census(engine, lo, hi, table)
    check_range(engine, lo, hi, count)
    with engine.connect() as conn:
        known = {v: s.columns for v, s in capture_schemas(conn, table).items()}
    if not known:
        raise SchemaMissingError(
            f"table {table!r} has no capture schema in the source; run `subscription-export init`"
        )
    missing = sorted(set(present) - set(known))
    if missing:
        raise SchemaMissingError(
            f"capture schema versions {missing} of table {table!r} are not registered in the"
            " source; run `subscription-export init`"
        )
    return known, present, changes


def open_window(
    engine: Engine,
    lo: int,
    hi: int,
    batch_size: int,
    plan: DatasetPlan,
    dataset_version: int,
    table: str | None = None,
) -> WindowStream:
    """Stream [lo, hi] (checked with `capture_columns` first) shaped by `plan`; `table`: that
    captured table's changes only (None: every change)."""
    schema = export_schema(plan.columns, dataset_version, window_key(lo, hi))
    tables = iter_log_tables(engine, lo, hi, batch_size, table)
    return WindowStream(lo, hi, schema, plan, tables)
