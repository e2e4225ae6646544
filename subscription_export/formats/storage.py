"""Where exports are stored: a local folder or an object store (s3://, gs://, az://), one UPath.

Local files keep the temp name + rename, which makes a file appear whole. Object stores have
no rename, but an object only becomes visible when its upload completes (one PUT, or a
completed multipart upload). So there an object is streamed straight to its final key, and a
write that fails is aborted, never completed: no torn object. A crash between a complete
object and its manifest still leaves an object without a manifest, which is why readers trust
only a manifest (`verify.published_file`), written last.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from subscription_export.core.locations import is_local

# Multipart part size: what a streaming upload holds in memory at most (S3's minimum is 5 MiB).
BLOCK_SIZE = 8 << 20


class HashingSink:
    """A write-only file that hashes and counts what passes through to `raw`: the sha256 of an
    uploaded object without reading it back (and independent of the store's ETag)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.bytes = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.raw.write(view)
        self.bytes += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.bytes

    def flush(self) -> None:
        """The upload flushes per part by itself; closing it is what completes the object."""

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False


@contextmanager
def open_object(path: UPath) -> Iterator[BinaryIO]:
    """Stream to an object store: parts are uploaded as they fill (BLOCK_SIZE); the object
    appears when the block exits normally. On any exception the upload is aborted."""
    handle = path.open("wb", block_size=BLOCK_SIZE)
    try:
        yield handle
    except BaseException:
        discard = getattr(handle, "discard", None)
        if discard is not None:
            discard()  # aborts the multipart upload
        # fsspec files complete their upload on close (even from __del__): mark it closed.
        handle.closed = True
        raise
    handle.close()


def write_text_atomically(path: Path | UPath, text: str) -> None:
    """Small files (manifests, quarantine lists): temp + rename locally, one PUT remotely."""
    if not is_local(path):
        path.write_text(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def open_parquet(path: Path | UPath) -> Iterator[pq.ParquetFile]:
    """A Parquet file, local or remote (ranged reads through fsspec)."""
    if is_local(path):
        yield pq.ParquetFile(path)
        return
    with path.open("rb", block_size=BLOCK_SIZE) as handle:
        yield pq.ParquetFile(handle)


def parquet_schema(path: Path | UPath) -> pa.Schema:
    if is_local(path):
        return pq.read_schema(path)
    with open_parquet(path) as source:
        return source.schema_arrow


def parquet_rows(path: Path | UPath) -> int:
    with open_parquet(path) as source:
        return source.metadata.num_rows
