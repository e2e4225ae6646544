"""Bring edits made in the ERP and the CRM back into the source, three ways, without echo.

One reconcile of a system (`reconcile_system`, or the Dagster ops in `defs/reconcile.py`):

1. **Fetch** its change feed after the applied cursor (`fetch_batch`).
2. **Load** for each change, under the source row's lock: the sync base, the local row, and
   what the remote holds now (`load_snapshot`).
3. **Decide** (`decide`, pure): the three-way merge of `conflicts` with the destination's
   policy, each conflicting field decided by the *provenance* of the local value (see below).
4. **Apply** (`apply_batch`): write the merged record back to the source tagged with the
   system as origin (`set_origin`), and in the same transaction - when the state database is
   the source database - the new sync base, the field provenance, the audit entry and, if the
   remote needs the merged record, a pending push. A manual conflict is queued instead.
5. **Push** (`push_pending`) the pending merged records under fixed idempotency keys.
6. **Advance** the system's applied feed cursor (only now: the batch is applied).

Why the base is found by `version`: the sandbox systems keep the `version` our last write gave
a record when their users edit it, so a feed record's version names the image it was edited
from - an image in the change log (delivered by the window delivery) or the record we pushed
(`sync_base.held_*`). Using that image as the base keeps the three-way merge exact even when the
window delivery overwrote the remote after its user's edit.

Why pushes wait: the window delivery sends the source's changes to each system in LSN order,
and the ERP refuses a version older than the one it holds. A push of a merged record (which
carries the write-back's newer version) sent before the delivery of an earlier change would
turn that change into a stale-version dead letter. So a push waits until the system's delivery
watermark has passed every earlier non-echo change of the subscription, and is dropped as
obsolete when the delivery has since brought the remote a newer image (built on the merged
record). The write-back itself is never delivered to its system (`_origin` = system).

Why provenance: `last_writer_wins` on the record's latest time, `source_wins` and
`field_ownership` are order dependent with three systems (a value the ERP wrote into the source
would later be defended as "the source's" against the CRM). Each field value the reconcile
writes back records the system and UTC time that produced it; a conflict is decided between
that system/time and the remote's, and between two remotes `source_wins`/`remote_wins` fall back
to `last_writer_wins`. App edits get their time from the change log (`updated_at` of the
change that last touched the field). docs/conflicts.md has the rules.

Crash windows: when the state database is another database than the source, the write-back
commits first and the sync base, audit entry and push are written right after. A crash between
the two re-reads the same feed change (its cursor was not recorded as applied): the local row
already holds the merged record, and the three-way merge of (old base, merged, remote) gives the
merged record again, so nothing is written twice and the push gets the same key. Between the
state write and the push, the pending push is re-sent under its key.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tomllib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from subscription_export.db import engine_for, normalize_url
from subscription_export.errors import ConfigError, SubscriptionExportError
from subscription_export.formats.values import BadValue, convert
from subscription_export.pipeline import Project
from subscription_export.source.columns import BASE_TYPES, LogicalType
from subscription_export.source.schema import clear_origin, latest_capture_schema, set_origin
from subscription_export.state.leases import default_holder, lease
from subscription_export.sync import sync_state as st
from subscription_export.sync.clients import (
    ChangeFeedMixin,
    DeliveryClient,
    RemoteChange,
    idempotency_key,
)
from subscription_export.sync.config import DestinationConfig, DestinationsConfig
from subscription_export.sync.conflicts import (
    RECORD,
    Change,
    Decision,
    Outcome,
    detect,
    resolve,
)
from subscription_export.sync.mapping import (
    CRM_FIELD_NAMES,
    MappingError,
    subscription_from_crm,
    subscription_from_erp,
)
from subscription_export.sync.strategies import (
    MISSING,
    SOURCE,
    ConflictPolicy,
    SideState,
    Strategy,
    pick_field,
    same,
)

ENV_STRATEGY = "SUBSCRIPTION_EXPORT_CONFLICT_STRATEGY"
ENV_POLICY_FILE = "SUBSCRIPTION_EXPORT_CONFLICTS"
DEFAULT_STRATEGY = Strategy.LAST_WRITER_WINS
CRASH_ENV = "SUBSCRIPTION_EXPORT_RECONCILE_CRASH_AT"
"""Test hook: `after_write_back` or `before_push` makes the process `os._exit(CRASH_EXIT)`."""
CRASH_EXIT = 86
FEED_KINDS = ("erp", "crm")
APP_ORIGIN = "app"
Take = Literal["local", "remote", "merged"]
OUTCOMES = ("already_applied", "echo", "no_change", "merged", "resolved", "queued", "invalid")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class ReconcileError(SubscriptionExportError):
    """A reconcile or a manual resolution that cannot proceed as asked."""


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ConflictPolicies:
    """The policy of every destination: one default plus per-destination replacements.

    A destination's table replaces the default entirely (it is not merged key by key), so a
    `manual` destination does not inherit `field_owners` meant for `field_ownership`.
    """

    default: ConflictPolicy
    destinations: Mapping[str, ConflictPolicy] = field(default_factory=dict)
    source: str = "defaults"

    def for_destination(self, name: str) -> ConflictPolicy:
        return self.destinations.get(name, self.default)


def load_policies(
    path: Path | str | None = None, env: Mapping[str, str] | None = None
) -> ConflictPolicies:
    """Policies from a TOML file (`path`, else $SUBSCRIPTION_EXPORT_CONFLICTS) and the env.

    File layout: an optional `[default]` table and `[destinations.<name>]` tables, each with the
    keys of `ConflictPolicy.from_mapping`. Without a file, or without a `[default]` table, the
    default strategy is $SUBSCRIPTION_EXPORT_CONFLICT_STRATEGY (default `last_writer_wins`).
    """
    environ = os.environ if env is None else env
    strategy = environ.get(ENV_STRATEGY) or DEFAULT_STRATEGY.value
    try:
        env_default = ConflictPolicy.from_mapping({"strategy": strategy})
    except ConfigError as exc:
        raise ConfigError(f"{ENV_STRATEGY}: {exc}") from None
    raw_path = path if path is not None else environ.get(ENV_POLICY_FILE)
    if not raw_path:
        return ConflictPolicies(env_default, {}, f"{ENV_STRATEGY}={strategy}")
    where = Path(raw_path)
    try:
        data = tomllib.loads(where.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such conflict policy file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"default", "destinations"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: default, destinations)")
    default = _policy(data["default"], f"{where} [default]") if "default" in data else env_default
    tables = data.get("destinations", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{where}: [destinations] must be a table")
    per = {name: _policy(t, f"{where} [destinations.{name}]") for name, t in tables.items()}
    return ConflictPolicies(default, per, str(where))


def _policy(table: Any, where: str) -> ConflictPolicy:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    try:
        return ConflictPolicy.from_mapping(table)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# -- systems and feeds -------------------------------------------------------------------------


def feed_systems(destinations: DestinationsConfig) -> list[DestinationConfig]:
    """Destinations whose users edit subscriptions (ERP and CRM kinds have a change feed)."""
    return [d for d in destinations.destinations.values() if d.kind in FEED_KINDS]


def feed_system(destinations: DestinationsConfig, name: str) -> DestinationConfig:
    config = destinations.get(name)
    if config is None or config.kind not in FEED_KINDS:
        known = ", ".join(d.name for d in feed_systems(destinations)) or "none"
        raise ReconcileError(
            f"{name!r} is not a configured system with a change feed in"
            f" {destinations.describe()} (systems with a feed: {known})"
        )
    return config


def _feed(client: DeliveryClient) -> ChangeFeedMixin:
    if not isinstance(client, ChangeFeedMixin):
        raise ReconcileError(f"{client.destination} has no change feed")
    return client


@dataclass(frozen=True)
class FeedBatch:
    """Feed changes with `after < cursor <= until`, oldest first."""

    system: str
    after: int
    until: int
    changes: tuple[RemoteChange, ...]

    @property
    def run_key(self) -> str:
        return f"{self.system}:{self.after}-{self.until}"


def fetch_batch(
    client: DeliveryClient,
    after: int,
    until: int | None = None,
    *,
    page_size: int = 100,
    max_changes: int = 10_000,
) -> FeedBatch:
    """Read pages after `after` up to `until` (None: what is there, at most `max_changes`)."""
    feed = _feed(client)
    changes: list[RemoteChange] = []
    cursor = after
    while until is None or cursor < until:
        page = feed.fetch_changes(after=cursor, limit=page_size)
        taken = [c for c in page.changes if until is None or c.cursor <= until]
        changes.extend(taken)
        if taken:
            cursor = taken[-1].cursor
        if len(taken) < page_size or len(changes) >= max_changes:
            break
    return FeedBatch(client.destination, after, cursor, tuple(changes))


def remote_fields(config: DestinationConfig, change: RemoteChange) -> dict[str, Any]:
    """The feed record as subscription fields (our names, still JSON values)."""
    record = dict(change.record)
    if config.field_mapping:
        built_in = CRM_FIELD_NAMES if config.kind == "crm" else {}
        inverse = {
            theirs: built_in.get(ours, ours) for ours, theirs in config.field_mapping.items()
        }
        extra_key = "custom_fields" if config.kind == "crm" else "extra"
        record = {inverse.get(k, k): v for k, v in record.items()}
        if isinstance(record.get(extra_key), dict):
            record[extra_key] = {inverse.get(k, k): v for k, v in record[extra_key].items()}
    if config.kind == "crm":
        return subscription_from_crm(change.id, record)
    return subscription_from_erp({**record, "id": change.id})


# -- values ------------------------------------------------------------------------------------

Types = Mapping[str, LogicalType]


def column_types(conn: Connection) -> dict[str, LogicalType]:
    """The source table's columns and logical types (base columns plus added ones)."""
    schema = latest_capture_schema(conn)
    if schema is None:
        return dict(BASE_TYPES)
    return {c.name: c.type for c in schema.columns}


def normalize(record: Mapping[str, Any] | None, types: Types) -> dict[str, Any] | None:
    """Keep the source's columns, each as its Python type (exact decimals at scale 4, dates,
    UTC datetimes), so values from SQLite, PostgreSQL and JSON compare equal."""
    if record is None:
        return None
    out: dict[str, Any] = {}
    for name, value in record.items():
        logical = types.get(name)
        if logical is None:
            continue
        try:
            out[name] = convert(value, logical)
        except BadValue:
            out[name] = value
    return out


def equivalent(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, ignored: Any) -> bool:
    """Same record apart from bookkeeping (both absent counts as the same)."""
    if a is None or b is None:
        return a is None and b is None
    names = (set(a) | set(b)) - set(ignored)
    return all(same(a.get(n, MISSING), b.get(n, MISSING)) for n in names)


def _version(record: Mapping[str, Any] | None) -> int | None:
    value = (record or {}).get("version")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _time(value: Any, default: dt.datetime) -> dt.datetime:
    try:
        return convert(value, "timestamp") if value is not None else default  # type: ignore[no-any-return]
    except BadValue:
        return default


def _system(origin: str) -> str:
    return SOURCE if origin == APP_ORIGIN else origin


# -- the source side ---------------------------------------------------------------------------


def same_database(project: Project) -> bool:
    """True when the state tables live in the source database (one transaction for both)."""
    settings = project.settings
    return normalize_url(settings.source_url).render_as_string(
        hide_password=False
    ) == normalize_url(settings.state_url).render_as_string(hide_password=False)


def source_writer(project: Project) -> Engine:
    project.source  # noqa: B018 - checks reachability and the capture schema once
    return engine_for(project.settings.source_url, writer=True)


@dataclass(frozen=True)
class LocalState:
    """The source's current row (None when deleted or never created) and its bookkeeping."""

    record: dict[str, Any] | None
    changed_at: dt.datetime  # the row's updated_at, or the delete's time
    version: int  # the row's version, or the version it had when deleted (0: never existed)
    log_id: int  # the subscription's newest change-log id (0: none)
    last_origin: str  # origin of that change


@dataclass(frozen=True)
class LogImage:
    id: int
    op: str
    origin: str
    record: dict[str, Any] | None  # after-image, None for a delete
    version: int | None


_LAST_ROW = sa.text(
    "SELECT id, op, origin, CAST(before AS TEXT) AS before, changed_at"
    " FROM subscription_change_log WHERE subscription_id = :s ORDER BY id DESC LIMIT 1"
)


def _json(text: str | None) -> dict[str, Any] | None:
    return None if text is None else json.loads(text, parse_float=Decimal)


def read_local(conn: Connection, subscription_id: str, types: Types, lock: bool) -> LocalState:
    """The current row; with `lock`, held until the transaction ends (PostgreSQL: a per-id
    advisory lock too, so two systems cannot resurrect the same deleted id at once)."""
    postgres = conn.dialect.name == "postgresql"
    if lock and postgres:
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"sync:{subscription_id}"}
        )
    query = "SELECT * FROM subscriptions WHERE id = :s" + (
        " FOR UPDATE" if lock and postgres else ""
    )
    row = conn.execute(sa.text(query), {"s": subscription_id}).mappings().first()
    last = conn.execute(_LAST_ROW, {"s": subscription_id}).first()
    last_time = _time(last.changed_at, _EPOCH) if last else _EPOCH
    if row is not None:
        record = normalize(dict(row), types)
        assert record is not None
        return LocalState(
            record,
            _time(record.get("updated_at"), last_time),
            _version(record) or 0,
            int(last.id) if last else 0,
            last.origin if last else APP_ORIGIN,
        )
    before = _json(last.before) if last is not None and last.op == "d" else None
    return LocalState(
        None,
        last_time,
        _version(before) or 0,
        int(last.id) if last else 0,
        last.origin if last else APP_ORIGIN,
    )


def _image(row: Any, types: Types) -> LogImage:
    after = normalize(_json(row.after), types)
    before = _json(getattr(row, "before", None))
    version = _version(after) if after is not None else _version(before)
    return LogImage(int(row.id), row.op, row.origin, after, version)


def image_by_version(
    conn: Connection, subscription_id: str, version: int, types: Types
) -> LogImage | None:
    """The newest change-log image of the subscription with this `version`."""
    match = (
        "(after->>'version')::bigint = :v"
        if conn.dialect.name == "postgresql"
        else "json_extract(after, '$.version') = :v"
    )
    row = conn.execute(
        sa.text(
            "SELECT id, op, origin, CAST(after AS TEXT) AS after FROM subscription_change_log"
            f" WHERE subscription_id = :s AND after IS NOT NULL AND {match}"
            " ORDER BY id DESC LIMIT 1"
        ),
        {"s": subscription_id, "v": version},
    ).first()
    return _image(row, types) if row else None


def changed_after(
    conn: Connection,
    subscription_id: str,
    after_id: int,
    system: str,
    types: Types,
    watermark: int | None = None,
) -> LogImage | None:
    """The newest change after `after_id` that the window delivery sends to `system` (all but
    the system's own write-backs); with `watermark`, only one it has sent already."""
    sent = "" if watermark is None else " AND lsn IS NOT NULL AND lsn <= :w"
    row = conn.execute(
        sa.text(
            "SELECT id, op, origin, CAST(after AS TEXT) AS after, CAST(before AS TEXT) AS before"
            " FROM subscription_change_log WHERE subscription_id = :s AND id > :a"
            f" AND origin <> :o{sent} ORDER BY id DESC LIMIT 1"
        ),
        {"s": subscription_id, "a": after_id, "o": system}
        | ({} if watermark is None else {"w": watermark}),
    ).first()
    return _image(row, types) if row else None


def undelivered_until(
    conn: Connection, subscription_id: str, until_id: int, system: str, watermark: int
) -> bool:
    """Whether a change up to `until_id` that the delivery will send to `system` is unsent."""
    row = conn.execute(
        sa.text(
            "SELECT 1 FROM subscription_change_log WHERE subscription_id = :s AND id <= :u"
            " AND origin <> :o AND (lsn IS NULL OR lsn > :w) LIMIT 1"
        ),
        {"s": subscription_id, "u": until_id, "o": system, "w": watermark},
    ).first()
    return row is not None


def _field_times(
    conn: Connection,
    subscription_id: str,
    fields: Sequence[str],
    default: dt.datetime,
    types: Types,
) -> dict[str, Origin]:
    """For each field: the origin and business time (`updated_at`) of the newest change that
    set it, from the change log (exact for app edits, whose updated_at the app sets). Values
    are compared typed: a write-back stores `12.0000` where the app wrote `12.00`."""
    rows = conn.execute(
        sa.text(
            "SELECT op, origin, CAST(before AS TEXT) AS before, CAST(after AS TEXT) AS after,"
            " changed_at FROM subscription_change_log WHERE subscription_id = :s"
            " ORDER BY id DESC LIMIT 1000"
        ),
        {"s": subscription_id},
    ).all()
    found: dict[str, Origin] = {}
    todo = set(fields)
    for row in rows:
        if not todo:
            break
        if row.op == "d":
            continue
        before = normalize(_json(row.before), types) or {}
        after = normalize(_json(row.after), types) or {}
        at = _time(after.get("updated_at"), _time(row.changed_at, default))
        for name in sorted(todo):
            if row.op == "c" or not same(before.get(name, MISSING), after.get(name, MISSING)):
                found[name] = Origin(_system(row.origin), at)
                todo.discard(name)
    return found | {name: Origin(SOURCE, default) for name in todo}


def _db_value(value: Any, postgres: bool) -> Any:
    """A Python value as the source stores it (SQLite: exact decimals and ISO times as text)."""
    if value is None or postgres:
        return value
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    return value


def write_local(
    conn: Connection,
    subscription_id: str,
    target: Mapping[str, Any] | None,
    exists: bool,
    types: Types,
    origin: str,
) -> int:
    """Make the source row equal `target` (None: delete), tagged with `origin` in the change
    log; returns the subscription's newest change-log id (the write-back's own row)."""
    postgres = conn.dialect.name == "postgresql"
    set_origin(conn, origin)
    try:
        if target is None:
            conn.execute(
                sa.text("DELETE FROM subscriptions WHERE id = :id"), {"id": subscription_id}
            )
        else:
            names = [n for n in types if n in target and n != "id"]
            params = {f"p{i}": _db_value(target[n], postgres) for i, n in enumerate(names)}
            params["id"] = subscription_id
            if exists:
                sets = ", ".join(f'"{n}" = :p{i}' for i, n in enumerate(names))
                sql = f"UPDATE subscriptions SET {sets} WHERE id = :id"
            else:
                cols = ", ".join(["id", *(f'"{n}"' for n in names)])
                values = ", ".join([":id", *(f":p{i}" for i in range(len(names)))])
                sql = f"INSERT INTO subscriptions ({cols}) VALUES ({values})"
            conn.execute(sa.text(sql), params)
    finally:
        clear_origin(conn)  # SQLite: the origin row must not outlive this transaction
    newest = conn.execute(
        sa.text("SELECT MAX(id) FROM subscription_change_log WHERE subscription_id = :s"),
        {"s": subscription_id},
    ).scalar()
    return int(newest or 0)


# -- snapshot: what a decision is made from ----------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Which system produced a value, and when (UTC)."""

    system: str
    changed_at: dt.datetime


@dataclass(frozen=True)
class Snapshot:
    """Everything one feed change is decided from (all values typed)."""

    destination: str
    subscription_id: str
    cursor: int
    base: dict[str, Any] | None
    base_log_id: int
    local: LocalState
    remote: SideState
    remote_version: int | None
    remote_now: dict[str, Any] | None  # what the remote holds now, as far as we know
    remote_now_version: int | None
    remote_now_log_id: int
    field_origins: Mapping[str, Origin]  # of local values changed since the base
    record_origin: Origin  # of the local side's existence change / latest edit
    already_applied: bool = False
    open_conflict_id: int | None = None
    error: str | None = None  # the feed record could not be read


def _remote_side(
    config: DestinationConfig, change: RemoteChange, types: Types
) -> tuple[SideState, int | None, str | None]:
    try:
        fields = normalize(remote_fields(config, change), types) or {}
    except MappingError as exc:
        return SideState(config.name, change.updated_at, None), None, str(exc)
    version = _version(fields)
    record = None if change.op == "delete" else fields
    return SideState(config.name, change.updated_at, record), version, None


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
    """Base, local row and remote state of one feed change (`conn`: source, `state`: state).

    `remote_now` is what the remote will hold once the window delivery has sent it every
    change made since its base (the newest such change), else the feed record itself: a
    decision must make *that* equal to the merged record, not the feed record alone.
    """
    system, ident = config.name, change.id
    local = read_local(conn, ident, types, lock)
    remote, remote_version, error = _remote_side(config, change, types)
    base_row = st.get_base(state, system, ident)
    done = base_row is not None and base_row.remote_cursor >= change.cursor
    base, base_log_id = _base_for(conn, ident, base_row, remote_version, types)
    if remote.record is not None and base is not None:  # fields the remote does not store
        remote = replace(remote, record={**base, **remote.record})
    sent = changed_after(conn, ident, base_log_id, system, types)
    if sent is not None:
        now_record, now_version, now_log = sent.record, sent.version, sent.id
    else:
        now_record, now_version, now_log = remote.record, remote_version, base_log_id
    field_origins, record_origin = _origins(conn, state, ident, base, local, remote, ignored, types)
    conflict = st.open_conflict(state, system, ident)
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
        already_applied=done,
        open_conflict_id=conflict.id if conflict else None,
        error=error,
    )


def _base_for(
    conn: Connection,
    ident: str,
    row: st.SyncBase | None,
    version: int | None,
    types: Types,
) -> tuple[dict[str, Any] | None, int]:
    """The image the remote's user edited: what the remote held after our last decision if
    the versions match, else the change-log image with that version (delivered to it), else
    the last held state, else nothing (the record is new to us)."""
    held = row is not None and row.held_record is not None  # nobody edits a deleted record
    if held and version is not None and row.held_version == version:  # type: ignore[union-attr]
        return normalize(row.held_record, types), row.log_id  # type: ignore[union-attr]
    if version is not None:
        image = image_by_version(conn, ident, version, types)
        if image is not None:
            return image.record, image.id
    if row is not None:
        return normalize(row.held_record, types), row.log_id
    return None, 0


def _origins(
    conn: Connection,
    state: Connection,
    ident: str,
    base: dict[str, Any] | None,
    local: LocalState,
    remote: SideState,
    ignored: frozenset[str],
    types: Types,
) -> tuple[dict[str, Origin], Origin]:
    diff = detect(base, local.record, remote.record, ignored)
    mine = (Change.LOCAL_ONLY, Change.BOTH_SAME, Change.BOTH_DIFFERENT)
    changed = [f.field for f in diff.of(*mine)]
    recorded = st.get_provenance(state, ident)
    origins: dict[str, Origin] = {}
    todo = []
    for name in changed:
        prov = recorded.get(name)
        value = (local.record or {}).get(name, MISSING)
        if prov is not None and value is not MISSING and st.dumps(prov.value) == st.dumps(value):
            origins[name] = Origin(prov.system, prov.changed_at)
        else:
            todo.append(name)
    if todo and local.record is not None:
        origins.update(_field_times(conn, ident, todo, local.changed_at, types))
    if local.record is None:
        prov = recorded.get(RECORD)  # a write-back delete: the remote's time, not ours
        if prov is not None and prov.value is None and prov.system == local.last_origin:
            return origins, Origin(prov.system, prov.changed_at)
        return origins, Origin(_system(local.last_origin), local.changed_at)
    if not origins:
        return origins, Origin(SOURCE, local.changed_at)
    latest = max(origins.values(), key=lambda o: (o.changed_at, o.system))
    ours = [o for o in origins.values() if o.system == SOURCE]
    return origins, Origin(SOURCE, latest.changed_at) if ours else latest


# -- deciding ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What to do about one feed change."""

    outcome: str  # one of OUTCOMES
    strategy: str
    target: dict[str, Any] | None = None  # the merged record (None: deleted)
    write_local: bool = False
    push: bool = False
    conflicts: tuple[str, ...] = ()
    decisions: tuple[Decision, ...] = ()

    @property
    def applies(self) -> bool:
        return self.outcome in ("no_change", "merged", "resolved")


def _safe_policy(policy: ConflictPolicy, local_system: str, remote_system: str) -> ConflictPolicy:
    """`source_wins`/`remote_wins` only rank the source against a remote; between two remotes
    (a local value that came from another system) they fall back to `last_writer_wins`."""
    if SOURCE in (local_system, remote_system):
        return policy
    by_source = {Strategy.SOURCE_WINS, Strategy.REMOTE_WINS}
    if policy.strategy in by_source:
        return ConflictPolicy(
            Strategy.LAST_WRITER_WINS, priority=policy.priority, ignored=policy.ignored
        )
    if policy.strategy is Strategy.FIELD_OWNERSHIP and policy.fallback in by_source:
        return replace(policy, fallback=Strategy.LAST_WRITER_WINS)
    return policy


def _effective(
    policy: ConflictPolicy, name: str, local_system: str, remote_system: str
) -> Strategy:
    strategy = policy.strategy
    if strategy is Strategy.FIELD_OWNERSHIP:
        owner = policy.field_owners.get(name)
        if owner is not None and (local_system == owner) != (remote_system == owner):
            return strategy
        strategy = policy.fallback
    if strategy in (Strategy.SOURCE_WINS, Strategy.REMOTE_WINS) and SOURCE not in (
        local_system,
        remote_system,
    ):
        return Strategy.LAST_WRITER_WINS
    return strategy


def decide(snap: Snapshot, policy: ConflictPolicy) -> Verdict:
    """The decision for one feed change (pure; docs/conflicts.md has the rules)."""
    strategy = policy.strategy.value
    if snap.already_applied:
        return Verdict("already_applied", strategy)
    if snap.error is not None:
        return Verdict("invalid", strategy)
    base, local, remote = snap.base, snap.local.record, snap.remote.record
    diff = detect(base, local, remote, policy.ignored)
    if snap.open_conflict_id is not None:
        return Verdict("queued", strategy, conflicts=diff.conflicts or (RECORD,))
    if base is not None and equivalent(remote, base, policy.ignored):
        return Verdict("echo", strategy)
    if diff.sides_agree:
        return _finish(snap, policy, "no_change", local, (), ())
    if (local is None) != (remote is None):
        origin = snap.record_origin
        side = SideState(origin.system, origin.changed_at, local)
        res = resolve(
            base, side, snap.remote, _safe_policy(policy, origin.system, snap.remote.system)
        )
        if res.outcome is Outcome.QUEUED:
            return Verdict("queued", strategy, conflicts=res.conflicts, decisions=res.decisions)
        return _finish(snap, policy, res.outcome.value, res.merged, res.conflicts, res.decisions)
    assert local is not None and remote is not None
    picks: dict[str, Decision] = {}
    for f in diff.of(Change.BOTH_DIFFERENT):
        origin = snap.field_origins.get(f.field, Origin(SOURCE, snap.local.changed_at))
        side = SideState(origin.system, origin.changed_at, local)
        chosen = _effective(policy, f.field, origin.system, snap.remote.system)
        pick = pick_field(policy, f.field, side, snap.remote, f.local, f.remote, chosen)
        reason = (
            f"{pick.reason} (local value from {origin.system} at {st.dumps(origin.changed_at)})"
        )
        picks[f.field] = Decision(f.field, f.base, f.local, f.remote, pick.winner, reason)
    decisions = _decisions(diff, picks)
    if any(d.winner is None for d in picks.values()):
        return Verdict("queued", strategy, conflicts=diff.conflicts, decisions=decisions)
    values: dict[str, Any] = dict(local)
    for f in diff.fields:
        won = picks.get(f.field)
        value = (
            f.remote
            if f.change is Change.REMOTE_ONLY or (won and won.winner == "remote")
            else f.local
        )
        if value is MISSING:
            values.pop(f.field, None)
        else:
            values[f.field] = value
    outcome = Outcome.RESOLVED if picks else Outcome.MERGED
    return _finish(snap, policy, outcome.value, values, diff.conflicts, decisions)


def _decisions(diff: Any, picks: Mapping[str, Decision]) -> tuple[Decision, ...]:
    reasons = {
        Change.BOTH_SAME: ("both", "both sides made the same change"),
        Change.LOCAL_ONLY: ("local", "changed on local side only"),
        Change.REMOTE_ONLY: ("remote", "changed on remote side only"),
    }
    out = []
    for f in diff.fields:
        if f.change is Change.UNCHANGED:
            continue
        if f.field in picks:
            out.append(picks[f.field])
        else:
            winner, reason = reasons[f.change]
            out.append(Decision(f.field, f.base, f.local, f.remote, winner, reason))  # type: ignore[arg-type]
    return tuple(out)


def _finish(
    snap: Snapshot,
    policy: ConflictPolicy,
    outcome: str,
    merged: Mapping[str, Any] | None,
    conflicts: tuple[str, ...],
    decisions: tuple[Decision, ...],
) -> Verdict:
    """Bookkeeping of the merged record, and which sides must be written."""
    local = snap.local.record
    if merged is not None and equivalent(merged, local, policy.ignored):
        target: dict[str, Any] | None = dict(local)  # type: ignore[arg-type]
        write = False
    elif merged is None:
        target, write = None, local is not None
    else:
        target = dict(merged)
        stamps = [snap.remote.changed_at]
        if local is not None:
            stamps.append(_time(local.get("updated_at"), snap.local.changed_at))
        target["updated_at"] = max(stamps)
        versions = [snap.local.version, snap.remote_version or 0, snap.remote_now_version or 0]
        target["version"] = max([*versions, _version(snap.base) or 0]) + 1
        write = True
    push = not equivalent(target, snap.remote_now, policy.ignored)
    return Verdict(outcome, policy.strategy.value, target, write, push, conflicts, decisions)


# -- applying ----------------------------------------------------------------------------------


def _crash_point(name: str) -> None:
    """Die here if the crash test asks for it (never set outside tests)."""
    if os.environ.get(CRASH_ENV) == name:
        os._exit(CRASH_EXIT)


@dataclass
class ApplyReport:
    """Counts of one applied batch; `metadata()` is what the Dagster op reports."""

    system: str
    after: int
    until: int
    outcomes: Counter[str] = field(default_factory=Counter)
    written_back: int = 0
    pushes_planned: int = 0

    def metadata(self) -> dict[str, int | str]:
        return {
            "system": self.system,
            "cursor_from": self.after,
            "cursor_to": self.until,
            "changes": sum(self.outcomes.values()),
            **{f"outcome.{name}": self.outcomes.get(name, 0) for name in OUTCOMES},
            "written_back": self.written_back,
            "pushes_planned": self.pushes_planned,
        }


def _state_writes(
    conn: Connection,
    snap: Snapshot,
    verdict: Verdict,
    plan_log_id: int,
    *,
    ref: str,
    window_key: str,
    lsn: int,
    provenance: tuple[Mapping[str, Any], str, dt.datetime] | None,
    conflict_id: int | None = None,
    note: Mapping[str, Any] | None = None,
) -> int | None:
    """Sync base, provenance, pending push, conflict and audit entry of one decision.
    Idempotent: the same decision written twice leaves the same rows."""
    system, ident = snap.destination, snap.subscription_id
    current = st.get_base(conn, system, ident)
    if verdict.applies:
        if verdict.push:
            held, held_version, log_id = (
                snap.remote_now,
                snap.remote_now_version,
                snap.remote_now_log_id,
            )
        else:
            held, held_version, log_id = verdict.target, snap.remote_now_version, plan_log_id
        st.put_base(
            conn,
            system,
            ident,
            held_record=held,
            held_version=held_version,
            agreed_record=verdict.target,
            log_id=log_id,
            remote_cursor=snap.cursor,
        )
        if provenance is not None:
            st.put_provenance(conn, ident, *provenance)
        if verdict.push:
            target = verdict.target
            st.add_push(
                conn,
                key=idempotency_key(system, window_key, lsn),
                destination=system,
                subscription_id=ident,
                window_key=window_key,
                lsn=lsn,
                record=target,
                delete_version=None if target is not None else snap.remote_now_version,
                plan_log_id=plan_log_id,
            )
    elif verdict.outcome == "echo":  # the remote holds what it held: nothing to merge
        st.put_base(
            conn,
            system,
            ident,
            held_record=snap.remote_now,
            held_version=snap.remote_now_version,
            agreed_record=current.agreed_record if current else snap.base,
            log_id=snap.remote_now_log_id,
            remote_cursor=snap.cursor,
        )
    else:  # queued, invalid: the change is handled (recorded), the base stays
        st.put_base(
            conn,
            system,
            ident,
            held_record=current.held_record if current else snap.remote.record,
            held_version=current.held_version if current else snap.remote_version,
            agreed_record=current.agreed_record if current else snap.base,
            log_id=current.log_id if current else snap.base_log_id,
            remote_cursor=snap.cursor,
        )
    if verdict.outcome == "queued" and conflict_id is None:
        open_now = st.open_conflict(conn, system, ident)
        if open_now is not None:
            conflict_id = open_now.id
            remote = _later_remote(open_now.remote, snap.base, snap.remote.record)
            local = st.loads(st.dumps(snap.local.record))
            st.update_conflict_remote(
                conn,
                conflict_id,
                remote=remote,
                remote_changed_at=snap.remote.changed_at,
                remote_version=snap.remote_version,
                cursor=snap.cursor,
                fields=detect(open_now.base, local, remote).conflicts,
            )
        else:
            conflict_id = st.add_conflict(
                conn,
                destination=system,
                subscription_id=ident,
                strategy=verdict.strategy,
                fields=verdict.conflicts,
                base=snap.base,
                base_log_id=snap.base_log_id,
                local=snap.local.record,
                local_changed_at=snap.local.changed_at,
                remote=snap.remote.record,
                remote_changed_at=snap.remote.changed_at,
                remote_version=snap.remote_version,
                cursor=snap.cursor,
            )
    st.add_audit(
        conn,
        destination=system,
        subscription_id=ident,
        ref=ref,
        strategy=verdict.strategy,
        outcome=verdict.outcome,
        base=snap.base,
        local=snap.local.record,
        remote=snap.remote.record,
        merged=verdict.target if verdict.applies else None,
        detail={**_audit_detail(snap, verdict), **(note or {})},
        conflict_id=conflict_id,
    )
    return conflict_id


def _later_remote(
    queued: dict[str, Any] | None,
    base: Mapping[str, Any] | None,
    remote: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """The queued remote side plus what a later remote edit changed against its own base (the
    window delivery may have overwritten the remote meanwhile; its values are not the user's)."""
    if remote is None:
        return None
    later, before = st.loads(st.dumps(remote)), st.loads(st.dumps(base)) or {}
    if queued is None:
        return dict(later)
    return {**queued, **{k: v for k, v in later.items() if before.get(k, MISSING) != v}}


def _audit_detail(snap: Snapshot, verdict: Verdict) -> dict[str, Any]:
    return {
        "cursor": snap.cursor,
        "local_changed_at": st.dumps(snap.local.changed_at),
        "remote_changed_at": st.dumps(snap.remote.changed_at),
        "remote_version": snap.remote_version,
        "conflicts": list(verdict.conflicts),
        "decisions": [d.to_audit_dict() for d in verdict.decisions],
        "write_local": verdict.write_local,
        "push": verdict.push,
        "remote_now": st.loads(st.dumps(snap.remote_now)),
        "origins": {
            name: {"system": o.system, "changed_at": st.dumps(o.changed_at)}
            for name, o in sorted(snap.field_origins.items())
        },
        "error": snap.error,
    }


def _provenance_of(
    verdict: Verdict, local: Mapping[str, Any] | None, system: str, at: dt.datetime, ignored: Any
) -> tuple[dict[str, Any], str, dt.datetime] | None:
    """The field values a write-back changes, attributed to `system` at `at`."""
    if not verdict.write_local:
        return None
    if verdict.target is None:
        return {RECORD: None}, system, at
    before = local or {}
    changed = {
        name: value
        for name, value in verdict.target.items()
        if name not in ignored and not same(before.get(name, MISSING), value)
    }
    if local is None:
        changed[RECORD] = True
    return changed, system, at


def apply_change(
    project: Project,
    config: DestinationConfig,
    change: RemoteChange,
    policy: ConflictPolicy,
    *,
    types: Types,
) -> Verdict:
    """Decide and apply one feed change (write-back, then state), retrying lost races."""
    for attempt in range(3):
        try:
            return _apply_once(project, config, change, policy, types=types)
        except (sa.exc.IntegrityError, sa.exc.OperationalError):  # lost a race: decide again
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _apply_once(
    project: Project,
    config: DestinationConfig,
    change: RemoteChange,
    policy: ConflictPolicy,
    *,
    types: Types,
) -> Verdict:
    together = same_database(project)
    writer = source_writer(project)
    with writer.begin() as conn:
        state = conn if together else project.state.connect()
        try:
            snap = load_snapshot(
                conn,
                state,
                config,
                change,
                types=types,
                ignored=policy.ignored,
                lock=True,
            )
        finally:
            if not together:
                state.close()
        verdict = decide(snap, policy)
        if verdict.outcome == "already_applied":
            return verdict
        plan_log_id = snap.local.log_id
        if verdict.applies and verdict.write_local:
            plan_log_id = write_local(
                conn,
                snap.subscription_id,
                verdict.target,
                snap.local.record is not None,
                types,
                config.name,
            )
        provenance = _provenance_of(
            verdict, snap.local.record, config.name, snap.remote.changed_at, policy.ignored
        )
        writes = {
            "ref": f"feed:{change.cursor}",
            "window_key": f"reconcile:{snap.subscription_id}",
            "lsn": change.cursor,
            "provenance": provenance,
        }
        if together:
            _state_writes(conn, snap, verdict, plan_log_id, **writes)  # type: ignore[arg-type]
    _crash_point("after_write_back")
    if not together:
        # The state is another database: written right after the write-back committed. A crash
        # in between re-decides the same change to the same merged record (module docstring).
        with project.state.begin() as state_conn:
            _state_writes(state_conn, snap, verdict, plan_log_id, **writes)  # type: ignore[arg-type]
    return verdict


def apply_batch(
    project: Project,
    config: DestinationConfig,
    batch: FeedBatch,
    policy: ConflictPolicy,
    *,
    holder: str | None = None,
) -> ApplyReport:
    """Apply every change of the batch in feed order, under the system's reconcile lease."""
    st.init_sync_state(project.state)
    report = ApplyReport(config.name, batch.after, batch.until)
    who = holder or default_holder()
    with lease(
        project.state, f"reconcile:{config.name}", who, wait_s=project.settings.lease_wait_s
    ):
        with project.source.connect() as conn:
            types = column_types(conn)
        for change in batch.changes:
            verdict = apply_change(project, config, change, policy, types=types)
            report.outcomes[verdict.outcome] += 1
            report.written_back += int(verdict.applies and verdict.write_local)
            report.pushes_planned += int(verdict.applies and verdict.push)
    return report


def load_snapshots(
    project: Project, config: DestinationConfig, batch: FeedBatch, policy: ConflictPolicy
) -> list[Snapshot]:
    """Every change's snapshot, read without locks and without writing (the job's load step).

    The apply step loads and decides again under the row lock, so a row changed in between is
    decided on fresh data, and a later change of the same subscription sees the write-back of
    an earlier one; these snapshots are what the run reports it planned.
    """
    st.init_sync_state(project.state)
    with project.source.connect() as conn, project.state.connect() as state:
        types = column_types(conn)
        return [
            load_snapshot(
                conn, state, config, change, types=types, ignored=policy.ignored, lock=False
            )
            for change in batch.changes
        ]


# -- pushing -----------------------------------------------------------------------------------


@dataclass
class PushReport:
    system: str
    pushed: int = 0
    deferred: int = 0  # waiting for the window delivery to send earlier changes
    obsolete: int = 0  # the delivery brought the remote a newer image since
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, int | str]:
        return {
            "system": self.system,
            "pushed": self.pushed,
            "push_deferred": self.deferred,
            "push_obsolete": self.obsolete,
            "push_failed": self.failed,
        }


def _push_row(push: st.Push, types: Types) -> dict[str, Any]:
    """A change row for the destination's mapping (`_origin` is not the destination)."""
    meta = {"_lsn": push.lsn, "_origin": "reconcile", "_schema_version": 0}
    if push.record is None:
        return {
            **meta,
            "_op": "d",
            "_deleted": True,
            "_changed_at": st.now(),
            "id": push.subscription_id,
            "version": push.delete_version or 0,
        }
    record = normalize(push.record, types) or {}
    changed = (
        record.get("updated_at") if isinstance(record.get("updated_at"), dt.datetime) else st.now()
    )
    return {**meta, "_op": "u", "_deleted": False, "_changed_at": changed, **record}


def push_pending(
    project: Project,
    config: DestinationConfig,
    *,
    client: DeliveryClient | None = None,
) -> PushReport:
    """Send the pending pushes of one system whose turn has come (see the module docstring)."""
    st.init_sync_state(project.state)
    report = PushReport(config.name)
    pending = st.pending_pushes(project.state, config.name)
    if not pending:
        return report
    own = client is None
    active = client or config.client()
    try:
        watermark = project.watermarks.get(config.name)
        with project.source.connect() as conn:
            types = column_types(conn)
        for push in pending:
            with project.source.connect() as conn:
                newer = changed_after(
                    conn, push.subscription_id, push.plan_log_id, config.name, types, watermark
                )
                waiting = undelivered_until(
                    conn, push.subscription_id, push.plan_log_id, config.name, watermark
                )
            if newer is not None:
                with project.state.begin() as s:
                    st.settle_push(s, push.id, "obsolete")
                report.obsolete += 1
                continue
            if waiting:
                report.deferred += 1
                continue
            _crash_point("before_push")
            items = active.prepare([_push_row(push, types)], window_key=push.window_key)
            (result,) = active.send(items)
            with project.state.begin() as s:
                if result.status == "dead_letter":
                    st.settle_push(s, push.id, "pending", result.error, attempted=True)
                    report.failed += 1
                    report.errors.append(f"{push.idempotency_key}: {result.error}")
                    continue
                st.settle_push(s, push.id, "sent", attempted=True)
                held_version = (
                    _version(push.record) if push.record is not None else push.delete_version
                )
                st.mark_held(
                    s,
                    config.name,
                    push.subscription_id,
                    push.record,
                    held_version,
                    push.plan_log_id,
                )
            report.pushed += 1
    finally:
        if own:
            active.close()
    return report


# -- one system, start to end ------------------------------------------------------------------


@dataclass(frozen=True)
class ReconcileReport:
    applied: ApplyReport
    pushes: PushReport
    cursor: int

    def metadata(self) -> dict[str, int | str]:
        return {**self.applied.metadata(), **self.pushes.metadata(), "applied_cursor": self.cursor}


def reconcile_system(
    project: Project,
    config: DestinationConfig,
    policy: ConflictPolicy,
    *,
    until: int | None = None,
    holder: str | None = None,
    client: DeliveryClient | None = None,
    page_size: int = 100,
    max_changes: int = 10_000,
) -> ReconcileReport:
    """Fetch (at most `max_changes`), decide, apply, push and advance the cursor of one system."""
    st.init_sync_state(project.state)
    own = client is None
    active = client or config.client()
    try:
        with project.state.connect() as conn:
            after = st.get_cursor(conn, config.name).applied
        batch = fetch_batch(active, after, until, page_size=page_size, max_changes=max_changes)
        applied = apply_batch(project, config, batch, policy, holder=holder)
        pushes = push_pending(project, config, client=active)
        cursor = st.advance_applied(project.state, config.name, batch.until)
    finally:
        if own:
            active.close()
    return ReconcileReport(applied, pushes, cursor)


# -- the manual queue --------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolveReport:
    conflict_id: int
    destination: str
    subscription_id: str
    take: str
    target: dict[str, Any] | None
    written_back: bool
    push_planned: bool
    pushes: PushReport


def parse_sets(pairs: Sequence[str], types: Types) -> dict[str, Any]:
    """`field=value` pairs, each value converted to its column's type (`null` for NULL)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ReconcileError(f"--set {pair!r}: expected field=value")
        if name not in types or name in ("id", "version", "updated_at"):
            settable = ", ".join(n for n in types if n not in ("id", "version", "updated_at"))
            raise ReconcileError(f"--set {name}: not a settable field ({settable})")
        if raw == "null":
            out[name] = None
            continue
        try:
            out[name] = convert(raw, types[name])
        except BadValue as exc:
            raise ReconcileError(f"--set {name}={raw!r}: {exc}") from None
    return out


def resolve_conflict(
    project: Project,
    destinations: DestinationsConfig,
    conflict_id: int,
    take: Take,
    sets: Sequence[str] = (),
    *,
    client: DeliveryClient | None = None,
) -> ResolveReport:
    """Settle a queued conflict and apply it like a reconcile decision: write-back (origin = the
    system), sync base, audit entry, and a push of the result under `<system>:resolve:<id>`."""
    st.init_sync_state(project.state)
    conflict = st.get_conflict(project.state, conflict_id)
    if conflict is None:
        raise ReconcileError(f"no conflict {conflict_id}; see `subscription-export conflicts list`")
    if conflict.status != "open":
        raise ReconcileError(f"conflict {conflict_id} is already {conflict.status}")
    config = feed_system(destinations, conflict.destination)
    together = same_database(project)
    with source_writer(project).begin() as conn:
        types = column_types(conn)
        overrides = parse_sets(sets, types)
        local = read_local(conn, conflict.subscription_id, types, lock=True)
        base = normalize(conflict.base, types)
        remote = normalize(conflict.remote, types)
        target = _taken(conflict, take, base, local, remote, overrides)
        sent = changed_after(
            conn, conflict.subscription_id, conflict.base_log_id, config.name, types
        )
        remote_now = sent.record if sent else remote
        remote_now_version = sent.version if sent else conflict.remote_version
        snap = Snapshot(
            destination=config.name,
            subscription_id=conflict.subscription_id,
            cursor=0,
            base=base,
            base_log_id=conflict.base_log_id,
            local=local,
            remote=SideState(config.name, conflict.remote_changed_at, remote),
            remote_version=conflict.remote_version,
            remote_now=remote_now,
            remote_now_version=remote_now_version,
            remote_now_log_id=sent.id if sent else conflict.base_log_id,
            field_origins={},
            record_origin=Origin(SOURCE, st.now()),
        )
        policy = ConflictPolicy(Strategy.MANUAL)
        verdict = _finish(snap, policy, "resolved", target, tuple(conflict.fields), ())
        if verdict.write_local and verdict.target is not None:  # a person's edit, made now
            verdict = replace(verdict, target={**verdict.target, "updated_at": st.now()})
        plan_log_id = local.log_id
        if verdict.write_local:
            plan_log_id = write_local(
                conn,
                conflict.subscription_id,
                verdict.target,
                local.record is not None,
                types,
                config.name,
            )
        provenance = _provenance_of(verdict, local.record, SOURCE, st.now(), policy.ignored)
        writes: dict[str, Any] = {
            "ref": f"conflict:{conflict_id}",
            "window_key": f"resolve:{conflict.subscription_id}",
            "lsn": conflict_id,
            "provenance": provenance,
            "conflict_id": conflict_id,
        }
        resolution = {"take": take, "set": sorted(overrides), "final": verdict.target}
        writes["note"] = {"take": take, "set": st.loads(st.dumps(overrides))}
        if together:
            _state_writes(conn, snap, verdict, plan_log_id, **writes)
            st.close_conflict(conn, conflict_id, resolution)
    _crash_point("after_write_back")
    if not together:
        with project.state.begin() as state_conn:
            _state_writes(state_conn, snap, verdict, plan_log_id, **writes)
            st.close_conflict(state_conn, conflict_id, resolution)
    pushes = push_pending(project, config, client=client)
    return ResolveReport(
        conflict_id,
        config.name,
        conflict.subscription_id,
        take,
        verdict.target,
        verdict.write_local,
        verdict.push,
        pushes,
    )


def _taken(
    conflict: st.Conflict,
    take: Take,
    base: dict[str, Any] | None,
    local: LocalState,
    remote: dict[str, Any] | None,
    overrides: Mapping[str, Any],
) -> dict[str, Any] | None:
    """The record a person chose: the current local row, the remote's version, or the
    three-way merge with every conflicting field given by `--set`."""
    if take == "local":
        chosen = local.record
    elif take == "remote":
        chosen = remote
    elif take == "merged":
        if (local.record is None) != (remote is None):
            raise ReconcileError(
                f"conflict {conflict.id}: one side deleted the record; take local or remote"
            )
        diff = detect(base, local.record, remote)
        missing = [f for f in diff.conflicts if f not in overrides and f != RECORD]
        if missing:
            raise ReconcileError(
                f"conflict {conflict.id}: --take merged needs --set for {', '.join(missing)}"
            )
        chosen = None
        if local.record is not None:
            chosen = dict(local.record)
            for f in diff.of(Change.REMOTE_ONLY):
                if f.remote is MISSING:
                    chosen.pop(f.field, None)
                else:
                    chosen[f.field] = f.remote
    else:
        raise ReconcileError(f"--take {take!r}: choose local, remote or merged")
    if chosen is None:
        if overrides:
            raise ReconcileError(f"conflict {conflict.id}: cannot --set fields of a deletion")
        return None
    return {**chosen, **overrides}


def describe_conflict(conflict: st.Conflict) -> dict[str, Any]:
    """JSON-ready view for `conflicts show`."""
    out = dict(conflict.__dict__)
    for key in ("local_changed_at", "remote_changed_at", "created_at", "updated_at", "resolved_at"):
        out[key] = st.loads(st.dumps(out[key]))
    return out


def history(project: Project, subscription_id: str) -> list[dict[str, Any]]:
    """Every decision about a subscription, oldest first (for `conflicts history`)."""
    st.init_sync_state(project.state)
    return [entry.to_dict() for entry in st.history(project.state, subscription_id)]
