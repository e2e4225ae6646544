"""The reconcile's user-facing error (the CLI prints it on one line and exits 2)."""

from subscription_export.core.errors import SubscriptionExportError


class ReconcileError(SubscriptionExportError):
    """A reconcile or a manual resolution that cannot proceed as asked."""
