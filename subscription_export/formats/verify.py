"""Checks that a window's files are whole and unchanged: counts, LSN coverage, hashes."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
from upath import UPath

from subscription_export.core.datasets import TableDataset
from subscription_export.core.errors import RangeError, UnpublishedFileError
from subscription_export.formats.layout import DEFAULT_DATASET, export_file_path, format_of_asset
from subscription_export.formats.manifest import MANIFEST_DIR, manifest_path, read_manifest
from subscription_export.formats.parquet_batches import parquet_batches
from subscription_export.formats.storage import parquet_rows
from subscription_export.formats.writers import EXTENSIONS, Format, sha256_of


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    description: str
    metadata: dict[str, object] = field(default_factory=dict)


class _UnusableManifest(Exception):
    """A manifest that cannot say what its file should be; the message completes its path."""


@dataclass(frozen=True)
class RecordedFile:
    """What a manifest says about its data file."""

    path: str
    bytes: int
    sha256: str


_RECORDED_TYPES = {"path": str, "bytes": int, "sha256": str}


def _recorded_file(manifest: Path | UPath) -> RecordedFile:
    try:
        content = read_manifest(manifest)
    except FileNotFoundError:
        raise _UnusableManifest("is missing") from None
    except OSError as exc:
        raise _UnusableManifest(f"cannot be read ({exc.strerror})") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise _UnusableManifest(f"is not valid JSON ({exc})") from None
    file = content.get("file") if isinstance(content, dict) else None
    file = file if isinstance(file, dict) else {}
    bad = [
        f"file.{name}"
        for name, kind in _RECORDED_TYPES.items()
        # bool is an int to Python, never a byte count
        if not isinstance(file.get(name), kind) or isinstance(file.get(name), bool)
    ]
    if bad:
        raise _UnusableManifest(f"lacks a valid {', '.join(bad)}")
    return RecordedFile(file["path"], file["bytes"], file["sha256"])


def _shown(export_dir: Path | UPath, path: Path | UPath) -> str:
    return path.relative_to(export_dir).as_posix() if path.is_relative_to(export_dir) else str(path)


def check_manifest(export_dir: Path | UPath, manifest: Path | UPath) -> CheckOutcome:
    """The file named by a manifest exists with the recorded size and sha256. A manifest that
    is missing, not JSON or lacks those fields fails the check (it does not raise)."""
    try:
        recorded = _recorded_file(manifest)
    except _UnusableManifest as exc:
        return CheckOutcome(
            False, f"{_shown(export_dir, manifest)} {exc}", {"manifest": str(manifest)}
        )
    path = export_dir / recorded.path
    if not path.exists():
        return CheckOutcome(False, f"{path} is missing", {"manifest": str(manifest)})
    actual = sha256_of(path)
    size = path.stat().st_size
    ok = actual == recorded.sha256 and size == recorded.bytes
    text = "matches its manifest" if ok else "differs from its manifest"
    return CheckOutcome(
        ok,
        f"{recorded.path} {text}",
        {"expected_sha256": recorded.sha256, "actual_sha256": actual, "bytes": size},
    )


@dataclass(frozen=True)
class VerifyReport:
    """One outcome per (asset, window) that has a data file or a manifest, in path order."""

    outcomes: tuple[CheckOutcome, ...]

    @property
    def matched(self) -> int:
        return sum(o.passed for o in self.outcomes)

    @property
    def passed(self) -> bool:
        return self.matched == len(self.outcomes)

    @property
    def summary(self) -> str:
        return f"{self.matched}/{len(self.outcomes)} file(s) match their manifests"


def verify_exports(
    export_dir: Path | UPath,
    window_key: str | None = None,
    datasets: tuple[TableDataset, ...] = (DEFAULT_DATASET,),
    recorded: Collection[tuple[str, str]] = (),
) -> VerifyReport:
    """Re-hash every exported file against its manifest. Files and manifests are paired by
    the layout, so a file whose manifest was deleted, a manifest whose file was deleted and an
    unusable manifest are each reported for their window, and the check goes on. Every
    manifest is checked; `datasets` (the captured tables) name the folders searched for data
    files without one. `recorded`: (asset, window key) the state records as exported; one with
    neither file nor manifest left is drift too (nothing else would find it)."""
    found = _files_and_manifests(export_dir, window_key, datasets)
    wanted = {(a, k) for a, k in recorded if window_key is None or k == window_key}
    if not found and not wanted:
        raise RangeError(
            f"no manifests under {export_dir}" + (f" for window {window_key}" if window_key else "")
        )
    outcomes = {(a, k): _check_window_file(export_dir, a, k, datasets) for a, k in found}
    for asset, key in wanted - set(found):
        outcomes[(asset, key)] = CheckOutcome(
            False,
            f"{asset}/{key}: recorded as exported, but its file and manifest are missing",
            {"window": key},
        )
    return VerifyReport(tuple(outcomes[pair] for pair in sorted(outcomes)))


def _files_and_manifests(
    export_dir: Path | UPath, window_key: str | None, datasets: tuple[TableDataset, ...]
) -> list[tuple[str, str]]:
    """(asset, window key) of every manifest and every data file of the export assets."""
    pattern = window_key or "*"
    found = {(m.parent.name, m.stem) for m in (export_dir / MANIFEST_DIR).glob(f"*/{pattern}.json")}
    for dataset in datasets:
        for fmt, extension in EXTENSIONS.items():
            asset = dataset.asset(fmt)
            for data in (export_dir / asset).glob(f"{pattern}{extension}"):
                found.add((asset, data.name.removesuffix(extension)))
    return sorted(found)


def _check_window_file(
    export_dir: Path | UPath, asset: str, window_key: str, datasets: tuple[TableDataset, ...]
) -> CheckOutcome:
    manifest = manifest_path(export_dir, asset, window_key)
    try:
        dataset, fmt = format_of_asset(asset, datasets)
    except KeyError:
        return check_manifest(export_dir, manifest)
    if manifest.exists():
        return check_manifest(export_dir, manifest)
    path = export_file_path(export_dir, fmt, window_key, dataset)
    data = _shown(export_dir, path)
    if not path.exists():  # only a recorded export is looked for without a file or manifest
        return CheckOutcome(
            False,
            f"{data} and its manifest are missing, but the window was exported (state"
            f" database); re-export it: subscription-export run --window {window_key}",
            {"manifest": str(manifest)},
        )
    return CheckOutcome(
        False,
        f"{data} has no manifest",
        {"manifest": str(manifest)},
    )


def check_lsn_coverage(
    parquet: Path | UPath, lo: int, hi: int, quarantined: set[int], expected: int | None = None
) -> CheckOutcome:
    """Exported LSNs are strictly increasing and, with the quarantined ones, cover lo..hi:
    all `expected` changes the log holds in lo..hi for the file's table (None: every LSN, the
    window holding one table's changes only).

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
    wanted = hi - lo + 1 if expected is None else expected
    covered = count + len(quarantined) == wanted
    ok = bool(increasing and in_range and covered)
    problems = [
        text
        for good, text in (
            (increasing, "LSNs are not strictly increasing"),
            (in_range, f"LSNs fall outside {lo}..{hi}"),
            (covered, f"{count} exported + {len(quarantined)} quarantined != {wanted}"),
        )
        if not good
    ]
    return CheckOutcome(
        ok,
        "; ".join(problems)
        or (
            f"LSNs {lo}..{hi} are all present, in order"
            if expected is None
            else f"the table's {wanted} change(s) in {lo}..{hi} are all present, in order"
        ),
        {"exported": count, "quarantined": len(quarantined), "expected": wanted},
    )


def check_row_count(parquet: Path | UPath, source_count: int, quarantined: int) -> CheckOutcome:
    rows = parquet_rows(parquet)
    ok = rows + quarantined == source_count
    return CheckOutcome(
        ok,
        f"{rows} rows + {quarantined} quarantined vs {source_count} changes in the log",
        {"rows": rows, "quarantined": quarantined, "change_log_rows": source_count},
    )


def check_something_exported(
    parquet: Path | UPath, expected: int, open_quarantined: int
) -> CheckOutcome:
    """Fails when the table had changes in the window and every one is in the quarantine,
    still open: the window "succeeded" with empty files (`run` exits 3 for it). Entries an
    operator discarded are a decision, not a failure."""
    rows = parquet_rows(parquet)
    nothing = expected > 0 and rows == 0 and open_quarantined >= expected
    return CheckOutcome(
        not nothing,
        f"all {expected} change(s) quarantined, nothing exported; see"
        " `subscription-export quarantine list`"
        if nothing
        else f"{rows} of {expected} change(s) exported",
        {"rows": rows, "open_quarantined": open_quarantined, "change_log_rows": expected},
    )


def published_file(
    export_dir: Path | UPath,
    fmt: Format,
    window_key: str,
    dataset: TableDataset = DEFAULT_DATASET,
) -> Path | UPath:
    """A window's file, if its manifest says it is there with the size found: readers trust
    only a manifest, which is written last. A file without one (not exported yet, or a write
    that stopped before its manifest) is treated as absent, never read."""
    path = export_file_path(export_dir, fmt, window_key, dataset)
    manifest = manifest_path(export_dir, dataset.asset(fmt), window_key)
    try:
        recorded = _recorded_file(manifest)
    except _UnusableManifest as exc:
        raise UnpublishedFileError(
            f"{_shown(export_dir, path)} is not published: its manifest {exc};"
            f" export window {window_key} ({fmt}) first"
        ) from None
    expected = path.relative_to(export_dir).as_posix()
    size = path.stat().st_size if path.exists() else None
    if recorded.path != expected or size != recorded.bytes:
        raise UnpublishedFileError(
            f"{_shown(export_dir, path)} does not match its manifest"
            f" ({size} bytes, manifest says {recorded.bytes} for {recorded.path});"
            f" re-export window {window_key} ({fmt})"
        )
    return path
