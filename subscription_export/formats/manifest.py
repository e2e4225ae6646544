"""Per-window manifests: what a file holds and its hash, so anyone can verify it later.

`produced_at` is informational and left out of `content_sha256`, so re-exporting a window
gives the same manifest hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from upath import UPath

from subscription_export.formats.schema import SCHEMA_VERSION_KEY
from subscription_export.formats.storage import write_text_atomically
from subscription_export.formats.writers import WrittenFile

MANIFEST_DIR = "_manifests"


@dataclass(frozen=True)
class Manifest:
    content: dict[str, Any]
    content_sha256: str
    path: Path | UPath


def manifest_path(export_dir: Path | UPath, asset: str, window_key: str) -> Path:
    return export_dir / MANIFEST_DIR / asset / f"{window_key}.json"


def build_content(
    *,
    asset: str,
    fmt: str,
    window_key: str,
    lo: int,
    hi: int,
    schema: pa.Schema,
    rows_by_op: dict[str, int],
    quarantined: int,
    written: WrittenFile,
    export_dir: Path | UPath,
    revision: int = 1,
    recovered_lsns: tuple[int, ...] = (),
) -> dict[str, Any]:
    """The hashed content. `revision` counts the versions of the window's files: 1 as first
    exported, +1 per `quarantine replay` that wrote recovered changes into them
    (`recovered_lsns`, all replays so far). Both keys are written only from revision 2 on, so
    every manifest of a window no one replayed keeps its bytes and hash, and a reader that
    predates them reads a missing `revision` as 1."""
    version = (schema.metadata or {}).get(SCHEMA_VERSION_KEY, b"0").decode()
    replayed: dict[str, Any] = (
        {"revision": revision, "recovered_lsns": list(recovered_lsns)} if revision > 1 else {}
    )
    return replayed | {
        "asset": asset,
        "format": fmt,
        "window": window_key,
        "lsn_range": [lo, hi],
        "rows": written.rows,
        "rows_by_op": _by_op(rows_by_op),
        "quarantined": quarantined,
        "schema_version": int(version),
        "fields": [{"name": f.name, "type": str(f.type)} for f in schema],
        "file": {
            "path": written.path.relative_to(export_dir).as_posix(),
            "bytes": written.bytes,
            "sha256": written.sha256,
        },
    }


def _by_op(rows_by_op: Mapping[str, int]) -> dict[str, int]:
    """c/u/d always; `r` (snapshot rows) only when present, so the manifest of a window without
    snapshot rows keeps the bytes and hash it had before snapshots existed."""
    counts = {op: int(rows_by_op.get(op, 0)) for op in ("c", "u", "d")}
    if rows_by_op.get("r"):
        counts["r"] = int(rows_by_op["r"])
    return counts


def canonical_sha256(content: dict[str, Any]) -> str:
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def write_manifest(path: Path | UPath, content: dict[str, Any]) -> Manifest:
    digest = canonical_sha256(content)
    document = {
        **content,
        "content_sha256": digest,
        "produced_at": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
    }
    # Written after its file: a reader that finds the manifest finds the whole file.
    write_text_atomically(path, json.dumps(document, indent=2, sort_keys=True) + "\n")
    return Manifest(content, digest, path)


def read_manifest(path: Path | UPath) -> dict[str, Any]:
    return json.loads(path.read_text())
