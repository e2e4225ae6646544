"""Window delivery end to end: source → windows → Parquet → real sandbox servers → state.

Every test writes a real source (SQLite file, and PostgreSQL where the `settings` fixture is
parametrized), cuts and exports windows through the pipeline, then delivers them with
`deliver_window` to the sandbox ERP, CRM and accounting servers over HTTP. The assertions
compare each system's stored state with the source: ERP and CRM hold exactly the live
subscriptions (deleted ones gone), the ledger holds exactly the journal the change history
books, each subscription's ledger balance equals its current recognized price, and every
operation was applied exactly once (the servers count applications per idempotency key).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from subscription_export.core.settings import Settings, replace
from subscription_export.delivery.config import DestinationsConfig, load_destinations
from subscription_export.delivery.dead_letters import list_dead_letters
from subscription_export.delivery.mapping import (
    crm_item,
    erp_record,
    is_delete,
    journal_plan,
    recognized_price,
)
from subscription_export.delivery.prior_state import prior_images
from subscription_export.delivery.window import (
    DeliveryOrderError,
    DestinationBlocked,
    catch_up,
    deliver_window,
    replay_dead_letters,
)
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.formats.storage import open_parquet
from subscription_export.metrics.store import load_exports
from subscription_export.runtime import Project
from subscription_export.sandbox.faults import FaultPlan, FaultSpec
from subscription_export.sandbox.server import SandboxServer, running_sandbox
from subscription_export.source.schema import clear_origin, set_origin
from subscription_export.state.progress import completed_keys
from subscription_export.state.windows import Window, list_windows
from subscription_export_tests.helpers import delete, insert, update, writer

HOLDER = "test-holder"
SEEDED_FAULTS = FaultSpec(
    error=0.30,
    error_statuses=(503,),
    rate_limit=0.10,
    retry_after_s=1,  # capped by the 20 ms delay cap of the test retry budget
    timeout=0.02,
    timeout_s=0.15,  # longer than the 0.1 s read timeout: the client gives up and retries
    item_failure=0.05,
)


# -- helpers shared with the crash-safety and Dagster tests -------------------------------------


def write_changes(url: str, seed: int, subscriptions: int, changes: int, prefix: str = "s") -> None:
    """Creates, then seeded price/status/currency updates, deletes and new creates."""
    rng = random.Random(seed)
    engine = writer(url)
    alive: list[str] = []
    created = 0

    def create(conn: sa.Connection) -> None:
        nonlocal created
        ident = f"{prefix}{created:04d}"
        created += 1
        insert(conn, ident, amount=f"{rng.randrange(100, 99999) / 100:.2f}")
        alive.append(ident)

    with engine.begin() as conn:
        for _ in range(subscriptions):
            create(conn)
    done = 0
    while done < changes:
        with engine.begin() as conn:
            for _ in range(min(10, changes - done)):
                done += 1
                action = rng.random()
                if action < 0.06 or not alive:
                    create(conn)
                    continue
                ident = rng.choice(alive)
                if action < 0.14:
                    delete(conn, ident)
                    alive.remove(ident)
                elif action < 0.55:
                    amount = f"{rng.randrange(100, 99999) / 100:.2f}"
                    update(conn, ident, amount=amount)
                elif action < 0.85:
                    update(conn, ident, status=rng.choice(["active", "paused", "past_due"]))
                else:
                    update(conn, ident, currency=rng.choice(["EUR", "USD", "GBP"]))


def export_all(project: Project) -> list[Window]:
    """Cut every due window and export the ones not exported yet; all windows, in order."""
    cut_windows(project)
    done = completed_keys(project.state, "parquet")
    for window in list_windows(project.state):
        if window.key not in done:
            export_window_file(project, "parquet", window, holder=HOLDER)
    return list_windows(project.state)


FAST_RETRY = {"max_attempts": 200, "base_delay_s": 0.002, "max_delay_s": 0.02, "total_s": 20}


def write_destinations(
    path: Path,
    servers: dict[str, SandboxServer],
    *,
    batch_size: int = 5,
    max_concurrency: int = 4,
    read_s: float = 0.1,
    retry: dict[str, float] | None = None,
) -> DestinationsConfig:
    """A destinations.toml pointing at the running sandbox servers, loaded and validated."""
    budget = {**FAST_RETRY, **(retry or {})}
    lines = []
    for name, server in servers.items():
        lines += [
            f"[destinations.{name}]",
            f'base_url = "{server.url}"',
            f"batch_size = {batch_size}",
            f"max_concurrency = {max_concurrency}",
            f"[destinations.{name}.timeouts]",
            "connect_s = 2.0",
            f"read_s = {read_s}",
            f"[destinations.{name}.retry]",
            *(f"{k} = {v}" for k, v in budget.items()),
            "",
        ]
    path.write_text("\n".join(lines))
    return load_destinations(path)


def window_rows(project: Project, window: Window) -> list[dict[str, Any]]:
    with open_parquet(project.file_path("parquet", window.key)) as parquet:  # local or s3://
        return parquet.read().to_pylist()


def source_state(project: Project) -> dict[str, dict[str, Any]]:
    """The live subscriptions as the source holds them now."""
    with project.source.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT id, amount, currency, status, version FROM subscriptions")
        ).all()
    return {
        r.id: {
            "amount": Decimal(str(r.amount)),
            "currency": r.currency,
            "status": r.status,
            "version": r.version,
        }
        for r in rows
    }


def assert_in_sync(
    project: Project,
    servers: dict[str, SandboxServer],
    *,
    not_applied: dict[str, set[str]] | None = None,
    skipped: dict[str, set[str]] | None = None,
) -> None:
    """Each system's state equals the source; each operation was applied exactly once.

    `not_applied`: keys that legitimately reached no application (a delete the remote answered
    404 because it had no such record). `skipped`: keys never sent (echo suppression).
    """
    not_applied = not_applied or {}
    skipped = skipped or {}
    keyed: list[tuple[str, dict[str, Any]]] = [
        (w.key, row) for w in list_windows(project.state) for row in window_rows(project, w)
    ]
    rows = [row for _, row in keyed]
    last: dict[str, dict[str, Any]] = {}
    for row in rows:
        if is_delete(row):
            last.pop(row["id"], None)
        else:
            last[row["id"]] = row
    source = source_state(project)
    assert set(last) == set(source)

    def keys(name: str) -> dict[str, int]:
        wanted = {f"{name}:{window}:{row['_lsn']}" for window, row in keyed}
        return dict.fromkeys(wanted - not_applied.get(name, set()) - skipped.get(name, set()), 1)

    if "erp" in servers:
        erp = servers["erp"].system
        assert erp.records == {ident: erp_record(row) for ident, row in last.items()}
        assert {i: r["version"] for i, r in erp.records.items()} == {
            i: s["version"] for i, s in source.items()
        }
        assert erp.applications == keys("erp")
    if "crm" in servers:
        crm = servers["crm"].system
        assert crm.records == {ident: crm_item(row)["record"] for ident, row in last.items()}
        assert crm.applications == keys("crm")
    if "accounting" in servers:
        _assert_ledger(project, servers["accounting"], keyed, source)


def _assert_ledger(
    project: Project,
    server: SandboxServer,
    keyed: list[tuple[str, dict[str, Any]]],
    source: dict[str, dict[str, Any]],
) -> None:
    rows = [row for _, row in keyed]
    window_of = {row["_lsn"]: window for window, row in keyed}
    plan = journal_plan(rows)  # the whole history from nothing: no prior state needed
    expected = {}
    for entries in plan.values():
        assert isinstance(entries, list), entries
        for entry in entries:
            expected[entry["entry_id"]] = entry
    journal = server.system.journal
    assert len(journal) == len(expected)  # nothing booked twice
    assert {e["entry_id"]: {k: v for k, v in e.items() if k != "posted_at"} for e in journal} == (
        expected
    )
    keys = {
        f"accounting:{window_of[e['lsn']]}:{e['lsn']}.{e['entry_id'].rsplit('-', 1)[1]}"
        for e in expected.values()
    }
    assert server.system.applications == dict.fromkeys(keys, 1)
    # Independent of the mapping code: each subscription's balance is its current price.
    balance: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for entry in journal:
        sign = 1 if entry["kind"] == "revenue" else -1
        balance[(entry["subscription_id"], entry["currency"])] += sign * Decimal(entry["amount"])
    owed = {k: v for k, v in balance.items() if v != 0}
    current = {}
    for ident, image in source.items():
        price = recognized_price({**image, "id": ident})
        if price is not None:
            current[(ident, price[0])] = price[1]
    assert owed == current


@pytest.fixture
def sandbox() -> Iterator[dict[str, SandboxServer]]:
    with running_sandbox() as servers:
        yield servers


def small_windows(settings: Settings, size: int = 60) -> Project:
    return Project(replace(settings, window_max_changes=size))


# -- tests -------------------------------------------------------------------------------------


def test_windows_reach_every_system_under_seeded_faults(settings: Settings, tmp_path: Path) -> None:
    project = small_windows(settings)
    write_changes(settings.source_url, seed=5, subscriptions=40, changes=200)
    windows = export_all(project)
    assert len(windows) >= 4
    faults = FaultPlan(default=SEEDED_FAULTS, seed=23)
    with running_sandbox(faults=faults) as servers:
        config = write_destinations(tmp_path / "destinations.toml", servers)
        outcomes: dict[str, list[Any]] = {name: [] for name in servers}
        for window in windows:  # ERP and accounting: one call per window, in order
            for name in ("erp", "accounting"):
                outcomes[name].append(
                    deliver_window(project, config.destinations[name], window, HOLDER)
                )
        # CRM: only the last window is asked for; the earlier ones are caught up first.
        crm = deliver_window(project, config.destinations["crm"], windows[-1], HOLDER)
        assert crm.caught_up == tuple(w.key for w in windows[:-1])

        assert_in_sync(project, servers)
        for name in servers:
            assert project.watermarks.get(name) == windows[-1].hi
        for name in ("erp", "accounting"):
            assert all(o.status == "delivered" for o in outcomes[name])
            assert sum(o.retried for o in outcomes[name]) > 0
            assert sum(o.dead_lettered for o in outcomes[name]) == 0
            assert [o.metadata()["lsn_from"] for o in outcomes[name]] == [w.lo for w in windows]
        assert crm.retried > 0 and crm.dead_lettered == 0
        assert sum(o.skipped for o in outcomes["accounting"]) > 0  # changes that book nothing
        for name in servers:
            injected = servers[name].system.faults_injected
            assert injected.get("error", 0) > 0 and injected.get("rate_limit", 0) > 0, injected
        for name in ("crm", "accounting"):
            assert servers[name].system.faults_injected.get("item_failure", 0) > 0
        assert servers["erp"].system.faults_injected.get("timeout", 0) > 0

        # Each delivery is in the metrics store beside the formats, with its exact counts.
        recorded = {(m.consumer, m.window_key): m for m in load_exports(project.state)}
        for name, outcome in [*((n, o) for n in ("erp", "accounting") for o in outcomes[n])]:
            metrics = recorded[(name, outcome.window.key)]
            assert metrics.records == outcome.delivered
            assert (metrics.retries, metrics.dead_letters) == (outcome.retried, 0)
            assert metrics.latency_p50_s is not None and metrics.error_rate == 0.0
        # The CRM's caught-up windows are recorded one by one too.
        assert {k for k in recorded if k[0] == "crm"} == {("crm", w.key) for w in windows}
        assert recorded[("crm", windows[-1].key)].retries == crm.retried
        assert recorded[("crm", windows[-1].key)].records == crm.delivered

        # Asking again sends nothing: every window is already delivered.
        before = {name: server.system.requests_by_status for name, server in servers.items()}
        again = deliver_window(project, config.destinations["erp"], windows[1], HOLDER)
        assert again.status == "already_delivered" and again.rows == 0
        assert servers["erp"].system.requests_by_status == before["erp"]


def test_deletes_reach_every_system_and_unknown_deletes_are_delivered(
    settings: Settings, sandbox: dict[str, SandboxServer], tmp_path: Path
) -> None:
    """A delete of a record the remote no longer has (its user deleted it first) is delivered:
    the ERP answers 404 (already deleted, nothing applied), the CRM `ok`/`absent`; the ledger
    books the refund either way."""
    project = small_windows(settings)
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        for n in range(6):
            insert(conn, f"d{n}", amount="10.50")
    [first] = export_all(project)
    config = write_destinations(tmp_path / "destinations.toml", sandbox)
    for name in sandbox:
        deliver_window(project, config.destinations[name], first, HOLDER)
    for name in ("erp", "crm"):
        sandbox[name].system.delete("d0")  # a remote user deletes it there
    with engine.begin() as conn:
        delete(conn, "d0")
        delete(conn, "d1")
    second = export_all(project)[-1]
    outcomes = {
        name: deliver_window(project, config.destinations[name], second, HOLDER) for name in sandbox
    }
    assert all(o.dead_lettered == 0 and o.delivered == 2 for o in outcomes.values())
    gone = {f"erp:{second.key}:{lsn}" for lsn in (second.lo,)}  # d0's delete hit a 404
    assert_in_sync(project, sandbox, not_applied={"erp": gone})
    assert sandbox["erp"].system.items_by_status.get("404") == 1  # a `$batch` item's answer
    assert {"d0", "d1"} <= sandbox["crm"].system.deleted_ids
    refunds = [e for e in sandbox["accounting"].system.journal if e["kind"] == "refund"]
    assert sorted(e["subscription_id"] for e in refunds) == ["d0", "d1"]


def test_echoes_of_a_systems_own_changes_are_not_sent_back_to_it(
    settings: Settings, sandbox: dict[str, SandboxServer], tmp_path: Path
) -> None:
    project = small_windows(settings)
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        insert(conn, "e1", amount="5.00")
    with engine.begin() as conn:  # a write-back of an edit made in the CRM
        set_origin(conn, "crm")
        update(conn, "e1", amount="6.00")
        clear_origin(conn)
    [window] = export_all(project)
    config = write_destinations(tmp_path / "destinations.toml", sandbox)
    crm = deliver_window(project, config.destinations["crm"], window, HOLDER)
    erp = deliver_window(project, config.destinations["erp"], window, HOLDER)
    assert (crm.skipped, crm.delivered, crm.sent) == (1, 1, 1)
    assert (erp.skipped, erp.delivered) == (0, 2)
    assert list(sandbox["crm"].system.applications) == [f"crm:{window.key}:{window.lo}"]
    assert sandbox["erp"].system.records["e1"]["amount"] == "6.0000"
    assert project.watermarks.get("crm") == window.hi  # a skipped echo does not block


def _two_windows(settings: Settings) -> tuple[Project, Window, Window]:
    """Window 1 creates ten subscriptions, window 2 updates each of them."""
    project = small_windows(settings, size=10)
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        for n in range(10):
            insert(conn, f"b{n}", amount=f"{n + 1}.25")
    with engine.begin() as conn:
        for n in range(10):
            update(conn, f"b{n}", amount=f"{n + 2}.75")
    first, second = export_all(project)
    return project, first, second


LOST_ANSWERS = FaultPlan(
    endpoints={"POST /subscriptions/$batch": FaultSpec(lost_response=1.0)}, seed=3
)


def test_block_holds_the_watermark_until_replay_with_the_same_keys(
    settings: Settings, sandbox: dict[str, SandboxServer], tmp_path: Path
) -> None:
    """The ERP applies every batch of window 1 but its answers are lost; one attempt allowed, so
    each becomes a dead letter. Under `block` the watermark stays before window 1 and window 2
    is refused. Replaying with the original keys gets the stored answers (nothing applied
    twice), completes window 1 and catches up window 2."""
    project, first, second = _two_windows(settings)
    erp = sandbox["erp"]
    config = write_destinations(tmp_path / "d.toml", {"erp": erp}, retry={"max_attempts": 1})
    erp.system.set_faults(LOST_ANSWERS)
    destination = config.destinations["erp"]

    outcome = deliver_window(project, destination, first, HOLDER, policy="block")
    assert outcome.status == "blocked"
    assert (outcome.dead_lettered, outcome.open_dead_letters, outcome.delivered) == (10, 10, 0)
    assert project.watermarks.get("erp") == 0
    letters = list_dead_letters(project.state, "erp")
    assert [d.lsn for d in letters] == list(range(first.lo, first.hi + 1))
    assert all(d.attempts == 1 and d.error.startswith("ConnectionError") for d in letters)
    assert letters[0].idempotency_key == f"erp:{first.key}:{first.lo}"
    with pytest.raises(DestinationBlocked, match="open dead letter"):
        deliver_window(project, destination, second, HOLDER, policy="block")
    assert len(erp.system.records) == 10  # applied, though we never heard back

    erp.system.set_faults(FaultPlan())
    progress = []
    summary = replay_dead_letters(
        project, config, HOLDER, destination="erp", policy="block", on_result=progress.append
    )
    assert (summary.replayed, summary.failed, len(progress)) == (10, 0, 10)
    assert summary.completed_windows == [("erp", first.key)]
    assert [o.window for o in summary.caught_up] == [second]
    assert summary.watermarks == {"erp": second.hi}
    assert erp.system.requests_by_status.get("lost_response") == outcome.batches
    assert_in_sync(project, {"erp": erp})  # every key applied exactly once
    replayed = list_dead_letters(project.state, "erp", status="replayed")
    assert len(replayed) == 10 and all(d.attempts == 2 for d in replayed)
    assert list_dead_letters(project.state, "erp") == []


@pytest.mark.integration
def test_dead_letters_leases_and_watermarks_on_a_postgresql_state(
    sqlite_url: str, pg_url: str, sandbox: dict[str, SandboxServer], tmp_path: Path
) -> None:
    """The same block → replay cycle with the state database (dead letters, leases, completed
    windows, watermarks) on PostgreSQL."""
    from subscription_export.core.db import engine_for
    from subscription_export.source.demo_table import init_demo_source

    init_demo_source(engine_for(sqlite_url, writer=True))
    settings = Settings(source_url=sqlite_url, state_url=pg_url, export_dir=tmp_path / "exports")
    project, first, second = _two_windows(replace(settings, window_max_age_s=0.0))
    crm = sandbox["crm"]
    config = write_destinations(tmp_path / "d.toml", {"crm": crm}, retry={"max_attempts": 1})
    down = FaultSpec(error=1.0, error_statuses=(503,))
    crm.system.set_faults(FaultPlan(endpoints={"POST /batch": down}))
    destination = config.destinations["crm"]
    blocked = deliver_window(project, destination, first, HOLDER, policy="block")
    assert (blocked.status, blocked.open_dead_letters) == ("blocked", 10)
    # Recording the same failures again updates the rows: one per (destination, LSN).
    again = deliver_window(project, destination, first, HOLDER, policy="block")
    assert again.status == "blocked"
    letters = list_dead_letters(project.state, "crm")
    assert len(letters) == 10 and {d.attempts for d in letters} == {2}
    assert all("HTTP 503" in d.error for d in letters)
    assert crm.system.applications == {}
    crm.system.set_faults(FaultPlan())
    summary = replay_dead_letters(project, config, HOLDER, policy="block")
    assert summary.replayed == 10 and summary.watermarks == {"crm": second.hi}
    assert_in_sync(project, {"crm": crm})


def test_skip_records_dead_letters_and_moves_on(
    settings: Settings, sandbox: dict[str, SandboxServer], tmp_path: Path
) -> None:
    project, first, second = _two_windows(settings)
    erp = sandbox["erp"]
    config = write_destinations(tmp_path / "d.toml", {"erp": erp}, retry={"max_attempts": 1})
    destination = config.destinations["erp"]
    erp.system.set_faults(LOST_ANSWERS)
    one = deliver_window(project, destination, first, HOLDER, policy="skip")
    erp.system.set_faults(FaultPlan())
    two = deliver_window(project, destination, second, HOLDER, policy="skip")
    # window 2 updates the same subscriptions: held back behind their open dead letters
    assert (one.status, one.dead_lettered, two.status, two.delivered, two.dead_lettered) == (
        "delivered",
        10,
        "delivered",
        0,
        10,
    )
    assert project.watermarks.get("erp") == second.hi
    assert len(list_dead_letters(project.state, "erp")) == 20
    metrics = {m.window_key: m for m in load_exports(project.state) if m.consumer == "erp"}
    assert (metrics[first.key].dead_letters, metrics[first.key].records) == (10, one.delivered)
    assert metrics[first.key].error_rate == 10 / (one.delivered + 10)
    assert (metrics[second.key].errors, metrics[second.key].records) == (10, 0)
    summary = replay_dead_letters(project, config, HOLDER, policy="skip")
    assert summary.replayed == 20 and summary.completed_windows == []  # already completed
    assert_in_sync(project, {"erp": erp})


def test_refused_changes_dead_letter_at_once_and_discard_unblocks(
    settings: Settings, sandbox: dict[str, SandboxServer], tmp_path: Path
) -> None:
    """A 422 is not retried; replaying it fails again; discarding it lets the window complete."""
    from subscription_export.delivery.dead_letters import discard

    project = small_windows(settings)
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        insert(conn, "ok1")
        insert(conn, "bad")
        conn.execute(sa.text("UPDATE subscriptions SET user_id = '' WHERE id = 'bad'"))
    [window] = export_all(project)
    config = write_destinations(tmp_path / "d.toml", {"erp": sandbox["erp"]})
    destination = config.destinations["erp"]
    outcome = deliver_window(project, destination, window, HOLDER, policy="block")
    assert (outcome.status, outcome.dead_lettered, outcome.delivered) == ("blocked", 1, 2)
    [letter] = list_dead_letters(project.state, "erp")
    assert (letter.subscription_id, letter.lsn, letter.attempts) == ("bad", window.hi, 1)
    assert "HTTP 422" in letter.error and letter.payload["row"]["user_id"] == ""

    summary = replay_dead_letters(project, config, HOLDER, policy="block")
    assert (summary.replayed, summary.failed) == (0, 1)
    assert [d.attempts for d in list_dead_letters(project.state, "erp")] == [2]
    assert project.watermarks.get("erp") == 0
    assert discard(project.state, [letter.id]) == 1
    [after] = catch_up(project, destination, HOLDER, policy="block")
    assert after.status == "delivered" and after.open_dead_letters == 0
    assert project.watermarks.get("erp") == window.hi
    statuses = {d.status for d in list_dead_letters(project.state, "erp", status=None)}
    assert statuses == {"discarded"}


def test_a_window_waits_for_the_export_of_the_one_before(
    settings: Settings, sandbox: dict[str, SandboxServer], tmp_path: Path
) -> None:
    project = small_windows(settings, size=5)
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        for n in range(10):
            insert(conn, f"w{n}")
    cut_windows(project)
    first, second = list_windows(project.state)
    export_window_file(project, "parquet", second, holder=HOLDER)
    config = write_destinations(tmp_path / "d.toml", {"crm": sandbox["crm"]})
    destination = config.destinations["crm"]
    with pytest.raises(DeliveryOrderError, match=f"{first.key} must be delivered before"):
        deliver_window(project, destination, second, HOLDER, wait_s=0.3, poll_s=0.1)
    assert sandbox["crm"].system.applications == {}
    export_window_file(project, "parquet", first, holder=HOLDER)
    outcome = deliver_window(project, destination, second, HOLDER)
    assert outcome.caught_up == (first.key,) and outcome.delivered == 5
    assert_in_sync(project, {"crm": sandbox["crm"]})


def test_prior_images_come_from_the_change_log_exactly(settings: Settings) -> None:
    project = small_windows(settings, size=1000)
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        insert(conn, "p1", amount="19.99")
        insert(conn, "p2", amount="5.00")
        insert(conn, "p3", amount="7.00")
    with engine.begin() as conn:
        update(conn, "p1", amount="1234567.8912")
        delete(conn, "p2")
    [before] = export_all(project)
    with engine.begin() as conn:
        for ident in ("p1", "p3"):
            update(conn, ident, status="paused")
        insert(conn, "p4")
    window = export_all(project)[-1]
    assert window.lo == before.hi + 1
    images = prior_images(project.source, window)
    assert set(images) == {"p1", "p3"}  # p4 is new; p2 is not changed in the window
    assert images["p1"] is not None and images["p1"]["amount"] == Decimal("1234567.8912")
    assert isinstance(images["p1"]["amount"], Decimal) and images["p1"]["version"] == 2
    last = {row["id"]: row for row in window_rows(project, before)}
    assert images["p3"] == {k: v for k, v in last["p3"].items() if not k.startswith("_")}
    assert prior_images(project.source, before) == {}
