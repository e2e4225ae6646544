"""Issue 12 (6, 14): every bad value is quarantined with LSN, field and reason, never blocks
a window.

Each value is written where a hostile application can put it: into the source row on SQLite
(which keeps whatever it is given), into the change log's jsonb image on PostgreSQL (whose typed
columns refuse most of these). The other rows of the window are exported either way.
"""

from __future__ import annotations

import pytest

from subscription_export.core.settings import Settings, replace
from subscription_export.runtime import Project
from subscription_export.source.demo_table import init_demo_source
from subscription_export_tests.export.hostile_writes import (
    append_image,
    export_new_windows,
    last_image,
    set_in_row,
    with_json_value,
)
from subscription_export_tests.helpers import insert, update, writer

# (case, column, SQL expression stored in a SQLite row, JSON stored in a PostgreSQL image or
# None where jsonb cannot hold it, words of the reason)
CASES = [
    ("amount-1e30", "amount", "'1e30'", "1e30", "does not fit"),
    ("amount-9e999", "amount", "'9e999'", "9e999", "does not fit"),
    ("amount-real-1e300", "amount", "1e300", "1e300", "does not fit"),
    # Arrow's JSON reader turned this into 0.0000 (not an error) on the fast path:
    ("amount-5e-324", "amount", "'5e-324'", "5e-324", "more than 4 decimal places"),
    (
        "amount-long-e-8",
        "amount",
        "'2.82570458292870072598653689433800598e-8'",
        "2.82570458292870072598653689433800598e-8",
        "more than 4",
    ),
    ("version-superscript", "version", "'²'", '"²"', "expected an integer"),
    ("version-double-minus", "version", "'--5'", '"--5"', "expected an integer"),
    ("version-real-1e300", "version", "1e300", "1e300", "64-bit integer"),
    ("name-not-utf8", "name", "CAST(X'41FF42' AS TEXT)", None, "not valid UTF-8"),
    ("name-nul", "name", "'a' || char(0) || 'b'", None, "NUL"),
    ("timezone-unknown", "timezone", "'Mars/Olympus'", '"Mars/Olympus"', "IANA"),
    ("timezone-empty", "timezone", "''", '""', "IANA"),
]


@pytest.mark.parametrize(
    ("column", "in_row", "in_image", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_a_bad_value_is_quarantined_and_the_window_exports(
    settings: Settings, column: str, in_row: str, in_image: str | None, reason: str
) -> None:
    postgres = settings.source_url.startswith("postgresql")
    if postgres and in_image is None:
        pytest.skip("PostgreSQL cannot store this value (text and jsonb refuse it)")
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        insert(conn, "good")
        insert(conn, "bad")
    with engine.begin() as conn:
        if postgres and in_image is not None:
            append_image(conn, "bad", with_json_value(last_image(conn, "bad"), column, in_image))
        else:
            set_in_row(conn, "bad", column, in_row)
        update(conn, "good", status="paused")
    project = Project(replace(settings, read_batch_size=2))

    [window] = export_new_windows(project)

    assert window.quarantined.keys() == {3}
    field, why = window.quarantined[3]
    assert field == column and reason in why
    assert sorted(window.rows) == [1, 2, 4]
    assert window.rows[4]["status"] == "paused"
    again = export_new_windows(project)
    assert again == []  # nothing left to cut: the window is done, not retried forever


def test_invalid_utf8_in_the_stored_image_is_quarantined_on_sqlite(
    sqlite_url: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    engine = writer(sqlite_url)
    init_demo_source(engine)
    with engine.begin() as conn:
        insert(conn, "a")
        append_image(conn, "a", "{}")
        conn.exec_driver_sql(
            "UPDATE subscription_change_log SET after = CAST(X'7B226964223A2261227DFF' AS TEXT)"
            " WHERE lsn = 2"
        )
        update(conn, "a", status="paused")
    settings = Settings(
        source_url=sqlite_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "out",
        window_max_age_s=0.0,
    )
    [window] = export_new_windows(Project(settings))
    assert sorted(window.rows) == [1, 3]
    assert "not valid UTF-8" in window.quarantined[2][1]
    [held] = window.outcome.quarantined
    assert held.raw == '{"id":"a"}\\xff'  # what the bytes say, for the person fixing the row


def test_an_amount_one_digit_too_long_is_quarantined_whatever_the_batch(settings: Settings) -> None:
    """10**14 needs 19 digits in numeric(18, 4). Arrow's JSON reader does not check precision,
    so a batch of good rows used to export it (an invalid decimal in the file) while the same
    row next to a bad one was quarantined: the bytes depended on the batch."""
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        insert(conn, "big")
        append_image(
            conn, "big", with_json_value(last_image(conn, "big"), "amount", "100000000000000")
        )
    [window] = export_new_windows(Project(settings))
    assert window.quarantined == {
        2: ("amount", "amount 100000000000000 does not fit numeric(18, 4)")
    }
