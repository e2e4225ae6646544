"""Read a Parquet file in batches, one row group at a time.

`ParquetFile.iter_batches` held more as the file grew (measured: 39 MB of Arrow memory for a
1M-row window, 85 MB for 3M, same row groups); reading row group by row group stays at one
row group (37 MB for both).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_BATCH = 65_536


def parquet_batches(
    path: Path, batch_size: int = DEFAULT_BATCH, columns: Sequence[str] | None = None
) -> Iterator[pa.RecordBatch]:
    source = pq.ParquetFile(path)
    for index in range(source.num_row_groups):
        group = source.read_row_group(index, columns=columns, use_threads=False)
        yield from group.to_batches(max_chunksize=batch_size)
