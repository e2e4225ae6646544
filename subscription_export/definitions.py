"""The Definitions that `dagster dev`, the daemon and `workspace.yaml` load."""

from subscription_export.defs.definitions import build_definitions
from subscription_export.settings import Settings

defs = build_definitions(Settings.from_env())
