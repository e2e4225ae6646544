"""Writing values the way a hostile or buggy application would: into source rows (SQLite keeps
whatever it is given) or straight into the change log's row images (jsonb holds any JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import sqlalchemy as sa

from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import ExportOutcome, export_window_file
from subscription_export.runtime import Project

_LAST_IMAGE = sa.text(
    "SELECT after, schema_version FROM subscription_change_log WHERE subscription_id = :id"
    " AND after IS NOT NULL ORDER BY id DESC LIMIT 1"
)


def set_in_row(conn: sa.Connection, sub_id: str, column: str, sql_expression: str) -> None:
    """UPDATE one column to a raw SQL expression (e.g. `CAST(X'FF' AS TEXT)`); the trigger
    captures it like any application write."""
    conn.execute(
        sa.text(f'UPDATE subscriptions SET "{column}" = {sql_expression} WHERE id = :id'),
        {"id": sub_id},
    )


def append_image(conn: sa.Connection, sub_id: str, image_text: str) -> None:
    """A change-log row (op `u`) whose after-image is `image_text`, as an app writing the log."""
    before, version = conn.execute(_LAST_IMAGE, {"id": sub_id}).one()
    before_text = before if isinstance(before, str) else json.dumps(before)
    if conn.dialect.name == "postgresql":  # the sequencer assigns the LSN
        conn.execute(
            sa.text(
                "INSERT INTO subscription_change_log (op, subscription_id, before, after,"
                " schema_version, source_table) VALUES ('u', :id, CAST(:before AS jsonb),"
                " CAST(:after AS jsonb), :v, 'subscriptions')"
            ),
            {"id": sub_id, "before": before_text, "after": image_text, "v": version},
        )
        return
    conn.execute(
        sa.text(
            "INSERT INTO subscription_change_log (lsn, op, subscription_id, before, after,"
            " changed_at, schema_version, source_table) VALUES ((SELECT MAX(lsn) + 1 FROM"
            " subscription_change_log), 'u', :id, :before, :after,"
            " strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), :v, 'subscriptions')"
        ),
        {"id": sub_id, "before": before_text, "after": image_text, "v": version},
    )


def last_image(conn: sa.Connection, sub_id: str) -> dict[str, object]:
    after, _ = conn.execute(_LAST_IMAGE, {"id": sub_id}).one()
    return after if isinstance(after, dict) else json.loads(after)


def with_json_value(image: dict[str, object], column: str, json_text: str) -> str:
    """The image as JSON text with `column` set to `json_text` verbatim (`9e999` stays a number:
    a Python float would turn it into `Infinity`, which is not JSON)."""
    rest = json.dumps({k: v for k, v in image.items() if k != column})
    return f"{rest[:-1]}, {json.dumps(column)}: {json_text}}}"


@dataclass(frozen=True)
class Exported:
    outcome: ExportOutcome
    rows: dict[int, dict[str, object]]  # by LSN, as read back from the Parquet file

    @property
    def quarantined(self) -> dict[int, tuple[str | None, str]]:
        return {q.lsn: (q.field, q.reason) for q in self.outcome.quarantined}


def export_new_windows(project: Project) -> list[Exported]:
    """Cut and export (Parquet) every window that is due; each must succeed."""
    exported = []
    for window in cut_windows(project).new_windows:
        outcome, _ = export_window_file(project, "parquet", window)
        table = pq.read_table(Path(outcome.path))
        rows = {r["_lsn"]: r for r in table.to_pylist()}
        exported.append(Exported(outcome, rows))
    return exported
