"""subscription-export: change data capture, incremental export and sync on Dagster."""

from subscription_export.formats.memory import prefer_jemalloc

prefer_jemalloc()
