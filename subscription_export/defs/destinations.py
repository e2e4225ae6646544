"""Destination sync assets: one per external system, partitioned by CDC window.

`erp_sync`, `crm_sync` and `accounting_sync` (plus `{name}_sync` for any other destination
declared in the destinations file) depend on their table's export (`subscription_changes`
for the default table, `{table}_changes` for another: the destination's `table`) for lineage only
(`deps=`): they read the window's Parquet file themselves, batch by batch, through
`sync.window_delivery.deliver_window`, because delivery needs the rows in bounded batches and
its own lease and watermark bookkeeping, not a loaded object. The blocking checks on
that asset still gate them: a window whose checks fail is never delivered.

A destination missing from the configuration is skipped with a log line and metadata
`configured: False`, so the demo runs without any external system. Under dead-letter policy
`block`, a window left with open dead letters fails the step with `allow_retries=False`
(retrying cannot help; an operator replays or discards), as does a window queued behind one.
Transient trouble (a lease held by another run, an earlier window not exported yet, an
exception) fails the step normally and `STEP_RETRY` retries it.
"""

from pathlib import Path

import dagster as dg

from subscription_export.core.datasets import DEFAULT_TABLE, TableDataset
from subscription_export.defs.assets import STEP_RETRY
from subscription_export.defs.partitions import cdc_windows
from subscription_export.defs.resources import ExportSettings
from subscription_export.defs.stopping import stoppable
from subscription_export.delivery.config import (
    KINDS,
    DestinationsConfig,
    destinations_path,
    load_destinations,
)
from subscription_export.delivery.dead_letters import Policy, blocked_reason, dead_letter_policy
from subscription_export.delivery.window import DestinationBlocked, deliver_window
from subscription_export.state.leases import default_holder
from subscription_export.state.windows import Window, find_window, parse_window_key
from subscription_export.status import dead_letter_hold

SYNC_WINDOW_JOB = "sync_window"
DESTINATIONS_GROUP = "destinations"


class DestinationsResource(dg.ConfigurableResource):
    """Where the destinations file is and what to do with dead letters.

    The file is read (and tokens resolved from the environment) in the run's process, each
    time a sync step starts, so a changed token or file needs no redeploy.
    """

    path: str | None = None  # None: $SUBSCRIPTION_EXPORT_DESTINATIONS, else ./destinations.toml
    on_dead_letter: str | None = None  # None: $SUBSCRIPTION_EXPORT_ON_DEAD_LETTER (block)

    @classmethod
    def from_env(cls) -> "DestinationsResource":
        """The file the environment points at, made absolute so daemon-launched runs find it."""
        found = destinations_path()
        return cls(path=str(found.absolute()) if found else None)

    @classmethod
    def at(cls, path: Path | None) -> "DestinationsResource":
        """The given file (absolute, as for daemon-launched runs); None: `from_env`."""
        return cls.from_env() if path is None else cls(path=str(path.absolute()))

    def load(self) -> DestinationsConfig:
        return load_destinations(self.path)

    def policy(self) -> Policy:
        if self.on_dead_letter is None:
            return dead_letter_policy()
        return dead_letter_policy({"SUBSCRIPTION_EXPORT_ON_DEAD_LETTER": self.on_dead_letter})


def _sync(
    context: dg.AssetExecutionContext,
    name: str,
    settings: ExportSettings,
    destinations: DestinationsResource,
) -> dg.MaterializeResult:
    key = context.partition_key
    lo, hi = parse_window_key(key)
    project = settings.project()
    if find_window(project.state, key) != Window(lo, hi):
        raise dg.Failure(f"{key} is not a window cut by the change-log sensor; not delivered")
    config = destinations.load()
    destination = config.get(name)
    if destination is None:
        context.log.info(
            f"{name} is not configured ({config.describe()}): window {key} is not delivered to"
            f" it; declare [destinations.{name}] to sync it"
        )
        return dg.MaterializeResult(
            metadata={"configured": False, "destination": name},
            check_results=[_held_back(name, None)],
        )
    holder = default_holder(context.run_id)
    try:
        outcome = deliver_window(
            project, destination, Window(lo, hi), holder, policy=destinations.policy()
        )
    except DestinationBlocked as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    metadata = {"configured": True, **outcome.metadata()}
    if outcome.status == "blocked":
        # Raised from the typed error so `run` finds its cause and exit code (defs/failures.py).
        blocked = DestinationBlocked(
            blocked_reason(project.state, name, key, outcome.open_dead_letters)
        )
        raise dg.Failure(
            description=str(blocked),
            metadata=metadata,  # type: ignore[arg-type]
            allow_retries=False,
        ) from blocked
    context.log.info(
        f"{name}: window {key} {outcome.status}: {outcome.delivered} delivered,"
        f" {outcome.skipped} skipped, {outcome.dead_lettered} dead-lettered,"
        f" {outcome.retried} retries, watermark {outcome.watermark}"
        + (f", caught up {len(outcome.caught_up)} earlier window(s)" if outcome.caught_up else "")
    )
    return dg.MaterializeResult(
        metadata=metadata,  # type: ignore[arg-type]
        check_results=[_held_back(name, dead_letter_hold(project, name))],
    )


NO_RECORDS_HELD_BACK = "no_records_held_back"


def _held_back(name: str, hold: str | None) -> dg.AssetCheckResult:
    """Under `skip` a window's step succeeds past its dead letters (the user's choice), yet the
    destination lacks those records' latest state until they are replayed or discarded: the
    run stays green, this check does not (`run` exits 3 for the same)."""
    return dg.AssetCheckResult(
        check_name=NO_RECORDS_HELD_BACK,
        passed=hold is None,
        description=f"{name}: {hold}" if hold else f"{name}: no open dead letter",
        severity=dg.AssetCheckSeverity.ERROR,
    )


def sync_asset(name: str, table: str = DEFAULT_TABLE) -> dg.AssetsDefinition:
    """The `{name}_sync` asset fed by `table`'s export (one definition per name and table per
    process)."""
    if (name, table) not in _assets:

        @dg.asset(
            name=f"{name}_sync",
            partitions_def=cdc_windows,
            deps=[dg.AssetKey(TableDataset(table).name)],
            group_name=DESTINATIONS_GROUP,
            retry_policy=STEP_RETRY,
            kinds={"http"},
            check_specs=[
                dg.AssetCheckSpec(
                    NO_RECORDS_HELD_BACK,
                    asset=f"{name}_sync",
                    blocking=False,
                    partitions_def=cdc_windows,
                    description=f"No open dead letter holds records back from {name}.",
                )
            ],
            description=(
                f"The window's changes delivered to {name} over HTTP (batched, bounded"
                " concurrency, idempotency keys, retries, dead letters); its watermark advances"
                " contiguously."
            ),
        )
        def _asset(
            context: dg.AssetExecutionContext,
            settings: ExportSettings,
            destinations: DestinationsResource,
        ) -> dg.MaterializeResult:
            with stoppable():  # SIGTERM: fail the step without retry (defs/stopping.py)
                return _sync(context, name, settings, destinations)

        _assets[(name, table)] = _asset
    return _assets[(name, table)]


_assets: dict[tuple[str, str], dg.AssetsDefinition] = {}

erp_sync = sync_asset("erp")
crm_sync = sync_asset("crm")
accounting_sync = sync_asset("accounting")


def destination_assets(
    config: DestinationsConfig | None = None, primary: str = DEFAULT_TABLE
) -> list[dg.AssetsDefinition]:
    """The three standard sync assets, plus one per other destination `config` declares; each
    depends on the export of its destination's `table` (default: the first captured table)."""
    extra = [name for name in (config.names if config else []) if name not in KINDS]
    configured = config.destinations if config else {}

    def table_of(name: str) -> str:
        destination = configured.get(name)
        return (destination.table if destination else None) or primary

    return [sync_asset(name, table_of(name)) for name in (*KINDS, *extra)]


sync_window_job = dg.define_asset_job(
    SYNC_WINDOW_JOB,
    selection=dg.AssetSelection.groups(DESTINATIONS_GROUP),
    partitions_def=cdc_windows,
    description="Deliver one CDC window (already exported to Parquet) to every destination.",
)
