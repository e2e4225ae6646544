"""Structured logs: one JSON object per line, for log pipelines (Loki, CloudWatch, ELK).

`SUBSCRIPTION_EXPORT_LOG_FORMAT=json` switches the CLI's own logging to it; Dagster runs use
`defs/logs.DagsterJsonFormatter` (run id, window, consumer from the run) through the instance's
`python_logs` config. Messages pass through the credential masker, like everything printed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

from subscription_export.core.codec import timestamp_text
from subscription_export.core.secrets import mask_in_text

# Context a caller may attach with `extra={...}`; copied to the JSON line when present.
CONTEXT_FIELDS = ("run_id", "window", "consumer", "lsn", "system")


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": timestamp_text(dt.datetime.fromtimestamp(record.created, dt.UTC)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask_in_text(self.message(record)),
        }
        line.update(self.context(record))
        if record.exc_info:
            line["error"] = mask_in_text(self.formatException(record.exc_info))
        return json.dumps(line, default=str, ensure_ascii=False)

    def message(self, record: logging.LogRecord) -> str:
        return record.getMessage()

    def context(self, record: logging.LogRecord) -> dict[str, Any]:
        return {
            name: getattr(record, name)
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        }


def use_json_logs(level: int = logging.INFO) -> None:
    """Route the process's logging to stderr as JSON lines (replacing other root handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
