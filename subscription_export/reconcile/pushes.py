"""The push step: the outbox's pending merged records sent to a system under their fixed
idempotency keys, once the window delivery has sent it every earlier change of the
subscription (the ERP refuses a version older than the one it holds), and dropped as obsolete
when the delivery has since brought it a newer image (built on the merged record).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

from subscription_export.delivery.clients import DeliveryClient
from subscription_export.delivery.config import DestinationConfig
from subscription_export.reconcile.apply import crash_point
from subscription_export.reconcile.outbox import Push, pending_pushes, settle_push
from subscription_export.reconcile.source_side import (
    Types,
    changed_after,
    column_types,
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
    pending = pending_pushes(project.state, config.name)
    if not pending:
        return report
    own = client is None
    active = client or config.client()
    try:
        watermark = project.watermarks.get(config.name)
        with project.source.connect() as conn:
            types = column_types(conn)
        for push in pending:
            turn = _turn(project, push, config.name, types, watermark)
            if turn == "obsolete":
                with project.state.begin() as s:
                    settle_push(s, push.id, "obsolete")
                report.obsolete += 1
            elif turn == "deferred":
                report.deferred += 1
            else:
                _send(project, active, push, types, report)
    finally:
        if own:
            active.close()
    return report


def _turn(
    project: Project, push: Push, system: str, types: Types, watermark: int
) -> Literal["obsolete", "deferred", "now"]:
    """Whether the delivery has since sent a newer image, still owes an earlier change, or the
    push may go now."""
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
    project: Project, client: DeliveryClient, push: Push, types: Types, report: PushReport
) -> None:
    crash_point("before_push")
    items = client.prepare([_push_row(push, types)], window_key=push.window_key)
    (result,) = client.send(items)
    with project.state.begin() as s:
        if result.status == "dead_letter":  # kept pending: the next run re-sends it
            settle_push(s, push.id, "pending", result.error, attempted=True)
            report.failed += 1
            report.errors.append(f"{push.idempotency_key}: {result.error}")
            return
        settle_push(s, push.id, "sent", attempted=True)
        held_version = version_of(push.record) if push.record is not None else push.delete_version
        mark_held(
            s, report.system, push.subscription_id, push.record, held_version, push.plan_log_id
        )
    report.pushed += 1
