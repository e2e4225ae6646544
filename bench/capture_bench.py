"""Capture overhead on PostgreSQL: single-row UPDATE transactions/s with the trigger off vs on.

    .venv/bin/python bench/capture_bench.py [--rows 100000] [--seconds 3] [--rounds 7]
        [--clients 4] [--statement-rows 1] [--synchronous-commit off]

A fresh schema holds the demo's `subscriptions` table with `--rows` rows and the capture
installed by `init` (trigger, change log and its indexes, exactly as production has them).
`pgbench` (PostgreSQL's own load generator, a C client, so the client's cost does not hide the
server's) runs `--clients` connections that each repeat one single-row `UPDATE` transaction on
a random subscription (`--statement-rows` > 1: one UPDATE of that many consecutive rows) for
`--seconds`, once per mode and round:

* `off`           - the capture trigger disabled: the application alone;
* `noop_trigger`  - a row trigger whose function returns at once: the cost of firing one;
* `capture_pk`    - the capture trigger, change log with its primary key only;
* `capture_full_lsn_index` - as `capture`, with the LSN index of releases before the partial
                    one (a full UNIQUE (lsn), which takes an entry for every insert);
* `capture`       - the capture trigger, change log with all its indexes (production);
* `capture_seq`   - as `capture`, with the sequencer numbering the log every
                    `--sequencer-interval` seconds, as the exporter does in production.

Figures on a shared machine: many short rounds (`--rounds` x `--seconds`), each running every
mode once, forwards and backwards in turn, each pair of rounds starting one mode on: drift hits
every mode alike; a mode's ratio is taken against `off` *of the same round* and the headline is
the median of those per-round ratios (their min and max are reported too). pgbench runs with
`synchronous_commit=off` by default: with it on, every commit waits for an fsync of a disk the
other tenants share, which makes tx/s swing 10x between seconds and hides the server work the
capture adds (`--synchronous-commit on` measures that too, and makes the ratio look better).
Between modes the change log is emptied and the table vacuumed. Every capture mode is checked
to have logged one change per updated row, and `capture_seq` to have numbered them all, so a
trigger that silently stopped firing fails the run. Writes `bench/results/<date>-capture.json`
(`-capture-100rows`, `-capture-synccommit` for the other shapes); the schema is dropped at the
end.
Target (issue 15): `capture_seq` >= 0.95x `off`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from subscription_export.core.db import engine_for  # noqa: E402
from subscription_export.source.demo_table import create_demo_table  # noqa: E402
from subscription_export.source.schema import init_source  # noqa: E402
from subscription_export.source.sequencer import sequence  # noqa: E402

PG = os.environ.get("SUBSCRIPTION_EXPORT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
MODES = ("off", "noop_trigger", "capture_pk", "capture_full_lsn_index", "capture", "capture_seq")
# The LSN index `init` creates is partial; the mode before it had the full one.
_PARTIAL = " WHERE (lsn IS NOT NULL)"
TARGET_RATIO = 0.95
APP = "capture_bench"  # application_name of the backends whose CPU the bench reads
_TICKS = os.sysconf("SC_CLK_TCK")
_CONNECT_TRIES = 5
NOOP_TRIGGER = "capture_bench_noop"
# The change log's indexes besides its primary key, as `init` created them, with the SQL that
# drops and re-creates each (a UNIQUE column's index belongs to its constraint). Read from the
# catalog at run time, so the bench follows the schema rather than restating it.
_SECONDARY_INDEXES = """
SELECT c.relname,
       CASE WHEN con.oid IS NULL THEN format('DROP INDEX %I', c.relname)
            ELSE format('ALTER TABLE subscription_change_log DROP CONSTRAINT %I', con.conname)
       END,
       CASE WHEN con.oid IS NULL THEN pg_get_indexdef(i.indexrelid)
            ELSE format('ALTER TABLE subscription_change_log ADD CONSTRAINT %I %s',
                        con.conname, pg_get_constraintdef(con.oid))
       END
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.contype IN ('u', 'x')
WHERE i.indrelid = 'subscription_change_log'::regclass AND NOT i.indisprimary
ORDER BY c.relname
"""
# The capture's row trigger on the table (found by its function, whatever `init` named it;
# `tgtype & 1`: a row trigger, not the statement-level one that captures TRUNCATE).
_CAPTURE_TRIGGER = """
SELECT tgname FROM pg_trigger
WHERE tgrelid = 'subscriptions'::regclass AND tgfoid = 'subscription_capture'::regproc
  AND tgtype & 1 = 1
"""

_FILL = """
INSERT INTO subscriptions
SELECT 'sub_' || lpad(g::text, 8, '0'), 'user_' || (g %% 99991), 'Plan ' || (g %% 7),
       (ARRAY['streaming','software','news','fitness'])[1 + g %% 4],
       ((g %% 49999) / 100.0)::numeric(18, 4),
       (ARRAY['USD','EUR','GBP','JPY'])[1 + g %% 4],
       (ARRAY['monthly','yearly','weekly'])[1 + g %% 3], 'active',
       date '2026-01-01' + g %% 365, 'Europe/Berlin', now(), now(), 1
FROM generate_series(1, %(rows)s) AS g
"""

# One transaction of the application: a single-row UPDATE of a random subscription, or one
# UPDATE of `width` consecutive subscriptions.
_SCRIPT = """\\set n random(0, {blocks})
UPDATE subscriptions SET amount = amount + 1, version = version + 1, updated_at = now()
 WHERE id BETWEEN 'sub_' || lpad(CAST(:n * {width} + 1 AS text), 8, '0')
              AND 'sub_' || lpad(CAST(:n * {width} + {width} AS text), 8, '0');
"""


@contextmanager
def bench_schema(admin_url: str) -> Iterator[str]:
    """A new schema for the run (dropped afterwards); yields its name."""
    schema = f"capture_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@dataclass(frozen=True)
class LogIndex:
    """A secondary index of the change log and the SQL that drops and re-creates it."""

    name: str
    drop: str
    create: str


@dataclass(frozen=True)
class Setup:
    capture_trigger: str
    indexes: tuple[LogIndex, ...]


def prepare_after_init(conn: psycopg.Connection[Any]) -> Setup:
    """After `init`: a no-op trigger beside the capture one; what the modes switch."""
    conn.execute(
        "CREATE FUNCTION capture_bench_noop() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RETURN NULL; END $$"
    )
    conn.execute(
        f"CREATE TRIGGER {NOOP_TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON subscriptions"
        " FOR EACH ROW EXECUTE FUNCTION capture_bench_noop()"
    )
    row = conn.execute(_CAPTURE_TRIGGER).fetchone()
    if row is None:
        raise RuntimeError("init installed no capture trigger on subscriptions")
    rows = conn.execute(_SECONDARY_INDEXES).fetchall()
    return Setup(str(row[0]), tuple(LogIndex(*map(str, r)) for r in rows))


def set_mode(conn: psycopg.Connection[Any], mode: str, setup: Setup) -> None:
    """Triggers and change-log indexes as `mode` wants them; the log emptied, table vacuumed."""
    capture = mode.startswith("capture")
    for trigger, enabled in (
        (setup.capture_trigger, capture),
        (NOOP_TRIGGER, mode == "noop_trigger"),
    ):
        action = "ENABLE" if enabled else "DISABLE"
        name = sql.Identifier(trigger).as_string(conn)
        conn.execute(f"ALTER TABLE subscriptions {action} TRIGGER {name}")
    conn.execute("TRUNCATE subscription_change_log RESTART IDENTITY")
    present = {r[0] for r in conn.execute(_SECONDARY_INDEXES).fetchall()}
    for index in setup.indexes:
        if index.name in present:
            conn.execute(index.drop)
        if mode == "capture_full_lsn_index":
            conn.execute(index.create.replace(_PARTIAL, ""))
        elif mode != "capture_pk":
            conn.execute(index.create)
    conn.execute("VACUUM ANALYZE subscriptions")
    conn.execute("CHECKPOINT")  # every mode starts without the previous one's dirty pages


def run_pgbench(
    url: str, schema: str, script: Path, clients: int, seconds: float, sync_commit: str
) -> dict[str, Any]:
    """tx/s and transactions of one pgbench run (no vacuum, prepared statements)."""
    command = [
        shutil.which("pgbench") or "pgbench",
        "--no-vacuum",
        "--protocol=prepared",
        f"--client={clients}",
        f"--jobs={clients}",
        f"--time={max(1, round(seconds))}",
        f"--file={script}",
        url,
    ]
    options = f"-c search_path={schema} -c synchronous_commit={sync_commit}"
    env = {**os.environ, "PGOPTIONS": options, "PGAPPNAME": APP}
    for attempt in range(_CONNECT_TRIES):
        with backend_cpu(url) as cpu:
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        # Other tenants of a shared server may hold every connection for a moment.
        if "too many clients" not in done.stderr or attempt == _CONNECT_TRIES - 1:
            break
        time.sleep(2.0)
    tps = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", done.stdout, re.M)
    count = re.search(r"^number of transactions actually processed: (\d+)", done.stdout, re.M)
    failed = re.search(r"^number of failed transactions: (\d+)", done.stdout, re.M)
    if done.returncode != 0 or tps is None or count is None:
        raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr or done.stdout}")
    if failed is not None and int(failed.group(1)):
        raise RuntimeError(f"pgbench: {failed.group(1)} failed transactions\n{done.stdout}")
    transactions = int(count.group(1))
    return {
        "tx_per_s": round(float(tps.group(1)), 1),
        "transactions": transactions,
        "server_cpu_s": round(cpu["cpu_s"], 2),
        "server_cpu_ms_per_tx": round(1000 * cpu["cpu_s"] / max(1, transactions), 4),
    }


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (None: gone, or not on this host)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS


@contextmanager
def backend_cpu(url: str, every_s: float = 0.05) -> Iterator[dict[str, float]]:
    """CPU seconds the server's backends named APP spend while the block runs, read from /proc
    (the server runs on this host): unlike tx/s, what a transaction costs the server hardly
    depends on how much of the machine other tenants take. A backend that appears after the
    first poll (pgbench's) counts from 0; one already there (the sequencer's) from then. Its
    last <= `every_s` before it exits is missed, alike in every mode. Yields {"cpu_s": ...}."""
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    stop, polled = threading.Event(), threading.Event()

    def poll() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while True:
                query = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
                for (pid,) in conn.execute(query, (APP,)).fetchall():
                    if (cpu := cpu_s(int(pid))) is not None:
                        first.setdefault(pid, cpu if not polled.is_set() else 0.0)
                        last[pid] = cpu
                polled.set()
                if stop.wait(every_s):
                    return

    result: dict[str, float] = {}
    thread = threading.Thread(target=poll, name="capture-bench-cpu", daemon=True)
    thread.start()
    polled.wait(10.0)
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["cpu_s"] = sum(last[pid] - first[pid] for pid in last)


@contextmanager
def sequencer_running(engine: sa.Engine, interval_s: float) -> Iterator[list[int]]:
    """The sequencer numbering the log every `interval_s` in a thread; yields numbered counts."""
    stop = threading.Event()
    numbered: list[int] = []

    def loop() -> None:
        while not stop.wait(interval_s):
            numbered.append(sequence(engine).numbered)

    thread = threading.Thread(target=loop, name="capture-bench-sequencer", daemon=True)
    thread.start()
    try:
        yield numbered
    finally:
        stop.set()
        thread.join()


def checked_log(
    conn: psycopg.Connection[Any], mode: str, transactions: int, width: int = 1
) -> dict[str, int]:
    """The change log after a mode: `width` rows per transaction if captured (else it fails)."""
    logged, unsequenced = conn.execute(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE lsn IS NULL) FROM subscription_change_log"
    ).fetchone() or (0, 0)
    expected = transactions * width if mode.startswith("capture") else 0
    if logged != expected:
        raise RuntimeError(f"{mode}: {transactions} transactions logged {logged} changes")
    return {"logged": int(logged), "unsequenced_at_end": int(unsequenced)}


def measure_mode(
    mode: str,
    conn: psycopg.Connection[Any],
    engine: sa.Engine,
    run: Callable[[], dict[str, Any]],
    setup: Setup,
    interval_s: float,
    width: int,
) -> dict[str, Any]:
    set_mode(conn, mode, setup)
    if mode != "capture_seq":
        figures = run()
        return {**figures, **checked_log(conn, mode, figures["transactions"], width)}
    with sequencer_running(engine, interval_s) as numbered:
        figures = run()
    log = checked_log(conn, mode, figures["transactions"], width)
    final = sequence(engine)
    if final.waiting or sum(numbered) + final.numbered != figures["transactions"] * width:
        raise RuntimeError(f"capture_seq: numbered {sum(numbered)} + {final.numbered} changes")
    return {**figures, **log, "sequencer_calls": len(numbered), "numbered_during": sum(numbered)}


def summarize(rounds: list[dict[str, dict[str, Any]]], indexes: list[str]) -> dict[str, Any]:
    """Each mode's ratio to `off` of the same round, its median over rounds (the headline: drift
    between rounds cancels in a ratio taken within one), min and max; and median tx/s. The same
    for server CPU per transaction (`off`'s over the mode's: the share of the server's capacity
    left to the application), the steadier figure on a shared machine."""
    tps = {m: [r[m]["tx_per_s"] / r["off"]["tx_per_s"] for r in rounds] for m in MODES}
    cpu = {m: [_cpu_ratio(r["off"], r[m]) for r in rounds] for m in MODES}
    ratio = {m: round(statistics.median(v), 3) for m, v in tps.items()}
    cpu_ratio = {m: round(statistics.median(v), 3) for m, v in cpu.items()}
    median = {m: statistics.median(r[m]["tx_per_s"] for r in rounds) for m in MODES}
    per_tx = {m: statistics.median(r[m]["server_cpu_ms_per_tx"] for r in rounds) for m in MODES}
    return {
        "median_tx_per_s": {m: round(v, 1) for m, v in median.items()},
        "ratio_to_off": ratio,
        "ratio_to_off_range": {m: [round(min(v), 3), round(max(v), 3)] for m, v in tps.items()},
        "capture_seq_ratio_per_round": [round(v, 3) for v in tps["capture_seq"]],
        "median_server_cpu_ms_per_tx": {m: round(v, 4) for m, v in per_tx.items()},
        "cpu_ratio_to_off": cpu_ratio,
        "cpu_ratio_to_off_range": {m: [round(min(v), 3), round(max(v), 3)] for m, v in cpu.items()},
        # Where the cost is, as shares of `off` (differences of median ratios).
        "parts": _parts(ratio),
        "cpu_parts": _parts(cpu_ratio),
        "secondary_log_index_names": indexes,
    }


def _cpu_ratio(off: dict[str, Any], mode: dict[str, Any]) -> float:
    return float(off["server_cpu_ms_per_tx"]) / max(1e-9, float(mode["server_cpu_ms_per_tx"]))


def _parts(ratio: dict[str, float]) -> dict[str, float]:
    return {
        "firing_a_row_trigger": round(1 - ratio["noop_trigger"], 3),
        "trigger_body_and_log_insert": round(ratio["noop_trigger"] - ratio["capture_pk"], 3),
        "secondary_log_indexes": round(ratio["capture_pk"] - ratio["capture"], 3),
        "full_lsn_index_over_partial": round(ratio["capture"] - ratio["capture_full_lsn_index"], 3),
        "sequencer": round(ratio["capture"] - ratio["capture_seq"], 3),
    }


def round_order(number: int) -> tuple[str, ...]:
    """Round `number`'s order of modes: forwards and backwards in turn, each pair of rounds
    starting one mode further on, so each mode runs first, last and in between alike."""
    base = MODES if number % 2 == 0 else tuple(reversed(MODES))
    shift = (number // 2) % len(MODES)
    return base[shift:] + base[:shift]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--statement-rows", type=int, default=1, help="rows per UPDATE")
    parser.add_argument("--synchronous-commit", choices=("off", "on"), default="off")
    parser.add_argument("--sequencer-interval", type=float, default=1.0)
    parser.add_argument("--pg-url", default=PG)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    return parser.parse_args()


def measure(args: argparse.Namespace) -> tuple[list[dict[str, dict[str, Any]]], Setup]:
    """Every mode, `args.rounds` times, in a schema of its own."""
    rounds: list[dict[str, dict[str, Any]]] = []
    with bench_schema(args.pg_url) as schema, tempfile.TemporaryDirectory() as tmp:
        engine = engine_for(
            f"{args.pg_url}?options=-csearch_path%3D{schema}&application_name={APP}", writer=True
        )
        create_demo_table(engine)
        script = Path(tmp) / "update.sql"
        width = args.statement_rows
        script.write_text(_SCRIPT.format(blocks=args.rows // width - 1, width=width))
        options = f"-csearch_path={schema}"
        with psycopg.connect(args.pg_url, autocommit=True, options=options) as conn:
            conn.execute(_FILL, {"rows": args.rows})
            init_source(engine)
            setup = prepare_after_init(conn)
            print(
                f"{args.rows:,} rows, {width} a statement; {args.clients} pgbench clients x"
                f" {args.seconds:g} s a mode, synchronous_commit={args.synchronous_commit};"
                f" change log secondary indexes: {', '.join(i.name for i in setup.indexes)}"
            )

            def run() -> dict[str, Any]:
                return run_pgbench(
                    args.pg_url,
                    schema,
                    script,
                    args.clients,
                    args.seconds,
                    args.synchronous_commit,
                )

            for number in range(args.rounds):
                figures: dict[str, dict[str, Any]] = {}
                for mode in round_order(number):
                    figures[mode] = measure_mode(
                        mode, conn, engine, run, setup, args.sequencer_interval, width
                    )
                    rate = figures[mode]["tx_per_s"]
                    cpu = figures[mode]["server_cpu_ms_per_tx"]
                    print(
                        f"  round {number + 1} {mode:<22} {rate:>9,.0f} tx/s {cpu:8.3f} ms CPU/tx"
                    )
                rounds.append(figures)
        engine.dispose()
        engine_for.cache_clear()
    return rounds, setup


def main() -> int:
    args = parse_args()
    if shutil.which("pgbench") is None:
        print("pgbench is not on PATH (it ships with PostgreSQL's client tools)", file=sys.stderr)
        return 2
    rounds, setup = measure(args)
    summary = summarize(rounds, [index.name for index in setup.indexes])
    report = {
        "benchmark": "capture_overhead",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "postgresql": server_version(args.pg_url),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "target_ratio": TARGET_RATIO,
        **summary,
        "rounds": rounds,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    # Only the default run (single-row, no fsync wait) is issue 15's row in the summary.
    kind = "capture"
    if args.statement_rows != 1:
        kind += f"-{args.statement_rows}rows"
    if args.synchronous_commit == "on":
        kind += "-synccommit"
    path = args.out / f"{dt.date.today().isoformat()}-{kind}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    ratio = summary["ratio_to_off"]["capture_seq"]
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(f"capture (sequencer running) / off = {ratio} ({verdict} the {TARGET_RATIO} target)")
    print(f"parts (share of off's tx/s): {summary['parts']}")
    print(f"server CPU per transaction, off's / mode's: {summary['cpu_ratio_to_off']}")
    print(f"parts (share of off's server CPU capacity): {summary['cpu_parts']}")
    print(f"wrote {path}")
    return 0


def server_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


if __name__ == "__main__":
    sys.exit(main())
