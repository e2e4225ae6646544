"""Where a window's files live: `{EXPORT_DIR}/{asset}/{window_key}{ext}` (this is the one owner).

Each captured table has its own assets (`core/datasets.py`); `subscriptions` keeps
`subscription_changes`, `subscription_changes_csv`, `subscription_changes_jsonl`.
"""

from __future__ import annotations

from pathlib import Path

from upath import UPath

from subscription_export.core.datasets import DEFAULT_DATASET, TableDataset
from subscription_export.formats.writers import EXTENSIONS, FORMATS, Format

ASSET_FOR_FORMAT: dict[Format, str] = {fmt: DEFAULT_DATASET.asset(fmt) for fmt in FORMATS}


def export_file_path(
    export_dir: Path | UPath, fmt: Format, window_key: str, dataset: TableDataset = DEFAULT_DATASET
) -> Path | UPath:
    return export_dir / dataset.asset(fmt) / f"{window_key}{EXTENSIONS[fmt]}"


def format_of_asset(asset: str, datasets: tuple[TableDataset, ...]) -> tuple[TableDataset, Format]:
    """The (dataset, format) an asset name stands for; KeyError if none of `datasets`'."""
    for dataset in datasets:
        for fmt in FORMATS:
            if dataset.asset(fmt) == asset:
                return dataset, fmt
    raise KeyError(asset)
