"""JSON log lines for Dagster runs, with the run id, window and consumer of each event.

Configured in the instance's dagster.yaml (see `deploy/dagster.postgres.yaml`):

    python_logs:
      dagster_handler_config:
        handlers:
          json: {class: logging.StreamHandler, formatter: json, stream: ext://sys.stderr}
        formatters:
          json: {(): subscription_export.defs.logs.DagsterJsonFormatter}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, get_args

from subscription_export.core.datasets import (
    DEFAULT_TABLE,
    DatasetFormat,
    TableDataset,
    parse_tables,
)
from subscription_export.core.logs import JsonLogFormatter
from subscription_export.core.settings import env_variable

PARTITION_TAG = "dagster/partition"
_FORMAT_ASSETS = {  # window asset -> the consumer (watermark name) it advances
    "subscription_changes": "parquet",
    "subscription_changes_csv": "csv",
    "subscription_changes_jsonl": "jsonl",
}


@lru_cache(maxsize=8)
def _consumers_of_assets(tables: str | None, table: str | None) -> dict[str, str]:
    """Window asset -> consumer for the captured tables: an asset name replaces characters
    such as `-` or `.` by `_`, the consumer keeps the table's name (`plan-items.csv`)."""
    try:
        names = parse_tables(tables) if tables else (table or DEFAULT_TABLE,)
    except ValueError:
        return {}  # a bad setting: the run fails on it; the log line keeps the fallback below
    datasets = [TableDataset(name) for name in names]
    return {d.asset(fmt): d.consumer(fmt) for d in datasets for fmt in get_args(DatasetFormat)}


def consumer_of_step(step_key: str | None) -> str | None:
    """The consumer a step works for: a format asset's format, `<destination>_sync`'s name."""
    if not step_key:
        return None
    if step_key in _FORMAT_ASSETS:
        return _FORMAT_ASSETS[step_key]
    configured = _consumers_of_assets(
        os.environ.get(env_variable("tables")), os.environ.get(env_variable("table"))
    )
    if step_key in configured:
        return configured[step_key]
    for suffix, fmt in (
        ("_changes", "parquet"),
        ("_changes_csv", "csv"),
        ("_changes_jsonl", "jsonl"),
    ):
        if step_key.endswith(suffix):  # another table's window asset (core/datasets.py)
            return f"{step_key.removesuffix(suffix)}.{fmt}"
    return step_key.removesuffix("_sync") if step_key.endswith("_sync") else None


class DagsterJsonFormatter(JsonLogFormatter):
    def message(self, record: logging.LogRecord) -> str:
        # Dagster prefixes job, run id and step to the text; they are fields here.
        meta: Mapping[str, Any] = getattr(record, "dagster_meta", None) or {}
        original = meta.get("orig_message")
        return str(original) if original else record.getMessage()

    def context(self, record: logging.LogRecord) -> dict[str, Any]:
        found = super().context(record)
        meta: Mapping[str, Any] = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        from_run = {
            "run_id": meta.get("run_id"),
            "job": meta.get("job_name"),
            "step": meta.get("step_key"),
            "window": (meta.get("job_tags") or {}).get(PARTITION_TAG),
            "consumer": consumer_of_step(meta.get("step_key")),
            "event": getattr(event, "event_type_value", None),
        }
        found.update({k: v for k, v in from_run.items() if v is not None and k not in found})
        return found
