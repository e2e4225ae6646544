"""Checks that a window's files are whole and unchanged: counts, LSN coverage, hashes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from subscription_export.formats.manifest import MANIFEST_DIR, read_manifest
from subscription_export.formats.parquet_batches import parquet_batches
from subscription_export.formats.writers import sha256_of


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    description: str
    metadata: dict[str, object] = field(default_factory=dict)


def check_manifest(export_dir: Path, manifest: Path) -> CheckOutcome:
    """The file named by a manifest exists with the recorded size and sha256."""
    content = read_manifest(manifest)
    recorded = content["file"]
    path = export_dir / recorded["path"]
    if not path.exists():
        return CheckOutcome(False, f"{path} is missing", {"manifest": str(manifest)})
    actual = sha256_of(path)
    size = path.stat().st_size
    ok = actual == recorded["sha256"] and size == recorded["bytes"]
    text = "matches its manifest" if ok else "differs from its manifest"
    return CheckOutcome(
        ok,
        f"{recorded['path']} {text}",
        {"expected_sha256": recorded["sha256"], "actual_sha256": actual, "bytes": size},
    )


def manifests(export_dir: Path, window_key: str | None = None) -> list[Path]:
    pattern = f"{window_key}.json" if window_key else "*.json"
    return sorted((export_dir / MANIFEST_DIR).glob(f"*/{pattern}"))


def check_lsn_coverage(parquet: Path, lo: int, hi: int, quarantined: set[int]) -> CheckOutcome:
    """Exported LSNs are strictly increasing and, with the quarantined ones, cover lo..hi.

    Read one row group at a time, so checking a window of millions of rows stays small.
    """
    count, first, last, increasing = 0, None, None, True
    for batch in parquet_batches(parquet, columns=["_lsn"]):
        lsns = batch.column(0)
        if not len(lsns):
            continue
        head, tail = lsns[0].as_py(), lsns[-1].as_py()
        if last is not None and head <= last:
            increasing = False
        if len(lsns) > 1 and not pc.all(pc.greater(lsns[1:], lsns[:-1])).as_py():
            increasing = False
        first = head if first is None else first
        last = tail
        count += len(lsns)
    # Strictly increasing, so the first and last are the minimum and maximum.
    in_range = count == 0 or (first is not None and last is not None and first >= lo and last <= hi)
    covered = count + len(quarantined) == hi - lo + 1
    ok = bool(increasing and in_range and covered)
    problems = [
        text
        for good, text in (
            (increasing, "LSNs are not strictly increasing"),
            (in_range, f"LSNs fall outside {lo}..{hi}"),
            (covered, f"{count} exported + {len(quarantined)} quarantined != {hi - lo + 1}"),
        )
        if not good
    ]
    return CheckOutcome(
        ok,
        "; ".join(problems) or f"LSNs {lo}..{hi} are all present, in order",
        {"exported": count, "quarantined": len(quarantined), "expected": hi - lo + 1},
    )


def check_row_count(parquet: Path, source_count: int, quarantined: int) -> CheckOutcome:
    rows = pq.ParquetFile(parquet).metadata.num_rows
    ok = rows + quarantined == source_count
    return CheckOutcome(
        ok,
        f"{rows} rows + {quarantined} quarantined vs {source_count} changes in the log",
        {"rows": rows, "quarantined": quarantined, "change_log_rows": source_count},
    )
