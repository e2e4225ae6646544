"""One IO manager per export format. They own the file layout and the atomic writes:
`{EXPORT_DIR}/{asset}/{partition_key}.{ext}` plus a manifest, then the consumer's watermark.
The base path is a UPath: a local folder or an object store (s3://, gs://, az://)."""

import errno
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from upath import UPath

from subscription_export.core.causes import describe_os_error
from subscription_export.core.datasets import DEFAULT_DATASET, TableDataset
from subscription_export.core.errors import (
    ExportVerificationError,
    StorageError,
    UnpublishedFileError,
)
from subscription_export.defs.resources import ExportSettings
from subscription_export.defs.stopping import stoppable
from subscription_export.export.flow import ExportOutcome, export_window_file
from subscription_export.formats.contract import ContractViolation
from subscription_export.formats.layout import format_of_asset
from subscription_export.formats.storage import is_local
from subscription_export.formats.verify import published_file
from subscription_export.formats.writers import EXTENSIONS, Format
from subscription_export.runtime import Project
from subscription_export.state.leases import LeaseBusy, default_holder
from subscription_export.state.windows import Window, parse_window_key


@dataclass(frozen=True)
class WindowRequest:
    """What a canonical asset hands its IO manager: export this window of this table."""

    window: Window
    dataset: TableDataset = DEFAULT_DATASET


@dataclass(frozen=True)
class WindowFile:
    """A window already on disk (what downstream assets receive and pass on)."""

    window: Window
    path: Path | UPath
    dataset: TableDataset = DEFAULT_DATASET


# A folder that cannot be made for these reasons will not become possible by waiting (a full
# disk may free up: ENOSPC is still retried).
_PERMANENT = frozenset({errno.ENOTDIR, errno.EROFS, errno.EACCES, errno.EPERM, errno.EEXIST})


class _WindowFileIOManager(dg.UPathIOManager):
    def __init__(self, project: Project, fmt: Format) -> None:
        super().__init__(base_path=project.settings.export_dir)
        self.project = project
        self.fmt = fmt
        self.extension = EXTENSIONS[fmt]

    def make_directory(self, path: UPath) -> None:
        """Object stores have no folders (and creating one could mean creating a bucket)."""
        if not is_local(path):
            return
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # Named as a storage problem (not a directory, read-only, disk full) for `run`.
            error = StorageError(describe_os_error(exc, Path(str(path))))
            if exc.errno in _PERMANENT:  # retrying cannot make a folder possible
                raise dg.Failure(str(error), allow_retries=False) from error
            raise error from exc

    def dump_to_path(self, context: dg.OutputContext, obj: object, path: UPath) -> None:
        try:
            outcome, watermark = self._export(obj, path, default_holder(context.run_id))
        except (ContractViolation, ExportVerificationError, LeaseBusy) as exc:
            # Deterministic: a retry would fail the same way, so fail the step at once. A busy
            # lease has already been waited for (SUBSCRIPTION_EXPORT_LEASE_WAIT).
            raise dg.Failure(str(exc), allow_retries=False) from exc
        metadata: dict[str, object] = dict(outcome.metadata())
        metadata.pop("path")  # UPathIOManager reports the path itself
        metadata["watermark"] = watermark
        metadata["schema_version"] = int(
            (outcome.schema.metadata or {}).get(b"subscription_export.schema_version", b"0")
        )
        context.add_output_metadata(metadata)

    def _export(self, obj: object, path: UPath, holder: str) -> tuple[ExportOutcome, int]:
        with stoppable():  # SIGTERM: fail the step without retry (defs/stopping.py)
            return self._export_now(obj, path, holder)

    def _export_now(self, obj: object, path: UPath, holder: str) -> tuple[ExportOutcome, int]:
        if isinstance(obj, WindowRequest) and self.fmt == "parquet":
            return export_window_file(
                self.project, "parquet", obj.window, path, holder=holder, dataset=obj.dataset
            )
        if isinstance(obj, WindowFile) and self.fmt != "parquet":
            return export_window_file(
                self.project,
                self.fmt,
                obj.window,
                path,
                parquet=obj.path,
                holder=holder,
                dataset=obj.dataset,
            )
        raise TypeError(f"{self.fmt} IO manager cannot store {type(obj).__name__}")

    def load_from_path(self, context: dg.InputContext, path: UPath) -> WindowFile:
        """Only a file its manifest vouches for: one whose write stopped before the manifest
        is as absent as no file."""
        key = context.asset_partition_key
        lo, hi = parse_window_key(key)
        try:
            dataset, _fmt = format_of_asset(context.asset_key.path[-1], self.project.datasets)
        except KeyError:
            raise FileNotFoundError(
                f"{context.asset_key.to_user_string()} is not the export of a captured table"
                " (SUBSCRIPTION_EXPORT_TABLES)"
            ) from None
        try:
            published = published_file(self.project.settings.export_dir, self.fmt, key, dataset)
        except UnpublishedFileError as exc:
            # Deterministic within the run (its upstream step already ended): no step retries.
            error = UnpublishedFileError(
                f"{exc}: materialize {context.asset_key.to_user_string()} for window {key}"
            )
            raise dg.Failure(str(error), allow_retries=False) from error
        return WindowFile(Window(lo, hi), published, dataset)


class _FormatIOManagerFactory(dg.ConfigurableIOManagerFactory):
    settings: dg.ResourceDependency[ExportSettings]

    def _fmt(self) -> Format:
        raise NotImplementedError

    def create_io_manager(self, context: dg.InitResourceContext) -> _WindowFileIOManager:
        return _WindowFileIOManager(self.settings.project(), self._fmt())


class ParquetIOManager(_FormatIOManagerFactory):
    """zstd Parquet, timestamp[us, UTC], decimal amounts: the canonical copy of a window."""

    def _fmt(self) -> Format:
        return "parquet"


class CsvIOManager(_FormatIOManagerFactory):
    """RFC 4180 CSV with header, UTF-8, ISO-8601 UTC timestamps with Z."""

    def _fmt(self) -> Format:
        return "csv"


class JsonLinesIOManager(_FormatIOManagerFactory):
    """One JSON object per line, keys in column order, decimals as strings."""

    def _fmt(self) -> Format:
        return "jsonl"
