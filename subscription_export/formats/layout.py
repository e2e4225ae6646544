"""Where a window's files live: `{EXPORT_DIR}/{asset}/{window_key}{ext}` (this is the one owner)."""

from __future__ import annotations

from pathlib import Path

from upath import UPath

from subscription_export.formats.writers import EXTENSIONS, Format

ASSET_FOR_FORMAT: dict[Format, str] = {
    "parquet": "subscription_changes",
    "csv": "subscription_changes_csv",
    "jsonl": "subscription_changes_jsonl",
}


def export_file_path(export_dir: Path | UPath, fmt: Format, window_key: str) -> Path | UPath:
    return export_dir / ASSET_FOR_FORMAT[fmt] / f"{window_key}{EXTENSIONS[fmt]}"
