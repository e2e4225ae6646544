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
from subscription_export.delivery.config import DestinationConfig
from subscription_export.delivery.dead_letters import held_subscriptions
from subscription_export.reconcile.apply import crash_point
from subscription_export.reconcile.outbox import Push, pending_pushes, settle_push
from subscription_export.reconcile.push_letters import dead_letter_push, settle_dead_lettered
from subscription_export.reconcile.source_side import (
    Types,
    changed_after,
    destination_types,
    normalize,
    undelivered_until,
)
from subscription_export.reconcile.sync_bases import mark_held
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
        watermark = project.watermarks.get(config.name)
        held = held_subscriptions(project.state, config.name)
        types = destination_types(project, config)
        due: list[Push] = []
        for push in pending:
            turn = _turn(project, push, config.name, types, watermark, held)
            if turn == "obsolete":
                with project.state.begin() as s:
                    settle_push(s, push.id, "obsolete")
                report.obsolete += 1
            elif turn == "deferred":
                report.deferred += 1
            else:
                due.append(push)
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
    watermark = project.watermarks.get(config.name)
    held = held_subscriptions(project.state, config.name)
    types = destination_types(project, config)
    return [
        p for p in pending if _turn(project, p, config.name, types, watermark, held) != "deferred"
    ]


def _turn(
    project: Project, push: Push, system: str, types: Types, watermark: int, held: set[str]
) -> Literal["obsolete", "deferred", "now"]:
    """Whether the delivery has since sent a newer image, still owes an earlier change (or
    holds the record back behind an open dead letter), or the push may go now."""
    if push.subscription_id in held:
        return "deferred"
    with project.source.connect() as conn:
        newer = changed_after(
            conn, push.subscription_id, push.plan_log_id, system, types, watermark
        )
        if newer is not None:
            return "obsolete"
        if undelivered_until(conn, push.subscription_id, push.plan_log_id, system, watermark):
            return "deferred"
    return "now"


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
    refused = []
    with project.state.begin() as s:
        for push, item, row, result in zip(pushes, items, rows, results, strict=True):
            if result.status != "dead_letter":
                settle_push(s, push.id, "sent", attempted=True)
                record = push.record
                held = version_of(record) if record is not None else push.delete_version
                mark_held(s, report.system, push.subscription_id, record, held, push.plan_log_id)
                report.pushed += 1
                continue
            report.errors.append(f"{push.idempotency_key}: {result.error}")
            if push.attempts + 1 >= project.settings.push_max_attempts:
                refused.append((push, item, row, result))
            else:  # kept pending: the next run re-sends it under the same key
                settle_push(s, push.id, "pending", result.error, attempted=True)
                report.failed += 1
    for push, item, row, result in refused:
        dead_letter_push(project.state, push, item, row, result)
        report.dead_lettered += 1
