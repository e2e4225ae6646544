"""Destination configuration: the example loads, every mistake is named at load time."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import responses

from subscription_export.core.errors import ConfigError
from subscription_export.delivery import config as config_module
from subscription_export.delivery.config import (
    NO_DESTINATIONS,
    DestinationConfig,
    DestinationConfigError,
    destinations_path,
    load_destinations,
)
from subscription_export.delivery.dead_letters import dead_letter_policy
from subscription_export_tests.delivery.factories import change_row

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "destinations.example.toml"
TOKENS = {"ERP_API_TOKEN": "erp-secret", "CRM_API_KEY": "crm-secret"}


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Any:
    path = tmp_path / "destinations.toml"
    path.write_text(text)
    return load_destinations(path, env=env or {})


def test_the_example_file_loads_and_documents_every_key() -> None:
    config = load_destinations(EXAMPLE, env=TOKENS)
    assert config.names == ["erp", "crm", "accounting"]
    erp = config.destinations["erp"]
    assert (erp.kind, erp.base_url, erp.batch_size, erp.max_concurrency) == (
        "erp",
        "http://127.0.0.1:8701",
        100,
        8,
    )
    assert erp.headers() == {"Authorization": "Bearer erp-secret"}
    assert "erp-secret" not in repr(erp)  # tokens stay out of logs
    assert erp.field_mapping == {"category": "product_line"}
    assert config.destinations["crm"].headers() == {"X-Api-Key": "crm-secret"}
    accounting = config.destinations["accounting"]
    assert (accounting.retry.max_attempts, accounting.retry.total_s) == (10, 300.0)
    assert accounting.retry.base_delay_s == 0.25  # defaults fill what is not given

    text = EXAMPLE.read_text()
    documented = set(re.findall(r"^#?\s*\[?([a-z_]+)\s*=", text, re.MULTILINE))
    for key in config_module._TOP_KEYS - {"auth", "timeouts", "retry", "field_mapping", "columns"}:
        assert key in documented, key
    for key in ("header", "token_env", "scheme", "connect_s", "read_s", "max_attempts"):
        assert key in documented, key
    for key in ("base_delay_s", "max_delay_s", "total_s"):
        assert key in documented, key
    for table in ("auth", "timeouts", "retry", "field_mapping"):
        assert f"[destinations.erp.{table}]" in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[destinations.erp]\nbase_url = "http://h"\nbatch_sise = 5',
            r"destination 'erp': unknown key 'batch_sise'",
        ),
        (
            '[destinations.erp]\nbase_url = "http://h"\n[destinations.erp.retry]\ntotal = 5',
            r"destination 'erp', \[retry\]: unknown key 'total'",
        ),
        ('[destinations.erp]\nbase_url = "ftp://h"', r"key 'base_url' = 'ftp://h' is not"),
        ('[destinations.erp]\nbase_url = "http://"', r"key 'base_url' = 'http://' is not"),
        ('[destinations.erp]\nbase_url = "http://h:99999"', r"key 'base_url'"),
        ("[destinations.erp]\nbatch_size = 5", r"key 'base_url' is required"),
        ('[destinations.erp]\nbase_url = "http://h"\nbatch_size = 0', r"'batch_size' must be"),
        (
            '[destinations.crm]\nbase_url = "http://h"\nbatch_endpoint = false',
            r"destination 'crm': key 'batch_endpoint' = false is only for kind 'erp'",
        ),
        (
            '[destinations.erp]\nbase_url = "http://h"\nbatch_endpoint = 1',
            r"destination 'erp': key 'batch_endpoint'",
        ),
        (
            '[destinations.erp]\nbase_url = "http://h"\nmax_concurrency = -2',
            r"key 'max_concurrency' must be positive, got -2",
        ),
        (
            '[destinations.erp]\nbase_url = "http://h"\nbatch_size = 2.5',
            r"key 'batch_size' must be a whole number",
        ),
        (
            '[destinations.erp]\nbase_url = "http://h"\n[destinations.erp.timeouts]\nread_s = 0',
            r"key 'read_s' must be positive",
        ),
        (
            '[destinations.erp]\nbase_url = "http://h"\n[destinations.erp.retry]\n'
            "base_delay_s = -1",
            r"key 'base_delay_s' must not be negative",
        ),
        ('[destinations.ledger]\nbase_url = "http://h"', r"key 'kind' must be one of"),
        ('[destinations.x]\nkind = "sap"\nbase_url = "http://h"', r"kind' must be one of"),
        ('[destinations.Bad-Name]\nbase_url = "http://h"', r"names are lower-case"),
        ('[destinations.csv]\nkind = "crm"\nbase_url = "http://h"', r"taken by an export"),
        (
            '[destinations.erp]\nbase_url = "http://h"\n[destinations.erp.auth]\n'
            'header = "X-Key"\ntoken_env = "NOT_SET_ANYWHERE"',
            r"environment variable NOT_SET_ANYWHERE \(auth.token_env\) is not set",
        ),
        (
            '[destinations.erp]\nbase_url = "http://h"\n[destinations.erp.auth]\ntoken_env = "T"',
            r"'auth.header' must be an HTTP header name",
        ),
        (
            '[destinations.accounting]\nbase_url = "http://h"\n'
            '[destinations.accounting.field_mapping]\namount = "value"',
            r"not supported for kind 'accounting'",
        ),
        (
            '[destinations.erp]\nbase_url = "http://h"\n[destinations.erp.field_mapping]\n'
            'id = "ref"',
            r"'field_mapping.id': id drives the protocol",
        ),
        (
            '[destinations.erp]\nbase_url = "http://h"\n[destinations.erp.field_mapping]\n'
            'name = "category"',
            r"renames a field to 'category', which the record already has",
        ),
        ("[other]\nx = 1", r"unknown key 'other'"),
        ("[destinations.erp\n", r"not valid TOML"),
    ],
)
def test_mistakes_are_named_with_file_destination_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(DestinationConfigError, match=message) as caught:
        _load(tmp_path, text)
    assert str(tmp_path / "destinations.toml") in str(caught.value)
    assert isinstance(caught.value, ConfigError)  # the CLI prints it as one line, exit 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[destinations.erp]\nbase_url = "http://h"\nbatch_size = true',
            "destination 'erp': key 'batch_size' must be a whole number, got True",
        ),
        (
            '[destinations.erp]\nbase_url = "http://h"\n[destinations.erp.timeouts]\nread_s = "5"',
            "destination 'erp', [timeouts]: key 'read_s' must be a number, got '5'",
        ),
        (
            '[destinations.erp]\nbase_url = "http://h/?x=1"',
            "destination 'erp': key 'base_url' must not have a query or fragment",
        ),
        (
            '[destinations.erp]\nbase_url = "http://h"\nauth = 5',
            "destination 'erp': key 'auth' must be a table, got 5",
        ),
        ("[destinations]\nerp = 5", "destination 'erp': must be a table [destinations.erp]"),
        ("destinations = 5", "key 'destinations' must be a table, got 5"),
        (
            '[destinations.erp]\nbase_url = "http://h"\n[destinations.erp.field_mapping]\n'
            'name = ""',
            "destination 'erp': key 'field_mapping.name' must be a non-empty string, got ''",
        ),
        (
            '[destinations.erp]\nbase_url = "http://h"\n[destinations.erp.field_mapping]\n'
            'name = "plan"\ncategory = "plan"',
            "destination 'erp': key 'field_mapping' maps several fields to 'plan'",
        ),
        (
            '[destinations.erp]\nbase_url = "http://h"\n[destinations.erp.auth]\n'
            'header = "X Key"\ntoken_env = "T"',
            "destination 'erp', [auth]: key 'header' must be an HTTP header name, got 'X Key'",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_the_key_and_what_it_accepts(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(DestinationConfigError) as caught:
        _load(tmp_path, text, env={"T": "t"})
    assert str(caught.value) == f"{tmp_path / 'destinations.toml'}: {message}"


def test_every_mistake_of_a_file_is_named_on_the_same_line(tmp_path: Path) -> None:
    text = '[destinations.erp]\nbase_url = "http://h"\nbatch_size = 0\nmax_concurrency = 0'
    with pytest.raises(DestinationConfigError) as caught:
        _load(tmp_path, text)
    message = str(caught.value)
    assert "\n" not in message
    assert "key 'batch_size' must be positive, got 0;" in message
    assert message.endswith("key 'max_concurrency' must be positive, got 0")


def test_where_the_file_is_looked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert destinations_path({}) is None
    assert load_destinations(env={}) is NO_DESTINATIONS
    (tmp_path / "destinations.toml").write_text('[destinations.crm]\nbase_url = "http://c"\n')
    assert destinations_path({}) == Path("destinations.toml")
    assert load_destinations(env={}).names == ["crm"]
    other = tmp_path / "elsewhere.toml"
    other.write_text('[destinations.erp]\nbase_url = "http://e"\n')
    env = {"SUBSCRIPTION_EXPORT_DESTINATIONS": str(other)}
    assert load_destinations(env=env).names == ["erp"]
    missing = {"SUBSCRIPTION_EXPORT_DESTINATIONS": str(tmp_path / "nope.toml")}
    with pytest.raises(DestinationConfigError, match=r"SUBSCRIPTION_EXPORT_DESTINATIONS=.*nope"):
        load_destinations(env=missing)


def test_dead_letter_policy_comes_from_the_environment() -> None:
    assert dead_letter_policy({}) == "block"
    assert dead_letter_policy({"SUBSCRIPTION_EXPORT_ON_DEAD_LETTER": "skip"}) == "skip"
    with pytest.raises(ConfigError, match=r"ON_DEAD_LETTER=.drop.: use block or skip"):
        dead_letter_policy({"SUBSCRIPTION_EXPORT_ON_DEAD_LETTER": "drop"})


@responses.activate
def test_clients_carry_auth_timeouts_name_and_field_mapping(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        """
[destinations.erp_eu]
kind = "erp"
base_url = "http://erp.example/api/"
batch_endpoint = false
[destinations.erp_eu.auth]
header = "Authorization"
token_env = "TOKEN"
scheme = "Bearer"
[destinations.erp_eu.timeouts]
connect_s = 1.5
read_s = 4
[destinations.erp_eu.field_mapping]
category = "product_line"
name = "plan"
[destinations.crm]
base_url = "http://crm.example"
[destinations.crm.field_mapping]
amount = "mrr"
user_id = "account"
""",
        env={"TOKEN": "t0k"},
    )
    row = change_row(7, "sub_9", amount="12.50", new_col="x")
    put = responses.put("http://erp.example/api/subscriptions/sub_9", json={"ok": True})
    with config.destinations["erp_eu"].client() as erp:
        assert erp.timeout == (1.5, 4.0)
        [result] = erp.send_rows([row], window_key="W")
    assert result.status == "delivered"
    assert result.idempotency_key == "erp_eu:W:7"  # the destination's name, not its kind
    request = put.calls[0].request
    assert request.headers["Authorization"] == "Bearer t0k"
    assert request.headers["Idempotency-Key"] == "erp_eu:W:7"
    body = json.loads(request.body)
    assert body["product_line"] == "music" and body["plan"] == "Premium Music"
    assert "category" not in body and "name" not in body and body["id"] == "sub_9"
    assert body["extra"] == {"new_col": "x"}

    with config.destinations["crm"].client() as crm:
        [item] = crm.prepare([row], window_key="W")
        [echo] = crm.prepare([{**row, "_origin": "crm"}], window_key="W")
    record = item.units[0].body["record"]
    assert record["mrr"] == "12.50" and record["account"] == "user_sub_9"
    assert "price" not in record and "customer_id" not in record
    assert echo.skip == "echo of this system's change"


def test_batch_size_defaults_to_what_each_kind_of_api_takes(tmp_path: Path) -> None:
    """Unset, a batch is as large as the kind's API takes in one request: ERP `$batch` and the
    accounting journal batch 500 changes, the CRM 200 (Salesforce sObject Collections' limit);
    a `batch_size` in the file still wins."""
    text = "\n".join(
        f'[destinations.{kind}]\nbase_url = "http://h"' for kind in ("erp", "crm", "accounting")
    )
    config = _load(
        tmp_path,
        text + '\n[destinations.crm_small]\nkind = "crm"\nbase_url = "http://h"\nbatch_size = 50\n',
    )
    sizes = {name: d.batch_size for name, d in config.destinations.items()}
    assert sizes == {"erp": 500, "crm": 200, "accounting": 500, "crm_small": 50}
    direct = DestinationConfig(name="erp", kind="erp", base_url="http://h")
    assert direct.batch_size == 500
