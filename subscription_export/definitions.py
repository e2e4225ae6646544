"""The Definitions that `dagster dev`, the daemon and `workspace.yaml` load."""

from subscription_export.core.settings import Settings
from subscription_export.defs.definitions import build_definitions

defs = build_definitions(Settings.from_env())
