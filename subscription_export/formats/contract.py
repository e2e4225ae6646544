"""Schema evolution: one dataset schema per window, under a schema contract.

The policy names follow dlt's schema contracts:

* `evolve` (default): new columns are appended (earlier rows null); dropped columns stay in the
  dataset (null from then on); a widening type change (integer → decimal) widens the column;
  any other type change adds a *variant column* `{name}__v_{type}` that carries the values of
  the new type, while `{name}` is null for those rows (no value is ever cast lossily).
* `freeze`: any difference from the registered schema fails the window, naming the column and
  the first LSN that carries it; nothing is exported and no watermark moves.
* `discard_row`: rows whose capture schema differs from the registered one are quarantined with
  the reason; the others are exported.
* `discard_value`: such rows are exported with the registered columns only; values of new or
  retyped columns are dropped (counted in the run's metadata).

The dataset schema of a window depends only on the capture schemas up to the newest one in the
window (and, for the non-evolving modes, on the registered schema), never on the wall clock or
on later windows, so re-exporting a window gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

from subscription_export.core.columns import LogicalType, SourceColumn
from subscription_export.core.errors import ConfigError, SubscriptionExportError
from subscription_export.core.settings import SchemaContract

ContractMode = SchemaContract  # the modes are listed once, where the setting is validated
CONTRACT_MODES: tuple[str, ...] = get_args(ContractMode)
_WIDENINGS: set[tuple[str, str]] = {("integer", "decimal")}


class ContractViolation(SubscriptionExportError):
    """The window's data does not fit the frozen schema."""

    exit_code = 3


def parse_mode(raw: str) -> ContractMode:
    if raw not in CONTRACT_MODES:
        raise ConfigError(
            f"schema contract {raw!r} is unknown; use one of {', '.join(CONTRACT_MODES)}"
        )
    return raw  # type: ignore[return-value]


@dataclass(frozen=True)
class VersionMapping:
    """How rows of one capture schema version fill the dataset columns."""

    sources: tuple[str | None, ...]  # per dataset column: the image key to read, or None (null)
    captured: frozenset[str] = frozenset()  # image keys this capture version may carry
    discard_reason: str | None = None  # discard_row: every row of this version is quarantined
    discard_field: str | None = None
    dropped_values: tuple[str, ...] = ()  # discard_value: image keys whose values are dropped


@dataclass(frozen=True)
class DatasetPlan:
    columns: tuple[SourceColumn, ...]
    by_version: dict[int, VersionMapping] = field(hash=False)

    def adopting(self, version: int, keys: frozenset[str]) -> VersionMapping | None:
        """The mapping of the first later capture version that captures every key of an image
        (`keys`: its non-null ones), or None.

        A PostgreSQL image carries whole rows, so a change written after `ALTER TABLE` but
        before `init` holds a column its capture version does not know. Once `init` has
        registered a version with that column, the change is read with that version's mapping
        (its recorded `_schema_version` stays), so nothing of it is lost.
        """
        for later in sorted(v for v in self.by_version if v > version):
            mapping = self.by_version[later]
            if keys <= mapping.captured and not mapping.discard_reason:
                return mapping
        return None


def _differences(
    reference: tuple[SourceColumn, ...], actual: tuple[SourceColumn, ...]
) -> list[tuple[str, str]]:
    ref = {c.name: c.type for c in reference}
    got = {c.name: c.type for c in actual}
    found = [(name, f"column {name!r} was added") for name in got if name not in ref]
    found += [(name, f"column {name!r} was dropped") for name in ref if name not in got]
    found += [
        (name, f"column {name!r} changed type {ref[name]} → {got[name]}")
        for name in got
        if name in ref
        and got[name] != ref[name]
        and (ref[name], got[name]) not in _WIDENINGS
        and (got[name], ref[name]) not in _WIDENINGS  # older, narrower rows fit the wider type
    ]
    return found


def evolve(capture: dict[int, tuple[SourceColumn, ...]], newest: int) -> DatasetPlan:
    """Fold capture versions 1..newest into one dataset schema (see module docstring)."""
    columns: dict[str, LogicalType] = {}
    variants: dict[tuple[int, str], str] = {}
    versions = sorted(v for v in capture if v <= newest)
    for version in versions:
        for column in capture[version]:
            current = columns.get(column.name)
            if current is None:
                columns[column.name] = column.type
            elif current != column.type:
                if (current, column.type) in _WIDENINGS:
                    columns[column.name] = column.type
                else:
                    variant = f"{column.name}__v_{column.type}"
                    columns.setdefault(variant, column.type)
                    variants[(version, column.name)] = variant
    dataset = tuple(SourceColumn(name, typ) for name, typ in columns.items())
    by_version = {}
    for version in versions:
        present = {c.name for c in capture[version]}
        routed = {variants[(version, n)]: n for n in present if (version, n) in variants}
        sources = tuple(
            routed.get(c.name)
            if c.name in routed
            else (c.name if c.name in present and (version, c.name) not in variants else None)
            for c in dataset
        )
        by_version[version] = VersionMapping(sources, frozenset(present))
    return DatasetPlan(dataset, by_version)


def restrict(
    reference: tuple[SourceColumn, ...],
    capture: dict[int, tuple[SourceColumn, ...]],
    versions: dict[int, int],
    mode: ContractMode,
) -> DatasetPlan:
    """Plan for `freeze`, `discard_row`, `discard_value`: the registered columns and no others.

    `versions` maps each capture version present in the window to its first LSN there.
    """
    widened = {c.name: c.type for c in reference}
    for version in versions:
        for column in capture[version]:
            if (widened.get(column.name), column.type) in _WIDENINGS:
                widened[column.name] = column.type  # widening is allowed in every mode
    dataset = tuple(SourceColumn(name, typ) for name, typ in widened.items())
    by_version = {}
    for version, first_lsn in sorted(versions.items()):
        diffs = _differences(dataset, capture[version])
        if diffs and mode == "freeze":
            name, text = diffs[0]
            raise ContractViolation(
                f"schema contract 'freeze': {text} (first at LSN {first_lsn}, capture schema"
                f" version {version}); the window was not exported and no watermark moved."
                " Set SUBSCRIPTION_EXPORT_SCHEMA_CONTRACT=evolve to accept the change"
            )
        got = {c.name: c.type for c in capture[version]}
        retyped = {n for n, _ in diffs if n in got and n in widened}
        sources = tuple(
            c.name if c.name in got and c.name not in retyped else None for c in dataset
        )
        if diffs and mode == "discard_row":
            name, text = diffs[0]
            by_version[version] = VersionMapping(
                sources,
                frozenset(got),
                discard_reason=f"schema contract 'discard_row': {text}",
                discard_field=name,
            )
        else:
            dropped = tuple(sorted(n for n, _ in diffs if n in got))
            by_version[version] = VersionMapping(sources, frozenset(got), dropped_values=dropped)
    return DatasetPlan(dataset, by_version)
