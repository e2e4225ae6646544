"""The push step: the outbox's pending merged records sent to a system under their fixed
idempotency keys, once the window delivery has sent it every earlier change of the
subscription (the ERP refuses a version older than the one it holds), and dropped as obsolete
when the delivery has since brought it a newer image (built on the merged record).

A push the system does not accept stays pending for the next run, at most
`push_max_attempts` times (a setting); then it becomes a dead letter of the destination
(`push_letters`), which `dead-letters replay|discard` settle like any other. `due_pushes` says
whether a run has anything to do, so the sensor and `run --once` start one for pushes alone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

from subscription_export.delivery.clients import DeliveryClient
from subscription_export.delivery.columns import destination_table
from subscription_export.delivery.config import DestinationConfig
from subscription_export.delivery.dead_letters import held_subscriptions
from subscription_export.reconcile.apply import crash_point
from subscription_export.reconcile.outbox import Push, pending_pushes, settle_many
from subscription_export.reconcile.push_letters import dead_letter_push, settle_dead_lettered
from subscription_export.reconcile.source_batch import delivery_marks
from subscription_export.reconcile.source_side import Types, destination_types, normalize
from subscription_export.reconcile.sync_bases import mark_held_many
from subscription_export.reconcile.sync_state import init_sync_state, now
from subscription_export.reconcile.three_way import version_of
from subscription_export.runtime import Project


@dataclass
class PushReport:
    system: str
    pushed: int = 0
    deferred: int = 0  # waiting for the window delivery to send earlier changes
    obsolete: int = 0  # the delivery brought the remote a newer image since
    failed: int = 0  # kept pending for the next run
    dead_lettered: int = 0  # out of attempts: now a dead letter of the destination
    errors: list[str] = field(default_factory=list)
    # the subset of `errors` whose push is now a dead letter: runs no longer re-send those,
    # only `dead-letters replay` does, so callers must not call them "kept for the next run"
    dead_letter_errors: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, int | str]:
        return {
            "system": self.system,
            "pushed": self.pushed,
            "push_deferred": self.deferred,
            "push_obsolete": self.obsolete,
            "push_failed": self.failed,
            "push_dead_lettered": self.dead_lettered,
        }


def _push_row(push: Push, types: Types) -> dict[str, Any]:
    """A change row for the destination's mapping (`_origin` is not the destination)."""
    meta = {"_lsn": push.lsn, "_origin": "reconcile", "_schema_version": 0}
    if push.record is None:
        return {
            **meta,
            "_op": "d",
            "_deleted": True,
            "_changed_at": now(),
            "id": push.subscription_id,
            "version": push.delete_version or 0,
        }
    record = normalize(push.record, types) or {}
    changed = (
        record.get("updated_at") if isinstance(record.get("updated_at"), dt.datetime) else now()
    )
    return {**meta, "_op": "u", "_deleted": False, "_changed_at": changed, **record}


def push_pending(
    project: Project,
    config: DestinationConfig,
    *,
    client: DeliveryClient | None = None,
) -> PushReport:
    """Send the pending pushes of one system whose turn has come."""
    init_sync_state(project.state)
    report = PushReport(config.name)
    settle_dead_lettered(project.state, config.name)
    pending = pending_pushes(project.state, config.name)
    if not pending:
        return report
    own = client is None
    active = client or config.client()
    try:
        types = destination_types(project, config)
        turns = _turns(project, config, pending)
        obsolete = [p for p in pending if turns[p.id] == "obsolete"]
        if obsolete:
            with project.state.begin() as s:
                settle_many(s, [(p.id, "obsolete", None) for p in obsolete])
        report.obsolete += len(obsolete)
        report.deferred += sum(turns[p.id] == "deferred" for p in pending)
        due = [p for p in pending if turns[p.id] == "now"]
        if due:
            _send(project, active, due, types, report)
    finally:
        if own:
            active.close()
    return report


def due_pushes(project: Project, config: DestinationConfig) -> list[Push]:
    """Pending pushes a run would send or drop now (not those still waiting for the delivery)."""
    init_sync_state(project.state)
    pending = pending_pushes(project.state, config.name)
    if not pending:
        return []
    turns = _turns(project, config, pending)
    return [p for p in pending if turns[p.id] != "deferred"]


Turn = Literal["obsolete", "deferred", "now"]


def _turns(project: Project, config: DestinationConfig, pending: list[Push]) -> dict[int, Turn]:
    """Per push: whether the delivery has since sent a newer image, still owes an earlier change
    (or holds the record back behind an open dead letter), or the push may go now. One query
    for all of them (`delivery_marks`)."""
    system, table = config.name, destination_table(project, config)
    watermark = project.watermarks.get(system)
    held = held_subscriptions(project.state, system)
    idents = {p.subscription_id for p in pending if p.subscription_id not in held}
    with project.source.connect() as conn:
        marks = delivery_marks(conn, idents, table, system, watermark)
    turns: dict[int, Turn] = {}
    for push in pending:
        mark = marks.get(push.subscription_id)
        if mark is None:
            turns[push.id] = "deferred"
        elif mark.last_sent is not None and mark.last_sent > push.plan_log_id:
            turns[push.id] = "obsolete"
        elif mark.first_unsent is not None and mark.first_unsent <= push.plan_log_id:
            turns[push.id] = "deferred"
        else:
            turns[push.id] = "now"
    return turns


def _send(
    project: Project, client: DeliveryClient, pushes: list[Push], types: Types, report: PushReport
) -> None:
    """Send every due push in one `send` (batch APIs get them in batches; the client keeps a
    record's pushes in order), then settle them in one state transaction."""
    crash_point("before_push")
    rows = [_push_row(push, types) for push in pushes]
    items = [
        item
        for push, row in zip(pushes, rows, strict=True)
        for item in client.prepare([row], window_key=push.window_key)
    ]
    results = client.send(items)
    refused, sent, kept = [], [], []
    for push, item, row, result in zip(pushes, items, rows, results, strict=True):
        if result.status != "dead_letter":
            sent.append(push)
            continue
        error = f"{push.idempotency_key}: {result.error}"
        report.errors.append(error)
        if push.attempts + 1 >= project.settings.push_max_attempts:
            refused.append((push, item, row, result))
            report.dead_letter_errors.append(error)
        else:  # kept pending: the next run re-sends it under the same key
            kept.append((push.id, "pending", result.error))
    with project.state.begin() as s:
        settle_many(s, [(p.id, "sent", None) for p in sent] + kept, attempted=True)
        mark_held_many(s, report.system, [_held(p) for p in sent])
    report.pushed += len(sent)
    report.failed += len(kept)
    for push, item, row, result in refused:
        dead_letter_push(project.state, push, item, row, result)
        report.dead_lettered += 1


def _held(push: Push) -> tuple[str, dict[str, Any] | None, int | None, int]:
    """What the remote holds once the push reached it (`mark_held_many`)."""
    record = push.record
    version = version_of(record) if record is not None else push.delete_version
    return push.subscription_id, record, version, push.plan_log_id
