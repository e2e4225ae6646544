"""What a snapshot reads (`snapshot.snapshot_from`), behind one interface with two sources:
`RowReads` asks the databases per record (a manual resolution, one change), `BatchReads` answers
from what it loaded for a whole feed batch in a few set-based queries (issue 15) and asks per
record only where that is not enough (a change log deeper than `source_batch.HISTORY_DEPTH`).
Both give the same answers: they share the code that reads the rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.engine import Connection

from subscription_export.reconcile.source_batch import (
    History,
    locals_of,
    lock_subscriptions,
    read_histories,
    read_rows,
)
from subscription_export.reconcile.source_side import (
    LogImage,
    Types,
    changed_after,
    columns_of,
    field_times,
    fields_set_by,
    image,
    image_by_version,
    json_image,
    read_local,
    version_column,
)
from subscription_export.reconcile.strategies import SOURCE
from subscription_export.reconcile.sync_bases import (
    Provenance,
    SyncBase,
    get_base,
    get_bases,
    get_provenance,
    get_provenances,
)
from subscription_export.reconcile.sync_state import Conflict, open_conflict, open_conflicts
from subscription_export.reconcile.three_way import LocalState, Origin

FIELD_TIMES_DEPTH = 1000  # rows `source_side.field_times` looks back


class Reads(Protocol):
    """The reads of one system's snapshots (`ident`: a subscription id)."""

    system: str
    types: Types

    def local(self, ident: str) -> LocalState: ...
    def base(self, ident: str) -> SyncBase | None: ...
    def provenance(self, ident: str) -> dict[str, Provenance]: ...
    def open_conflict(self, ident: str) -> Conflict | None: ...
    def image_by_version(self, ident: str, version: int) -> LogImage | None: ...
    def changed_after(self, ident: str, after_id: int) -> LogImage | None: ...
    def field_times(
        self, ident: str, fields: Sequence[str], default: dt.datetime
    ) -> dict[str, Origin]: ...


@dataclass(frozen=True)
class RowReads:
    """Per-record queries (`conn`: source, `state`: state database)."""

    conn: Connection
    state: Connection
    system: str
    types: Types
    lock: bool

    def local(self, ident: str) -> LocalState:
        return read_local(self.conn, ident, self.types, self.lock)

    def base(self, ident: str) -> SyncBase | None:
        return get_base(self.state, self.system, ident)

    def provenance(self, ident: str) -> dict[str, Provenance]:
        return get_provenance(self.state, ident)

    def open_conflict(self, ident: str) -> Conflict | None:
        return open_conflict(self.state, self.system, ident)

    def image_by_version(self, ident: str, version: int) -> LogImage | None:
        return image_by_version(self.conn, ident, version, self.types)

    def changed_after(self, ident: str, after_id: int) -> LogImage | None:
        return changed_after(self.conn, ident, after_id, self.system, self.types)

    def field_times(
        self, ident: str, fields: Sequence[str], default: dt.datetime
    ) -> dict[str, Origin]:
        return field_times(self.conn, ident, fields, default, self.types)


@dataclass(frozen=True)
class BatchReads:
    """Everything the snapshots of a batch's subscriptions read, loaded set-based by `load`."""

    rows: RowReads  # the fallback for a history deeper than was loaded
    locals: Mapping[str, LocalState]
    histories: Mapping[str, History]
    bases: Mapping[str, SyncBase]
    provenances: Mapping[str, dict[str, Provenance]]
    conflicts: Mapping[str, Conflict]

    @classmethod
    def load(
        cls,
        conn: Connection,
        state: Connection,
        system: str,
        idents: Collection[str],
        types: Types,
        *,
        lock: bool,
    ) -> BatchReads:
        """Source: lock (if asked), history, rows; state: bases, provenance, open conflicts.
        Seven statements at most, whatever the number of subscriptions. An id that is no key
        of the table is left out (its snapshot reads nothing: `snapshot.bad_key_snapshot`)."""
        columns = columns_of(types)
        ids = sorted({ident for ident in idents if columns.key_error(ident) is None})
        if lock:
            lock_subscriptions(conn, ids)
        rows = read_rows(conn, ids, types, lock=lock)  # locked before their history is read
        histories = read_histories(conn, ids, columns.table)
        return cls(
            rows=RowReads(conn, state, system, types, lock),
            locals=locals_of(ids, rows, histories, types),
            histories=histories,
            bases=get_bases(state, system, ids),
            provenances=get_provenances(state, ids),
            conflicts=open_conflicts(state, system, ids),
        )

    @property
    def system(self) -> str:
        return self.rows.system

    @property
    def types(self) -> Types:
        return self.rows.types

    def local(self, ident: str) -> LocalState:
        return self.locals[ident]

    def base(self, ident: str) -> SyncBase | None:
        return self.bases.get(ident)

    def provenance(self, ident: str) -> dict[str, Provenance]:
        return self.provenances[ident]

    def open_conflict(self, ident: str) -> Conflict | None:
        return self.conflicts.get(ident)

    def image_by_version(self, ident: str, version: int) -> LogImage | None:
        """The newest image whose after-image carries this `version` (as the SQL of
        `source_side.image_by_version` matches it: the JSON value itself)."""
        history = self.histories[ident]
        for row in history.rows:
            after = json_image(row.after)
            if after is not None and _json_version(after, version_column(self.types)) == version:
                return image(row, self.types)
        return None if history.complete else self.rows.image_by_version(ident, version)

    def changed_after(self, ident: str, after_id: int) -> LogImage | None:
        history = self.histories[ident]
        for row in history.rows:
            if row.id <= after_id:
                return None
            if row.origin != self.system:
                return image(row, self.types)
        if history.covers_after(after_id):
            return None
        return self.rows.changed_after(ident, after_id)

    def field_times(
        self, ident: str, fields: Sequence[str], default: dt.datetime
    ) -> dict[str, Origin]:
        history = self.histories[ident]
        found, todo = fields_set_by(history.rows[:FIELD_TIMES_DEPTH], fields, default, self.types)
        if todo and not history.complete and len(history.rows) < FIELD_TIMES_DEPTH:
            return self.rows.field_times(ident, fields, default)
        return found | {name: Origin(SOURCE, default) for name in todo}


def _json_version(after: Mapping[str, Any], column: str) -> Any:
    """The image's `version` field, read from its column (the destination's mapping)."""
    value = after.get(column)
    return None if isinstance(value, bool) else value
