"""Delivery throughput against sandbox systems that answer every request after 10 ms.

    .venv/bin/python bench/delivery_bench.py [--records 20000] [--latency-ms 10] ...

Two measurements per batch system (ERP `$batch`, CRM, accounting):

* `deliver`: change rows already in memory → HTTP, through `sync.delivery.deliver` (batches of
  `--batch-size`, `--concurrency` lanes) - the transport ceiling;
* `deliver_window`: the production path - the window's Parquet file read in batches, prior
  state from the source change log (accounting), delivery, dead-letter/completion bookkeeping
  and the watermark advance in the SQLite state database.

Each sandbox system runs in its own process (as a remote system would; `--in-process` serves
it from threads of the benchmark process instead, where it competes for the GIL).
The ERP's single-request path (`batch_endpoint = false`, one request per change) is measured
too, on fewer records (`--erp-records`) with more lanes (`erp_single.deliver`): its ceiling is
`concurrency / latency` requests per second. Then `reconcile_bench.measure` times one reconcile
run over `--reconcile-edits` ERP edits (edits/s, SQL statements per edit).

Prints records/s and writes `bench/results/<date>-delivery.json`. Target: >= 10,000 records/s
for every destination with batching and bounded concurrency at 10 ms per request.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pyarrow.parquet as pq
import reconcile_bench  # bench/ is the script's own folder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from subscription_export.core.db import engine_for  # noqa: E402
from subscription_export.core.settings import Settings  # noqa: E402
from subscription_export.delivery.config import DestinationConfig, Kind, RetryBudget  # noqa: E402
from subscription_export.delivery.dispatch import deliver  # noqa: E402
from subscription_export.delivery.prior_state import prior_images  # noqa: E402
from subscription_export.delivery.window import deliver_window  # noqa: E402
from subscription_export.export.cut import cut_windows  # noqa: E402
from subscription_export.export.flow import export_window_file  # noqa: E402
from subscription_export.runtime import Project  # noqa: E402
from subscription_export.sandbox.faults import FaultPlan, FaultSpec  # noqa: E402
from subscription_export.sandbox.generator import generate  # noqa: E402
from subscription_export.sandbox.server import running_sandbox  # noqa: E402
from subscription_export.source.demo_table import init_demo_source  # noqa: E402
from subscription_export.state.windows import list_windows  # noqa: E402

TARGET_RECORDS_PER_S = 10_000
MISSED_TARGET_EXIT = 3
"""The exit status of a run that completed but missed the target: `make bench` goes on past it
(the summary reports the miss) and stops at any other failure - an exception exits with 1."""


def _destination(
    name: str, url: str, batch: int, lanes: int, batch_endpoint: bool = True
) -> DestinationConfig:
    return DestinationConfig(
        name=name,
        kind=cast(Kind, name),
        base_url=url,
        batch_size=batch,
        batch_endpoint=batch_endpoint,
        max_concurrency=lanes,
        read_timeout_s=30.0,
        retry=RetryBudget(max_attempts=5, base_delay_s=0.05, max_delay_s=1.0, total_s=60.0),
    )


_SERVE = (
    "import json, sys; from subscription_export.sandbox.faults import FaultPlan;"
    " from subscription_export.sandbox.server import serve_forever;"
    " plan = FaultPlan.from_json(json.loads(sys.argv[3]));"
    " serve_forever(sys.argv[1], int(sys.argv[2]), faults=plan)"
)


def _cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) of process `pid` so far, where /proc tells (Linux)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _system(name: str, faults: FaultPlan, in_process: bool) -> Iterator[tuple[str, int | None]]:
    """A fresh sandbox system and its process id; by default in its own process, as a remote
    system would be (in this process its request handling would compete with the client for
    the GIL; its id is then None: its CPU time is the client's)."""
    if in_process:
        with running_sandbox((name,), faults=faults) as servers:
            yield servers[name].url, None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVE, name, str(port), json.dumps(faults.to_json())],
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sandbox {name} did not start on port {port}") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", server.pid
    finally:
        server.terminate()
        server.wait(timeout=10)


def _source(workdir: Path, records: int) -> tuple[Project, str]:
    """A SQLite source with `records` changes in one window, exported to Parquet."""
    settings = Settings(
        source_url=f"sqlite:///{workdir / 'source.db'}",
        state_url=f"sqlite:///{workdir / 'state.db'}",
        export_dir=workdir / "exports",
        window_max_changes=records,
        window_max_age_s=0.0,
        read_batch_size=50_000,
    )
    source = engine_for(settings.source_url, writer=True)
    init_demo_source(source)
    generate(source, subscriptions=max(1, records // 5), changes=records, seed=11)
    project = Project(settings)
    cut_windows(project)
    [window] = list_windows(project.state)
    export_window_file(project, "parquet", window, holder="bench")
    return project, window.key


def _measure(label: str, records: int, run: Any, server_pid: int | None = None) -> dict[str, Any]:
    """Wall time and records/s of `run()`, and the CPU time it took in this process (every
    client thread) and in the sandbox's: on a shared machine the wall time follows the load,
    the CPU time per record much less so."""
    gc.collect()  # the setup's garbage: not collected inside the timed run (see reconcile_bench)
    client_before, server_before = time.process_time(), _cpu_s(server_pid)
    started = time.perf_counter()
    extra = run()
    seconds = time.perf_counter() - started
    client_cpu = time.process_time() - client_before
    server_after = _cpu_s(server_pid)
    server_cpu = (
        None if server_before is None or server_after is None else server_after - server_before
    )
    rate = records / seconds
    cpu = f"client {client_cpu * 1e6 / records:4.0f} us"
    if server_cpu is not None:
        cpu += f", sandbox {server_cpu * 1e6 / records:4.0f} us"
    print(
        f"  {label:<40} {records:>7} records in {seconds:6.2f} s = {rate:>9,.0f} records/s"
        f" (CPU a record: {cpu})"
    )
    return {
        "records": records,
        "seconds": round(seconds, 3),
        "records_per_s": round(rate),
        "client_cpu_us_per_record": round(client_cpu * 1e6 / records, 1),
        "sandbox_cpu_us_per_record": (
            None if server_cpu is None else round(server_cpu * 1e6 / records, 1)
        ),
        "details": extra,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--erp-records", type=int, default=2_000)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument(
        "--batch-size", type=int, default=0, help="changes a request (0: each kind's default)"
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--erp-concurrency", type=int, default=32)
    parser.add_argument("--reconcile-edits", type=int, default=200)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="serve the sandbox from threads of this process (shares the GIL with the client)",
    )
    args = parser.parse_args()

    faults = FaultPlan(default=FaultSpec(latency_s=args.latency_ms / 1000.0))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"preparing {args.records} changes (SQLite source → one Parquet window) ...")
        project, key = _source(Path(tmp), args.records)
        window = list_windows(project.state)[0]
        table = pq.read_table(project.file_path("parquet", key)).to_pylist()
        prior = {k: v for k, v in prior_images(project.source, window).items() if v is not None}
        where = "threads of this process" if args.in_process else "its own process"
        print(
            f"latency {args.latency_ms:g} ms per request,"
            f" batches of {args.batch_size or 'the kind default'},"
            f" {args.concurrency} lanes; each sandbox system in {where}"
        )
        for name in ("erp", "crm", "accounting"):
            # A fresh system per measurement: the second would otherwise meet newer versions.
            with _system(name, faults, args.in_process) as (url, pid):
                config = _destination(name, url, args.batch_size, args.concurrency)
                with config.client() as client:

                    def transport(config: DestinationConfig = config, client: Any = client) -> Any:
                        report = deliver(
                            table,
                            client,
                            window_key=key,
                            batch_size=config.batch_size,
                            max_concurrency=config.max_concurrency,
                            prior_state=prior if config.kind == "accounting" else None,
                        )
                        assert report.stats.dead_lettered == 0, report.dead_letters[:3]
                        return report.stats.as_metadata()

                    results[f"{name}.deliver"] = _measure(
                        f"{name} deliver()", len(table), transport, pid
                    )
            with _system(name, faults, args.in_process) as (url, pid):
                config = _destination(name, url, args.batch_size, args.concurrency)

                def window_path(config: DestinationConfig = config) -> Any:
                    outcome = deliver_window(project, config, window, "bench", policy="block")
                    assert outcome.status == "delivered" and outcome.dead_lettered == 0, outcome
                    return outcome.metadata()

                results[f"{name}.deliver_window"] = _measure(
                    f"{name} deliver_window() (Parquet)", len(table), window_path, pid
                )

        erp_rows = table[: args.erp_records]
        with _system("erp", faults, args.in_process) as (url, pid):
            erp = _destination(
                "erp", url, args.batch_size, args.erp_concurrency, batch_endpoint=False
            )
            with erp.client() as client:

                def erp_transport() -> Any:
                    report = deliver(
                        erp_rows,
                        client,
                        window_key=key,
                        batch_size=erp.batch_size,
                        max_concurrency=erp.max_concurrency,
                    )
                    assert report.stats.dead_lettered == 0, report.dead_letters[:3]
                    return report.stats.as_metadata()

                results["erp_single.deliver"] = _measure(
                    f"erp deliver() ({args.erp_concurrency} lanes, 1 req/change)",
                    len(erp_rows),
                    erp_transport,
                    pid,
                )

        results["reconcile"] = reconcile_bench.measure(args.reconcile_edits, args.latency_ms)

    # The slowest system decides (accounting skips rows that book nothing).
    worst = min(
        results[f"{n}.deliver_window"]["records_per_s"] for n in ("erp", "crm", "accounting")
    )
    report = {
        "benchmark": "delivery",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "target_records_per_s": TARGET_RECORDS_PER_S,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{dt.date.today().isoformat()}-delivery.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    verdict = "meets" if worst >= TARGET_RECORDS_PER_S else "MISSES"
    print(
        f"batched delivery through deliver_window, slower system: {worst:,} records/s"
        f" ({verdict} the {TARGET_RECORDS_PER_S:,} target)"
    )
    print(f"wrote {path}")
    return 0 if worst >= TARGET_RECORDS_PER_S else MISSED_TARGET_EXIT


if __name__ == "__main__":
    sys.exit(main())
