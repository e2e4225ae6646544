"""Errors a user can act on. The CLI prints their message on one line and exits non-zero."""

from __future__ import annotations


class SubscriptionExportError(Exception):
    """Base class: the message says what is wrong and what to do."""

    exit_code = 2


class ConfigError(SubscriptionExportError):
    """A setting or URL is malformed."""


class SourceUnavailableError(SubscriptionExportError):
    """A database or server cannot be reached."""


class SourceBusyError(SubscriptionExportError):
    """Other transactions kept the tables `init` must lock for longer than it waits."""


class SchemaMissingError(SubscriptionExportError):
    """The source database has no capture schema yet."""


class StateSchemaError(SubscriptionExportError):
    """The state database's schema cannot be brought to this release's head."""


class RangeError(SubscriptionExportError):
    """An LSN range that the change log cannot serve."""


class WatermarkConflict(SubscriptionExportError):
    """A compare-and-set on a watermark lost or was refused."""


class ExportVerificationError(SubscriptionExportError):
    """A written window does not hold what the change log says it should."""

    exit_code = 3


class StorageError(SubscriptionExportError):
    """A file could not be written (disk full, read-only, not a directory); the message names
    the cause and the file. A run failure (exit 1): re-run once the storage is fixed."""

    exit_code = 1


class UnpublishedFileError(SubscriptionExportError):
    """A window's file has no (matching) manifest: not exported yet, or its write stopped
    before the manifest. Readers never use such a file."""
