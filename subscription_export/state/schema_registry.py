"""The registry of dataset schema versions, in the state database.

A version is registered the first time a window with that set of columns is exported; the same
columns always map back to the same version, so re-exports carry the same version number.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.columns import SourceColumn
from subscription_export.formats.schema import arrow_type
from subscription_export.state.tables import schema_registry

DATASET = "subscription_changes"


@dataclass(frozen=True)
class RegisteredSchema:
    version: int
    columns: tuple[SourceColumn, ...]
    first_lsn: int


def _encode(columns: tuple[SourceColumn, ...]) -> str:
    return json.dumps([[c.name, c.type] for c in columns])


def _decode(raw: str) -> tuple[SourceColumn, ...]:
    return tuple(SourceColumn(n, t) for n, t in json.loads(raw))


def all_versions(engine: Engine, dataset: str = DATASET) -> list[RegisteredSchema]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                schema_registry.c.version, schema_registry.c.fields, schema_registry.c.first_lsn
            )
            .where(schema_registry.c.dataset == dataset)
            .order_by(schema_registry.c.version)
        ).all()
    return [RegisteredSchema(int(v), _decode(f), int(lsn)) for v, f, lsn in rows]


def latest(engine: Engine, dataset: str = DATASET) -> RegisteredSchema | None:
    versions = all_versions(engine, dataset)
    return versions[-1] if versions else None


def register(
    engine: Engine, columns: tuple[SourceColumn, ...], first_lsn: int, dataset: str = DATASET
) -> int:
    """The version of these columns, registering a new one if they are new."""
    encoded = _encode(columns)
    arrow = ", ".join(f"{c.name}: {arrow_type(c.type)}" for c in columns)
    for _attempt in range(5):
        try:
            with engine.begin() as conn:
                rows = conn.execute(
                    sa.select(schema_registry.c.version, schema_registry.c.fields).where(
                        schema_registry.c.dataset == dataset
                    )
                ).all()
                for version, fields in rows:
                    if fields == encoded:
                        return int(version)
                version = max((int(v) for v, _ in rows), default=0) + 1
                conn.execute(
                    sa.insert(schema_registry).values(
                        dataset=dataset,
                        version=version,
                        fields=encoded,
                        arrow_schema=arrow,
                        first_lsn=first_lsn,
                        registered_at=dt.datetime.now(dt.UTC),
                    )
                )
                return version
        except sa.exc.IntegrityError:
            continue  # another exporter registered a version at the same moment; re-read
    raise RuntimeError("could not register a schema version after 5 attempts")
