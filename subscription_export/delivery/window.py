"""Deliver one exported window to one destination, exactly once in effect, in LSN order.

What a call does (`deliver_window`), and why:

1. **Earlier windows first.** The ERP and CRM refuse a version older than the one they hold, so
   delivering window 2 before window 1 would turn window 1's good changes into stale-version
   dead letters. A destination therefore takes windows strictly in order: before its own
   window, a call delivers every earlier window the destination has not completed (waiting,
   up to `lease_wait_s`, for a window whose Parquet export has not finished yet - its run is
   probably in flight; then `DeliveryOrderError`, which Dagster's step retry repeats).
2. **Under a lease** `"{destination}:{window}"`, so two runs never send the same window at
   once; a window already completed is not sent again (only the watermark is advanced, which
   covers a crash between recording and advancing).
3. **Read the window's Parquet file in batches** of `read_batch_size` rows and `deliver` each
   batch (bounded concurrency, one lane per subscription, see `dispatch`). Batches follow
   each other, so each subscription's changes still arrive in LSN order. Accounting gets each
   subscription's image before the window from the source change log (`prior_state`), chained
   from batch to batch. Rows whose `_origin` is this destination are echoes of its own
   write-backs and are skipped (`skipped` in the metrics).
4. **Dead letters** are recorded at the end, all in one transaction (so a window that has dead
   letters was delivered to its end once); open dead letters of this window whose change got
   through this time are marked `replayed`.
5. **Complete and advance**: unless the policy is `block` and the window has an open dead
   letter, record the window as completed for the destination (`record_completed`, consumer =
   the destination name) and `advance` its watermark contiguously.

Policy `block` (default): a window with an open dead letter is not completed, so **the
destination's watermark stops before that whole window** (watermarks move by windows, never
inside one), and later windows are refused with `DestinationBlocked` - the whole window, and
everything after it, waits until its dead letters are replayed (`replay_dead_letters`, which
then completes the window and catches up the windows behind it) or discarded. The other changes
of the blocked window have been delivered already; that is harmless because every operation is
keyed and re-sending it is answered from the remote's idempotency store. Policy `skip`:
dead letters are recorded, the window completes, the watermark moves on.

Crash safety: every operation's idempotency key is derived from (destination, window, LSN), so
re-running a window after a kill at any point re-sends the same keys with the same bodies and
the remote applies each once. The lease of a killed holder expires after its TTL; a re-run with
the same holder name takes it over at once.

Deletes: the ERP answers 404 `not_found` for a record it does not have, which the client
counts as delivered (already deleted; another 404 is a dead letter); the CRM answers `ok`
with `absent`; accounting books the refund of the deleted subscription's recognized price
whatever the remote holds (it is a ledger). No Dagster import here: the assets in
`defs/destinations.py` and the CLI call these functions.

Where each part lives: ordering and catch-up in `ordering`, one window's pass in `one_window`
(its accounting prior images in `prior_state`), outcomes and errors in `outcome`, replay in
`replay`. This module keeps the entry points where the Dagster assets, the runner and the CLI
import them.
"""

from subscription_export.delivery.ordering import (
    catch_up,
    deliver_window,
    lagging_window,
    pending_windows,
)
from subscription_export.delivery.outcome import (
    DeliveryOrderError,
    DestinationBlocked,
    Status,
    WindowDeliveryOutcome,
    blocked_message,
)
from subscription_export.delivery.replay import (
    DestinationConfigMissing,
    ReplaySummary,
    replay_dead_letters,
)

__all__ = [
    "DeliveryOrderError",
    "DestinationBlocked",
    "DestinationConfigMissing",
    "ReplaySummary",
    "Status",
    "WindowDeliveryOutcome",
    "blocked_message",
    "catch_up",
    "deliver_window",
    "lagging_window",
    "pending_windows",
    "replay_dead_letters",
]
