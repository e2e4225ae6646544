"""The outbox: pending merged records pushed to a system under fixed idempotency keys, once the
window delivery has sent it every earlier change of the subscription.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from subscription_export.delivery.clients import DeliveryClient
from subscription_export.delivery.config import DestinationConfig
from subscription_export.reconcile import sync_state as st
from subscription_export.reconcile.apply import crash_point
from subscription_export.reconcile.source_side import (
    Types,
    changed_after,
    column_types,
    normalize,
    undelivered_until,
    version_of,
)
from subscription_export.runtime import Project

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
    """Send the pending pushes of one system whose turn has come (see "Why pushes wait" in the
    `sync.reconcile` docstring)."""
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
            crash_point("before_push")
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
                    version_of(push.record) if push.record is not None else push.delete_version
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
