"""One window exported to S3 (moto in server mode, its own process): throughput and the
exporter's peak RSS, per window size, to show memory stays flat as the window grows.

    .venv/bin/python bench/objstore_bench.py [--changes 200000 1000000] [--keep]

For each size: a SQLite change log filled with generated rows (`bench.fill_change_log`), then a
fresh exporter process (pandas not importable, as installed) exports the window to Parquet,
CSV and JSON Lines under `s3://bench/<size>/`, streamed as multipart uploads. moto keeps the
objects in its own process, so the exporter's RSS is the export's alone. Writes
`bench/results/<date>-objstore.json`. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

_EXPORT = """
import json, sys
from subscription_export.bench import export_formats
from subscription_export.core.settings import Settings
hi = int(sys.argv[1])
formats, peak = export_formats(Settings.from_env(), 1, hi)
print(json.dumps({"formats": formats, "peak_rss_mb": round(peak, 1)}))
"""


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


def bench_size(changes: int, endpoint: str, workdir: Path) -> dict[str, object]:
    import boto3

    from subscription_export.bench import fill_change_log
    from subscription_export.core.db import engine_for
    from subscription_export.core.settings import Settings
    from subscription_export.source.demo_table import init_demo_source

    source = f"sqlite:///{workdir / f'source-{changes}.db'}"
    engine = engine_for(source, writer=True)
    init_demo_source(engine)
    started = time.perf_counter()
    fill_change_log(engine, changes)
    fill_s = time.perf_counter() - started
    boto3.client("s3").create_bucket(Bucket="bench")
    settings = Settings(
        source_url=source,
        state_url=f"sqlite:///{workdir / f'state-{changes}.db'}",
        export_dir=f"s3://bench/{changes}",
    )
    env = {**os.environ, **settings.as_env()}
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _EXPORT, str(changes)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "changes": changes,
        "fill_change_log_s": round(fill_s, 2),
        "export_wall_s": round(time.perf_counter() - started, 2),
        **report,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, nargs="+", default=[200_000, 1_000_000])
    args = parser.parse_args()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    results = []
    with moto_server() as endpoint, tempfile.TemporaryDirectory() as tmp:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        for changes in args.changes:
            result = bench_size(changes, endpoint, Path(tmp))
            print(json.dumps(result))
            results.append(result)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{dt.date.today().isoformat()}-objstore.json"
    path.write_text(json.dumps({"target": "moto S3 (server mode)", "runs": results}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
