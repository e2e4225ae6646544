"""The snapshot step (I/O, no writes): everything one feed change is decided from - the sync
base, the source row and its change-log history, what the remote holds now, and the provenance
of the local values - read from the source and the state database into a `three_way.Snapshot`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy.engine import Connection

from subscription_export.core.codec import dumps
from subscription_export.delivery.clients import RemoteChange
from subscription_export.delivery.config import DestinationConfig
from subscription_export.delivery.mapping import MappingError
from subscription_export.reconcile.conflicts import RECORD, Change, FieldDiff, detect
from subscription_export.reconcile.feeds import FeedBatch, remote_fields
from subscription_export.reconcile.reads import BatchReads, Reads, RowReads
from subscription_export.reconcile.source_side import (
    Types,
    changed_after,
    columns_of,
    destination_types,
    normalize,
    read_local,
)
from subscription_export.reconcile.strategies import MISSING, SOURCE, ConflictPolicy, SideState
from subscription_export.reconcile.sync_bases import (
    Provenance,
    SyncBase,
)
from subscription_export.reconcile.sync_state import Conflict, init_sync_state, now
from subscription_export.reconcile.three_way import (
    APP_ORIGIN,
    EPOCH,
    LocalState,
    Origin,
    Snapshot,
    as_time,
    system_of,
    version_of,
)
from subscription_export.runtime import Project


def load_snapshots(
    project: Project, config: DestinationConfig, batch: FeedBatch, policy: ConflictPolicy
) -> list[Snapshot]:
    """Every change's snapshot, read without locks and without writing (the job's load step),
    set-based for the whole batch.

    The apply step loads and decides again under the row lock, so a row changed in between is
    decided on fresh data, and a later change of the same subscription sees the write-back of
    an earlier one; these snapshots are what the run reports it planned.
    """
    init_sync_state(project.state)
    types = destination_types(project, config)
    with project.source.connect() as conn, project.state.connect() as state:
        idents = [change.id for change in batch.changes]
        reads = BatchReads.load(conn, state, config.name, idents, types, lock=False)
        return [
            snapshot_from(reads, config, change, ignored=policy.ignored) for change in batch.changes
        ]


def snapshot_metadata(snapshots: Sequence[Snapshot]) -> dict[str, int]:
    return {
        "changes": len(snapshots),
        "with_base": sum(s.base is not None for s in snapshots),
        "local_deleted": sum(s.local.record is None for s in snapshots),
        "remote_deleted": sum(s.remote.record is None for s in snapshots),
        "already_applied": sum(s.already_applied for s in snapshots),
    }


def load_snapshot(
    conn: Connection,
    state: Connection,
    config: DestinationConfig,
    change: RemoteChange,
    *,
    types: Types,
    ignored: frozenset[str],
    lock: bool,
) -> Snapshot:
    """Base, local row and remote state of one feed change (`conn`: source, `state`: state)."""
    reads = RowReads(conn, state, config.name, types, lock)
    return snapshot_from(reads, config, change, ignored=ignored)


def snapshot_from(
    reads: Reads, config: DestinationConfig, change: RemoteChange, *, ignored: frozenset[str]
) -> Snapshot:
    """The snapshot of one feed change, from per-record or batch-loaded reads."""
    system, ident, types = config.name, change.id, reads.types
    key_error = columns_of(types).key_error(ident)
    if key_error is not None:  # read nothing: the id cannot be bound to the key column
        return bad_key_snapshot(config, change, key_error)
    local = reads.local(ident)
    remote, remote_version, error = _remote_side(config, change, types)
    base_row = reads.base(ident)
    base, base_log_id = _base_for(reads, ident, base_row, remote_version)
    if remote.record is not None and base is not None:  # fields the remote does not store
        remote = replace(remote, record={**base, **remote.record})
    now_record, now_version, now_log = _remote_now(
        reads, ident, base_row, (remote.record, remote_version, base_log_id)
    )
    diff = detect(base, local.record, remote.record, ignored)
    field_origins, record_origin = _origins(reads, ident, diff, local)
    conflict = reads.open_conflict(ident)
    return Snapshot(
        destination=system,
        subscription_id=ident,
        cursor=change.cursor,
        base=base,
        base_log_id=base_log_id,
        local=local,
        remote=remote,
        remote_version=remote_version,
        remote_now=now_record,
        remote_now_version=now_version,
        remote_now_log_id=now_log,
        field_origins=field_origins,
        record_origin=record_origin,
        already_applied=base_row is not None and base_row.remote_cursor >= change.cursor,
        open_conflict_id=conflict.id if conflict else None,
        error=error,
        unseen=_unseen(reads, ident, base, diff, local),
    )


def bad_key_snapshot(config: DestinationConfig, change: RemoteChange, error: str) -> Snapshot:
    """The snapshot of a change whose id is no key of the table: decided `invalid`."""
    return Snapshot(
        destination=config.name,
        subscription_id=change.id,
        cursor=change.cursor,
        base=None,
        base_log_id=0,
        local=LocalState(None, EPOCH, 0, 0, APP_ORIGIN),
        remote=SideState(config.name, change.updated_at, None),
        remote_version=None,
        remote_now=None,
        remote_now_version=None,
        remote_now_log_id=0,
        field_origins={},
        record_origin=Origin(SOURCE, EPOCH),
        error=error,
        bad_key=True,
    )


Held = tuple[dict[str, Any] | None, int | None, int]  # record, version, change-log id


def _remote_now(reads: Reads, ident: str, base_row: SyncBase | None, feed: Held) -> Held:
    """What the remote holds, or will hold once the window delivery has sent it every change
    made since its base: of the feed record, the newest such change and what we last left
    there (`held_*`), the one with the highest version (our writes carry ever higher versions
    and the systems refuse older ones; a user's edit keeps the version of the image it was made
    on). A decision must make *that* equal to the merged record, not the feed record alone: a
    push sent after this edit was made may have replaced it."""
    remote_version, base_log_id = feed[1], feed[2]
    sent = reads.changed_after(ident, base_log_id)
    now_held: Held = (sent.record, sent.version, sent.id) if sent is not None else feed
    if (
        base_row is not None
        and base_row.held_version is not None
        and remote_version is not None
        and base_row.held_version > max(remote_version, now_held[1] or 0)
    ):  # we wrote a newer image there after this edit was made
        held = normalize(base_row.held_record, reads.types)
        return held, base_row.held_version, base_row.log_id
    return now_held


def conflict_snapshot(conn: Connection, system: str, conflict: Conflict, types: Types) -> Snapshot:
    """A queued conflict as a snapshot to settle by hand: its stored base and remote side, the
    source row as it is now (read under its lock), what the remote holds now."""
    ident = conflict.subscription_id
    local = read_local(conn, ident, types, lock=True)
    remote = normalize(conflict.remote, types)
    sent = changed_after(conn, ident, conflict.base_log_id, system, types)
    return Snapshot(
        destination=system,
        subscription_id=ident,
        cursor=0,
        base=normalize(conflict.base, types),
        base_log_id=conflict.base_log_id,
        local=local,
        remote=SideState(system, conflict.remote_changed_at, remote),
        remote_version=conflict.remote_version,
        remote_now=sent.record if sent else remote,
        remote_now_version=sent.version if sent else conflict.remote_version,
        remote_now_log_id=sent.id if sent else conflict.base_log_id,
        field_origins={},
        record_origin=Origin(SOURCE, now()),
    )


def _remote_side(
    config: DestinationConfig, change: RemoteChange, types: Types
) -> tuple[SideState, int | None, str | None]:
    try:
        fields = normalize(remote_fields(config, change), types, strict=True) or {}
    except MappingError as exc:
        return SideState(config.name, change.updated_at, None), None, str(exc)
    # a value its column cannot hold (varchar(n), int4): invalid now, not a DataError that
    # fails the whole round at the write-back (a delete writes no value)
    too_big = None if change.op == "delete" else columns_of(types).value_error(fields)
    if too_big is not None:
        return SideState(config.name, change.updated_at, None), None, too_big
    version = version_of(fields)
    record = None if change.op == "delete" else fields
    return SideState(config.name, change.updated_at, record), version, None


def _unseen(
    reads: Reads, ident: str, base: dict[str, Any] | None, diff: FieldDiff, local: LocalState
) -> dict[str, Origin]:
    """Fields the remote alone changed, whose local value (equal to the base's) was set again by
    another remote system after the remote's base was made (its `updated_at`): that system's
    edit is concurrent with this one although it left the value as it was. At the same time,
    the versions tell: the base image (its `version`) older than the source row version the
    value was recorded in means the remote's user never saw that system's edit."""
    if base is None or local.record is None or not diff.remote_exists:
        return {}
    names = [f.field for f in diff.of(Change.REMOTE_ONLY)]
    if not names:
        return {}
    recorded = reads.provenance(ident)
    system = reads.system
    seen_at = as_time(base.get("updated_at"), EPOCH)
    seen_version = version_of(base)
    out: dict[str, Origin] = {}
    for name in names:
        prov = recorded.get(name)
        value = local.record.get(name, MISSING)
        if prov is None or value is MISSING or prov.system in (SOURCE, system):
            continue
        if dumps(prov.value) == dumps(value) and _after(prov, seen_at, seen_version):
            out[name] = Origin(prov.system, prov.changed_at)
    return out


def _after(prov: Provenance, seen_at: dt.datetime, seen_version: int | None) -> bool:
    """Whether `prov` was recorded after the remote's base image was made: by time, and at the
    same time (edits in one clock tick) by version, so the verdict does not depend on whether
    that system was reconciled before or after this one."""
    if prov.changed_at != seen_at:
        return prov.changed_at > seen_at
    return prov.version is not None and seen_version is not None and prov.version > seen_version


def _base_for(
    reads: Reads, ident: str, row: SyncBase | None, version: int | None
) -> tuple[dict[str, Any] | None, int]:
    """The image the remote's user edited: the system's previous feed record if it carries
    the same version (two edits of one image in a row: the second was made on the first),
    else what the remote held after our last decision if the versions match, else the
    change-log image with that version (delivered to it), else the last held state, else
    nothing (the record is new to us)."""
    types = reads.types
    if (
        row is not None
        and version is not None
        and row.feed_version == version
        and row.feed_record is not None
    ):
        image = reads.image_by_version(ident, version)
        return normalize(row.feed_record, types), image.id if image else row.log_id
    held = row is not None and row.held_record is not None  # nobody edits a deleted record
    if held and version is not None and row.held_version == version:  # type: ignore[union-attr]
        return normalize(row.held_record, types), row.log_id  # type: ignore[union-attr]
    if version is not None:
        image = reads.image_by_version(ident, version)
        if image is not None:
            return image.record, image.id
    if row is not None:
        return normalize(row.held_record, types), row.log_id
    return None, 0


def _origins(
    reads: Reads, ident: str, diff: FieldDiff, local: LocalState
) -> tuple[dict[str, Origin], Origin]:
    """The origin of each local value changed since the base, and of the local side as a whole
    (`diff`: base, local and remote, detected once per snapshot)."""
    mine = (Change.LOCAL_ONLY, Change.BOTH_SAME, Change.BOTH_DIFFERENT)
    changed = [f.field for f in diff.of(*mine)]
    recorded = reads.provenance(ident)
    origins: dict[str, Origin] = {}
    todo = []
    for name in changed:
        prov = recorded.get(name)
        value = (local.record or {}).get(name, MISSING)
        if prov is not None and value is not MISSING and dumps(prov.value) == dumps(value):
            origins[name] = Origin(prov.system, prov.changed_at)
        else:
            todo.append(name)
    if todo and local.record is not None:
        origins.update(reads.field_times(ident, todo, local.changed_at))
    if local.record is None:
        prov = recorded.get(RECORD)  # a write-back delete: the remote's time, not ours
        if prov is not None and prov.value is None and prov.system == local.last_origin:
            return origins, Origin(prov.system, prov.changed_at)
        return origins, Origin(system_of(local.last_origin), local.changed_at)
    if not origins:
        return origins, Origin(SOURCE, local.changed_at)
    latest = max(origins.values(), key=lambda o: (o.changed_at, o.system))
    ours = [o for o in origins.values() if o.system == SOURCE]
    return origins, Origin(SOURCE, latest.changed_at) if ours else latest
