"""The connections a run works with: settings plus the source, state and watermark stores they
imply, opened lazily and checked once."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from sqlalchemy.engine import Engine
from upath import UPath

from subscription_export.core.datasets import TableDataset
from subscription_export.core.db import check_reachable, engine_for, require_existing
from subscription_export.core.errors import ConfigError
from subscription_export.core.settings import Settings
from subscription_export.formats.layout import export_file_path
from subscription_export.formats.verify import published_file
from subscription_export.formats.writers import Format
from subscription_export.source.schema import require_source_schema
from subscription_export.state.migrate import upgrade
from subscription_export.state.watermarks import WatermarkStore, watermark_store


def init_state_tables(engine: Engine) -> None:
    """The project's state database at the head of its migrations (idempotent, one query when it
    is there already): windows and watermarks, metrics, dead letters, and the bidirectional
    sync's bases, cursors, pushes, conflicts and audit log (`state/tables.py`)."""
    upgrade(engine)


class Project:
    """Settings plus the connections they imply, opened lazily and checked once.

    `create=False` is for read-only commands (status, lists, dashboard): a SQLite database that
    does not exist is an error instead of a new empty file at a mistyped path.
    """

    def __init__(self, settings: Settings, *, create: bool = True) -> None:
        self.settings = settings
        self.create = create

    @cached_property
    def source(self) -> Engine:
        if not self.create:
            require_existing(self.settings.source_url, "source")
        engine = engine_for(self.settings.source_url)
        check_reachable(engine, "source")
        require_source_schema(engine)
        return engine

    @cached_property
    def state(self) -> Engine:
        if not self.create:
            require_existing(self.settings.state_url, "state")
        engine = engine_for(self.settings.state_url, writer=True)
        check_reachable(engine, "state")
        init_state_tables(engine)
        return engine

    @cached_property
    def watermarks(self) -> WatermarkStore:
        return watermark_store(self.settings.watermark_url, self.state)

    @property
    def datasets(self) -> tuple[TableDataset, ...]:
        """One per captured table, in configured order."""
        return self.settings.datasets

    @property
    def primary(self) -> TableDataset:
        """The first captured table: what destinations, reconcile and quarantine replay read."""
        return self.datasets[0]

    def dataset_of(self, table: str) -> TableDataset:
        """The captured table's dataset, or ConfigError naming the captured ones."""
        for dataset in self.datasets:
            if dataset.table == table:
                return dataset
        captured = ", ".join(d.table for d in self.datasets)
        raise ConfigError(
            f"table {table!r} is not captured; captured: {captured} (SUBSCRIPTION_EXPORT_TABLES)"
        )

    def file_path(
        self, fmt: Format, window_key: str, dataset: TableDataset | None = None
    ) -> Path | UPath:
        """Where a window's file is written (see `published_file` to read one); `dataset`:
        which table's (None: the first captured table's)."""
        return export_file_path(self.settings.export_dir, fmt, window_key, dataset or self.primary)

    def published_file(
        self, fmt: Format, window_key: str, dataset: TableDataset | None = None
    ) -> Path | UPath:
        """A window's file for reading: only if its manifest vouches for it, else
        `UnpublishedFileError` (`dataset`: as for `file_path`)."""
        return published_file(self.settings.export_dir, fmt, window_key, dataset or self.primary)

    def export_of(self, table: str, window_key: str, fmt: Format = "parquet") -> Path | UPath:
        """The export of captured table `table` for window `window_key`: the one place a
        reader (a destination, a report) finds a table's file; published files only."""
        return self.published_file(fmt, window_key, self.dataset_of(table))
