"""Names that follow from a captured table: its assets, files, watermarks and Dagster group.

All captured tables share one change log and one LSN sequence; each table is exported as its
own dataset. The default table `subscriptions` keeps the names of releases that captured only
it (`subscription_changes`, consumers `parquet`/`csv`/`jsonl`), so its files, watermarks and
asset history carry on. Any other table T gets `T_changes`, `T_changes_csv`, `T_changes_jsonl`
and the consumers `T.parquet`, `T.csv`, `T.jsonl`: the dot never appears in the default
consumers nor in a destination's name, and the format after the last dot is fixed, so no two
tables' consumers can collide with each other or with a destination
(docs/architecture.md, "Several tables").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

DEFAULT_TABLE = "subscriptions"
LEGACY_DATASET = "subscription_changes"
LEGACY_GROUP = "cdc"

DatasetFormat = Literal["parquet", "csv", "jsonl"]
_ASSET_SUFFIX: dict[str, str] = {"parquet": "", "csv": "_csv", "jsonl": "_jsonl"}
_NOT_IN_A_NAME = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class TableDataset:
    """One captured table as the export sees it."""

    table: str

    @property
    def legacy(self) -> bool:
        return self.table == DEFAULT_TABLE

    @property
    def name(self) -> str:
        """The canonical (Parquet) asset, also the dataset of its schema versions."""
        # Dagster asset names allow letters, digits and `_` only.
        return LEGACY_DATASET if self.legacy else f"{_NOT_IN_A_NAME.sub('_', self.table)}_changes"

    @property
    def group(self) -> str:
        """The Dagster asset group: one per table, so the UI's lineage shows each table."""
        return LEGACY_GROUP if self.legacy else f"cdc_{_NOT_IN_A_NAME.sub('_', self.table)}"

    def asset(self, fmt: str) -> str:
        return self.name + _ASSET_SUFFIX[fmt]

    def consumer(self, fmt: str) -> str:
        """The watermark (and completed-exports) name of this table's `fmt` files."""
        return fmt if self.legacy else f"{self.table}.{fmt}"


def parse_tables(text: str) -> tuple[str, ...]:
    """`a, b` → ("a", "b"); ValueError for an empty name, a repeated one, or two tables whose
    asset names would be the same (names are made of letters, digits and `_`)."""
    tables = tuple(t.strip() for t in text.split(","))
    if any(not t for t in tables):
        raise ValueError("lists an empty table name; write names separated by commas")
    repeated = sorted({t for t in tables if tables.count(t) > 1})
    if repeated:
        raise ValueError(f"lists {', '.join(repeated)} more than once")
    by_name: dict[str, str] = {}
    for table in tables:
        name = TableDataset(table).name
        other = by_name.setdefault(name, table)
        if other != table:
            raise ValueError(f"tables {other!r} and {table!r} would both export as {name}")
        if name == LEGACY_DATASET and table != DEFAULT_TABLE:
            raise ValueError(
                f"table {table!r} would export as {LEGACY_DATASET}, the name kept for"
                f" {DEFAULT_TABLE!r}"
            )
    return tables


DEFAULT_DATASET = TableDataset(DEFAULT_TABLE)
