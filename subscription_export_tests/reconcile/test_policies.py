"""The conflict policy file: every mistake is one line naming the file, the table and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from subscription_export.core.errors import ConfigError
from subscription_export.reconcile.policies import load_policies
from subscription_export.reconcile.strategies import ConflictPolicy, Strategy

STRATEGIES = "source_wins, remote_wins, last_writer_wins, field_ownership, manual"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[other]\n", ": unknown key 'other' (known: default, destinations)"),
        ("destinations = 5", ": [destinations] must be a table"),
        (
            "[destinations]\ncrm = 5",
            " [destinations.crm]: conflict policy: must be a mapping, got int",
        ),
        (
            "[destinations.crm]\n",
            f" [destinations.crm]: conflict policy: 'strategy' is required ({STRATEGIES})",
        ),
        (
            '[default]\nstrategy = "manual"\npriority = ["erp", ""]',
            " [default]: conflict policy: priority entries must be non-empty strings, got ''",
        ),
        (
            '[default]\nstrategy = "field_ownership"\n[default.field_owners]\namount = 7',
            " [default]: conflict policy: field_owners.amount must be a system name, got 7",
        ),
    ],
)
def test_policy_file_mistakes_name_the_table_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "conflicts.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_policies(path, env={})
    assert str(caught.value) == f"{path}{message}"


def test_every_bad_table_is_named_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "conflicts.toml"
    path.write_text(
        '[default]\nstrategy = "newest"\n[destinations.erp]\nstrategy = "manual"\nx = 1'
    )
    with pytest.raises(ConfigError) as caught:
        load_policies(path, env={})
    assert str(caught.value) == (
        f"{path} [default]: conflict policy: unknown strategy 'newest'; expected one of"
        f" {STRATEGIES}; {path} [destinations.erp]: conflict policy: unknown key(s) x; expected"
        " fallback, field_owners, ignored, priority, strategy"
    )


def test_a_policy_built_in_code_is_validated_too() -> None:
    with pytest.raises(ValueError, match="priority lists erp more than once"):
        ConflictPolicy(Strategy.MANUAL, priority=("erp", "erp"))
    owned = ConflictPolicy(Strategy.FIELD_OWNERSHIP, field_owners={"amount": "erp"})
    assert hash(owned) == hash(ConflictPolicy(Strategy.FIELD_OWNERSHIP, field_owners={"a": "erp"}))
    assert ConflictPolicy(Strategy.MANUAL, priority=frozenset({"erp", "crm"})).priority == (
        "crm",
        "erp",
    )
