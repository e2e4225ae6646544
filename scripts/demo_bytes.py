"""sha256 of a fixed, seeded window of the demo table exported to Parquet, CSV and JSON Lines.

Run it with one checkout's package first on the path to compare releases byte for byte
(issue 13: capturing any table must not change a byte of the demo's files):

    PYTHONPATH=/path/to/checkout python scripts/demo_bytes.py sqlite:///tmp/x.db /tmp/out
    PYTHONPATH=/path/to/checkout python scripts/demo_bytes.py "postgresql://…?options=…" /tmp/out

The source must be empty. `changed_at` is set to fixed instants after the writes, so nothing
depends on the wall clock.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import sqlalchemy as sa

from subscription_export.core.db import engine_for
from subscription_export.core.settings import Settings
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.runtime import Project

try:  # releases before issue 13 created the demo table in `init`
    from subscription_export.source.demo_table import init_demo_source as init
except ImportError:
    from subscription_export.source.schema import init_source as init  # type: ignore[no-redef]

_INSERT = sa.text(
    "INSERT INTO subscriptions (id, user_id, name, category, amount, currency, billing_cycle,"
    " status, next_billing_date, timezone, created_at, updated_at, version) VALUES (:id, :u,"
    " :name, 'software', :amount, :cur, 'monthly', 'active', '2027-01-31', 'Europe/Berlin',"
    " :ts, :ts, 1)"
)
_UPDATE = sa.text(
    "UPDATE subscriptions SET status = :status, amount = :amount, updated_at = :ts,"
    " version = version + 1 WHERE id = :id"
)


def write(engine: sa.Engine, seed: int = 13) -> None:
    rng = random.Random(seed)
    live: list[str] = []
    with engine.begin() as conn:
        for i in range(120):
            live.append(f"sub-{i:04d}")
            conn.execute(
                _INSERT,
                {
                    "id": live[-1],
                    "u": f"user-{rng.randrange(40)}",
                    "name": rng.choice(["Netflix", "Gym", "Cloud", "News"]),
                    "amount": f"{rng.randrange(1, 100000) / 100:.2f}",
                    "cur": rng.choice(["EUR", "USD", "JPY"]),
                    "ts": f"2026-03-{1 + i % 28:02d}T10:{i % 60:02d}:00.123456Z",
                },
            )
    with engine.begin() as conn:
        for i in range(150):
            sub = rng.choice(live)
            if rng.random() < 0.1:
                conn.execute(sa.text("DELETE FROM subscriptions WHERE id = :id"), {"id": sub})
                live.remove(sub)
                continue
            conn.execute(
                _UPDATE,
                {
                    "id": sub,
                    "status": rng.choice(["active", "paused", "cancelled", "past_due"]),
                    "amount": f"{rng.randrange(1, 10**8) / 10**4:.4f}",
                    "ts": f"2026-04-{1 + i % 28:02d}T23:{i % 60:02d}:59Z",
                },
            )
        conn.execute(
            sa.text(
                "UPDATE subscription_change_log SET changed_at = :t"
                if engine.dialect.name == "sqlite"
                else "UPDATE subscription_change_log SET changed_at = CAST(:t AS timestamptz)"
            ),
            {"t": "2026-05-01T00:00:00.000001Z"},
        )


def main(source_url: str, out: Path) -> dict[str, str]:
    engine = engine_for(source_url, writer=True)
    init(engine)
    write(engine)
    settings = Settings(
        source_url=source_url,
        state_url=f"sqlite:///{out / 'state.db'}",
        export_dir=out / "exports",
        window_max_age_s=0.0,
        read_batch_size=64,
    )
    project = Project(settings)
    hashes = {}
    for window in cut_windows(project).new_windows:
        for fmt in ("parquet", "csv", "jsonl"):
            outcome, _ = export_window_file(project, fmt, window)  # type: ignore[arg-type]
            hashes[f"{window.key}.{fmt}"] = outcome.sha256
    return hashes


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2])), indent=1, sort_keys=True))
