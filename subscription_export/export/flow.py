"""The export flow as plain functions: cut windows, export one window to a format, finish it.

Dagster assets, IO managers and sensors call these; so does the CLI.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa
from upath import UPath

from subscription_export.core.columns import METADATA_COLUMNS, SourceColumn
from subscription_export.core.datasets import DEFAULT_DATASET, TableDataset
from subscription_export.core.errors import ExportVerificationError
from subscription_export.export.adoption import newest_version
from subscription_export.export.window import (
    QuarantinedRow,
    WindowStream,
    capture_columns,
    open_window,
)
from subscription_export.formats.contract import DatasetPlan, evolve, parse_mode, restrict
from subscription_export.formats.manifest import build_content, manifest_path, write_manifest
from subscription_export.formats.memory import configure_arrow_memory
from subscription_export.formats.parquet_batches import parquet_batches
from subscription_export.formats.schema import SCHEMA_VERSION_KEY
from subscription_export.formats.storage import is_local, parquet_schema, write_text_atomically
from subscription_export.formats.verify import check_lsn_coverage
from subscription_export.formats.writers import Format, remove_temp_of, write_atomically
from subscription_export.metrics.latency import file_latency_percentiles
from subscription_export.metrics.store import (
    ExportMetrics,
    record_export_metrics,
)
from subscription_export.runtime import Project
from subscription_export.source.catalog import ReservedColumnError, reserved_column_message
from subscription_export.source.reader import range_stats
from subscription_export.source.schema import logs_only
from subscription_export.state.leases import Held, default_holder, lease
from subscription_export.state.progress import (
    CompletedExport,
    advance,
    record_completed,
)
from subscription_export.state.quarantine import held_entries, record_quarantine, revision_of
from subscription_export.state.schema_registry import all_versions as all_schema_versions
from subscription_export.state.schema_registry import latest as latest_schema
from subscription_export.state.schema_registry import register as register_schema
from subscription_export.state.windows import (
    Window,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportOutcome:
    fmt: Format
    window: Window
    path: Path | UPath
    rows: int
    rows_by_op: dict[str, int]
    bytes: int
    sha256: str
    quarantined: list[QuarantinedRow]
    manifest_sha256: str
    schema: pa.Schema
    seconds: float
    dropped_values: dict[str, int] = field(default_factory=dict)  # schema contract discard_value
    latency_s: dict[str, float] = field(default_factory=dict)  # commit → exported: p50, p95, max
    dataset: TableDataset = DEFAULT_DATASET  # whose changes
    # The table's changes in the window counted when it was planned (canonical exports), so
    # the coverage check needs no second scan of the window (~0.3 s per 1M changes).
    source_changes: int | None = None

    @property
    def consumer(self) -> str:
        """The watermark this file advances (`TableDataset.consumer`)."""
        return self.dataset.consumer(self.fmt)

    def metadata(self) -> dict[str, object]:
        dropped = {f"dropped_values.{k}": v for k, v in sorted(self.dropped_values.items())}
        latency = {f"latency_{k}_s": round(v, 3) for k, v in self.latency_s.items()}
        return (
            dropped
            | latency
            | {
                "lsn_from": self.window.lo,
                "lsn_to": self.window.hi,
                "rows": self.rows,
                "rows_created": self.rows_by_op.get("c", 0),
                "rows_updated": self.rows_by_op.get("u", 0),
                "rows_deleted": self.rows_by_op.get("d", 0),
                "quarantined": len(self.quarantined),
                "bytes": self.bytes,
                "sha256": self.sha256,
                "manifest_sha256": self.manifest_sha256,
                "seconds": round(self.seconds, 4),
                "rows_per_s": round(self.rows / self.seconds, 1) if self.seconds > 0 else 0.0,
                "path": str(self.path),
            }
        )


def _write(
    project: Project,
    dataset: TableDataset,
    fmt: Format,
    window: Window,
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    path: Path | UPath,
    rows_by_op: dict[str, int] | None,
    quarantined: list[QuarantinedRow],
    before_record: Callable[[], None] = lambda: None,
) -> ExportOutcome:
    started = dt.datetime.now(dt.UTC)
    written = write_atomically(
        fmt,
        batches,
        schema,
        path,
        neutralize_formulas=project.settings.csv_neutralize_formulas,
    )
    counts = rows_by_op if rows_by_op is not None else {}
    # The window's revision (any table's replay raises it) with this table's recovered LSNs.
    revision, recovered = revision_of(project.state, window.key, dataset.name)
    content = build_content(
        asset=dataset.asset(fmt),
        fmt=fmt,
        window_key=window.key,
        lo=window.lo,
        hi=window.hi,
        schema=schema,
        rows_by_op=counts,
        quarantined=len(quarantined),
        written=written,
        export_dir=project.settings.export_dir,
        revision=revision,
        recovered_lsns=recovered,
    )
    before_record()  # e.g. a lease check: a holder that lost its lease writes no manifest
    manifest = write_manifest(
        manifest_path(project.settings.export_dir, dataset.asset(fmt), window.key), content
    )
    seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
    return ExportOutcome(
        fmt,
        window,
        path,
        written.rows,
        dict(counts),
        written.bytes,
        written.sha256,
        quarantined,
        manifest.content_sha256,
        schema,
        seconds,
        dataset=dataset,
    )


def plan_dataset(
    project: Project,
    lo: int,
    hi: int,
    held: Collection[int] = (),
    dataset: TableDataset | None = None,
) -> tuple[DatasetPlan, int]:
    """The window's dataset schema under the schema contract, and its registered version.
    `held`: quarantined LSNs kept out of the files (they do not widen the schema); `dataset`:
    whose changes (None: the first captured table's)."""
    plan, version, _changes = _planned(project, lo, hi, held, dataset)
    return plan, version


def _planned(
    project: Project,
    lo: int,
    hi: int,
    held: Collection[int] = (),
    dataset: TableDataset | None = None,
) -> tuple[DatasetPlan, int, int]:
    """`plan_dataset`, and the table's changes in [lo, hi] (counted by the same scan)."""
    dataset = dataset or project.primary
    capture, present, changes = capture_columns(project.source, lo, hi, dataset.table)
    if not present:
        plan, version = _plan_without_changes(project, dataset, lo, hi, capture)
        _refuse_reserved(dataset.table, plan.columns)
        return plan, version, changes
    _refuse_reserved(dataset.table, [c for v in present for c in capture[v]])
    # No change of the window carries one, so the column a rename retired (capture versions
    # before the rename and `init`) is left out rather than kept as a dropped column would be.
    capture = {v: _without_reserved(columns) for v, columns in capture.items()}
    mode = parse_mode(project.settings.schema_contract)
    reference = latest_schema(project.state, dataset.name)
    first = present[max(present)]
    if mode == "evolve" or reference is None:
        newest, first = newest_version(
            project.source, lo, hi, capture, present, held, dataset.table
        )
        plan = evolve(capture, newest)
    else:
        plan = restrict(reference.columns, capture, present, mode)
    _refuse_reserved(dataset.table, plan.columns)  # `freeze` & co. keep a registered one
    version = register_schema(project.state, plan.columns, first_lsn=first, dataset=dataset.name)
    return plan, version, changes


def _refuse_reserved(table: str, columns: Iterable[SourceColumn]) -> None:
    """A table registered before `init` refused metadata-named columns (`_deleted`, ...)
    would get files with two columns of one name: fail the window as `init` fails the table."""
    reserved = list(dict.fromkeys(c.name for c in columns if c.name in METADATA_COLUMNS))
    if reserved:
        raise ReservedColumnError(reserved_column_message(table, reserved))


def _without_reserved(columns: tuple[SourceColumn, ...]) -> tuple[SourceColumn, ...]:
    return tuple(c for c in columns if c.name not in METADATA_COLUMNS)


def _plan_without_changes(
    project: Project,
    dataset: TableDataset,
    lo: int,
    hi: int,
    capture: dict[int, tuple[SourceColumn, ...]],
) -> tuple[DatasetPlan, int]:
    """A window with no change of the table still gets its (empty) file, so each consumer's
    watermark stays contiguous. Its schema is the table's dataset version in force at the
    window: the newest registered at or before `hi`, so a re-export gives the same bytes; the
    table's first window registers its newest capture schema."""
    registered = [v for v in all_schema_versions(project.state, dataset.name) if v.first_lsn <= hi]
    if registered:
        return DatasetPlan(registered[-1].columns, {}), registered[-1].version
    plan = evolve(capture, max(capture))
    version = register_schema(project.state, plan.columns, first_lsn=lo, dataset=dataset.name)
    return DatasetPlan(plan.columns, {}), version


def stream_window(
    project: Project,
    window: Window,
    release: Collection[int] = (),
    dataset: TableDataset | None = None,
) -> WindowStream:
    """The window as a normal export reads it: changes still in the quarantine (open or
    discarded) stay out, except those in `release` (what `quarantine replay` tries again).
    `dataset`: whose changes (None: the first captured table's)."""
    dataset = dataset or project.primary
    held = {
        k: v
        for k, v in held_entries(project.state, window.key, dataset.name).items()
        if k not in release
    }
    plan, version, changes = _planned(project, window.lo, window.hi, held, dataset)
    # One captured table: read the log unfiltered, as the single-table releases did (measured
    # ~14% faster on a 200k-row PostgreSQL window, docs/architecture.md "Several tables").
    only = logs_only(project.source, dataset.table)
    stream = open_window(
        project.source,
        window.lo,
        window.hi,
        project.settings.read_batch_size,
        plan,
        version,
        None if only else dataset.table,
    )
    stream.held = held
    stream.source_changes = changes
    return stream


def export_canonical(
    project: Project,
    window: Window,
    path: Path | UPath | None = None,
    before_record: Callable[[], None] = lambda: None,
    dataset: TableDataset | None = None,
) -> ExportOutcome:
    """Source → Parquet (the canonical copy the other formats are made from); `before_record`
    runs after the file is written, before its manifest and anything in the state."""
    dataset = dataset or project.primary
    stream = stream_window(project, window, dataset=dataset)
    target = path or project.file_path("parquet", window.key, dataset)
    outcome = _write(
        project,
        dataset,
        "parquet",
        window,
        stream.schema,
        stream.batches(),
        target,
        stream.rows_by_op,
        stream.quarantined,
        before_record,
    )
    outcome = replace(
        outcome,
        dropped_values=dict(stream.dropped_values),
        source_changes=stream.source_changes,
    )
    # Re-exporting replaces the window's quarantine, so a fixed row leaves it.
    record_quarantine(project.state, window.key, stream.quarantined, dataset.name)
    write_quarantine_file(project.settings.export_dir, window.key, stream.quarantined, dataset)
    return outcome


def write_quarantine_file(
    export_dir: Path | UPath,
    window_key: str,
    rows: list[QuarantinedRow],
    dataset: TableDataset = DEFAULT_DATASET,
) -> None:
    """`_quarantine/{window}.jsonl` (another table's: `_quarantine/{dataset}/{window}.jsonl`):
    one line per row that could not be exported."""
    folder = export_dir / "_quarantine"
    path = (folder if dataset.legacy else folder / dataset.name) / f"{window_key}.jsonl"
    if not rows:
        if is_local(path) or path.exists():  # spares an object store a needless DELETE
            path.unlink(missing_ok=True)
        return
    lines = (
        json.dumps({"lsn": r.lsn, "field": r.field, "reason": r.reason, "raw": r.raw}) + "\n"
        for r in rows
    )
    write_text_atomically(path, "".join(lines))


def parquet_counts(path: Path | UPath) -> dict[str, int]:
    """Rows by `_op`, one row group at a time."""
    counts: Counter[str] = Counter()
    for batch in parquet_batches(path, columns=["_op"]):
        counts.update(
            {v["values"]: v["counts"] for v in batch.column(0).value_counts().to_pylist()}
        )
    return dict(counts)


def export_derived(
    project: Project,
    fmt: Format,
    window: Window,
    parquet: Path | UPath,
    path: Path | UPath | None = None,
    before_record: Callable[[], None] = lambda: None,
    dataset: TableDataset | None = None,
) -> ExportOutcome:
    """Parquet → CSV/JSONL, streamed batch by batch (`before_record`: see export_canonical)."""
    if fmt == "parquet":
        raise ValueError("parquet is the canonical export; use export_canonical")
    dataset = dataset or project.primary
    schema = parquet_schema(parquet)
    target = path or project.file_path(fmt, window.key, dataset)
    batches = parquet_batches(parquet, project.settings.read_batch_size)
    counts = parquet_counts(parquet)
    return _write(project, dataset, fmt, window, schema, batches, target, counts, [], before_record)


def export_window_file(
    project: Project,
    fmt: Format,
    window: Window,
    path: Path | UPath | None = None,
    parquet: Path | UPath | None = None,
    holder: str | None = None,
    dataset: TableDataset | None = None,
) -> tuple[ExportOutcome, int]:
    """Export one window of one table (`dataset`; None: the first captured table) to one
    format under a lease, record it, advance the watermark.

    A second run of the same (format, window) waits for the first, then re-exports: the bytes
    are identical and the watermark advance is a no-op, so the result is the same either way.
    """
    configure_arrow_memory()
    who = holder or default_holder()
    settings = project.settings
    dataset = dataset or project.primary
    with lease(
        project.state,
        f"{dataset.consumer(fmt)}:{window.key}",
        who,
        wait_s=settings.lease_wait_s,
        ttl_s=settings.lease_ttl_s,
    ) as held:
        target = path or project.file_path(fmt, window.key, dataset)
        _remove_dead_holders_temp(project, dataset.asset(fmt), window, target, held)
        if fmt == "parquet":
            outcome = export_canonical(project, window, target, held.check, dataset)
            _verify_canonical(project, outcome)
        else:
            # Only a Parquet file its manifest vouches for (written last) is read.
            source = parquet or project.published_file("parquet", window.key, dataset)
            outcome = export_derived(project, fmt, window, source, target, held.check, dataset)
        held.check()  # again, right before the completion and the watermark
        mark, metrics = finish(project, outcome)
        latency = {
            "p50": metrics.latency_p50_s,
            "p95": metrics.latency_p95_s,
            "max": metrics.latency_max_s,
        }
        return replace(outcome, latency_s={k: v for k, v in latency.items() if v is not None}), mark


def _remove_dead_holders_temp(
    project: Project, asset: str, window: Window, target: Path, held: Held
) -> None:
    """A holder killed mid-write left `.{name}.{pid}.tmp` beside the file or its manifest:
    removed when its lease is taken over from it, and only when its process is certainly gone
    (this host), so a live writer's temp file is never touched."""
    previous = held.took_over.process if held.took_over else None
    if previous is None or not held.holder_gone:
        return
    manifest = manifest_path(project.settings.export_dir, asset, window.key)
    for leftover in (target, manifest):
        if remove_temp_of(leftover, previous.pid):
            log.warning("removed %s's temp file of %s", previous.describe(), leftover.name)


def _verify_canonical(project: Project, outcome: ExportOutcome) -> None:
    """Before anything is recorded: every change of the table in the window is in the file or
    quarantined (the other tables' LSNs are in their own files).

    The Dagster asset checks repeat this where the UI shows it, but the watermark must not
    move over a bad window even when the export runs outside Dagster.
    """
    held = {q.lsn for q in outcome.quarantined}
    window = outcome.window
    expected = outcome.source_changes
    if expected is None:
        expected, _first, _last = range_stats(
            project.source, window.lo, window.hi, outcome.dataset.table
        )
    coverage = check_lsn_coverage(outcome.path, window.lo, window.hi, held, expected)
    if not coverage.passed:
        raise ExportVerificationError(
            f"window {outcome.window.key} failed verification: {coverage.description};"
            " nothing was recorded and no watermark moved"
        )


def finish(project: Project, outcome: ExportOutcome) -> tuple[int, ExportMetrics]:
    """Record the export, move the consumer's watermark as far as it contiguously can, then
    record its metrics (after the watermark, so metrics never hold data back)."""
    record_completed(
        project.state,
        CompletedExport(
            consumer=outcome.consumer,
            window_key=outcome.window.key,
            lo=outcome.window.lo,
            hi=outcome.window.hi,
            rows=outcome.rows,
            bytes=outcome.bytes,
            sha256=outcome.sha256,
            path=str(outcome.path),
        ),
    )
    mark = advance(project.watermarks, project.state, outcome.consumer)
    metrics = export_metrics_of(project, outcome)
    record_export_metrics(project.state, metrics)
    return mark, metrics


def export_metrics_of(project: Project, outcome: ExportOutcome) -> ExportMetrics:
    """Metrics of one finished export; latency is commit (`_changed_at`) to now."""
    finished = dt.datetime.now(dt.UTC)
    parquet = (
        outcome.path
        if outcome.fmt == "parquet"
        else project.file_path("parquet", outcome.window.key, outcome.dataset)
    )
    p50, p95, top = file_latency_percentiles(parquet, finished)
    version = int((outcome.schema.metadata or {}).get(SCHEMA_VERSION_KEY, b"0"))
    return ExportMetrics(
        consumer=outcome.consumer,
        window_key=outcome.window.key,
        lsn_from=outcome.window.lo,
        lsn_to=outcome.window.hi,
        created=outcome.rows_by_op.get("c", 0),
        updated=outcome.rows_by_op.get("u", 0),
        deleted=outcome.rows_by_op.get("d", 0),
        snapshot=outcome.rows_by_op.get("r", 0),
        bytes=outcome.bytes,
        duration_s=outcome.seconds,
        finished_at=finished,
        latency_p50_s=p50,
        latency_p95_s=p95,
        latency_max_s=top,
        quarantined=len(outcome.quarantined),
        schema_version=version or None,
    )
