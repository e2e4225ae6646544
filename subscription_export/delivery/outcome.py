"""What delivering a window to a destination ends in: its outcome, or an error that stops it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from subscription_export.core.errors import SubscriptionExportError
from subscription_export.state.windows import Window

Status = Literal["delivered", "blocked", "already_delivered"]


class DestinationBlocked(SubscriptionExportError):
    """An earlier window has open dead letters and the policy is `block`."""

    exit_code = 3


class DeliveryOrderError(SubscriptionExportError):
    """An earlier window has not been exported yet, so this one cannot be delivered yet."""

    exit_code = 3


def blocked_message(destination: str, window_key: str, count: int) -> str:
    return (
        f"{destination}: window {window_key} has {count} open dead letter(s) and the policy is"
        f" block; replay them (subscription-export dead-letters replay --destination"
        f" {destination}) or discard them"
    )


@dataclass(frozen=True)
class WindowDeliveryOutcome:
    """What delivering one window did; `metadata()` is what the Dagster asset reports."""

    destination: str
    window: Window
    status: Status
    watermark: int
    rows: int = 0
    sent: int = 0  # rows that needed at least one request
    delivered: int = 0
    skipped: int = 0  # echoes of the destination's own changes, rows that book nothing
    retried: int = 0  # attempts beyond the first, summed over rows
    dead_lettered: int = 0  # rows that ended as dead letters in this call
    open_dead_letters: int = 0  # open dead letters of this window after the call
    batches: int = 0
    elapsed_s: float = 0.0
    batch_latency_p50_s: float = 0.0  # median over read batches' medians (exact for one batch)
    batch_latency_max_s: float = 0.0
    caught_up: tuple[str, ...] = ()  # earlier windows this call delivered first

    @property
    def records_per_s(self) -> float:
        return round(self.rows / self.elapsed_s, 1) if self.elapsed_s > 0 else 0.0

    def metadata(self) -> dict[str, object]:
        return {
            "destination": self.destination,
            "status": self.status,
            "lsn_from": self.window.lo,
            "lsn_to": self.window.hi,
            "rows": self.rows,
            "sent": self.sent,
            "delivered": self.delivered,
            "skipped": self.skipped,
            "retried": self.retried,
            "dead_lettered": self.dead_lettered,
            "open_dead_letters": self.open_dead_letters,
            "batches": self.batches,
            "latency_s": round(self.elapsed_s, 4),
            "batch_latency_p50_s": round(self.batch_latency_p50_s, 4),
            "batch_latency_max_s": round(self.batch_latency_max_s, 4),
            "records_per_s": self.records_per_s,
            "watermark": self.watermark,
            "caught_up_windows": len(self.caught_up),
        }
