"""CSV formula injection: text cells a spreadsheet would run get a leading `'` (OWASP).

Only CSV, only text: a negative amount stays a number, Parquet and JSON Lines keep the raw
value, and the setting `csv_neutralize_formulas` (on by default) turns it off.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from subscription_export.core.errors import ConfigError
from subscription_export.core.settings import Settings, replace
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.formats.writers import write_csv
from subscription_export.runtime import Project
from subscription_export.source.sequencer import sequence
from subscription_export.state.windows import Window, list_windows
from subscription_export_tests.cli_run import run_cli
from subscription_export_tests.helpers import insert, writer

FORMULAS = {
    "s1": '=HYPERLINK("http://evil.example","click")',
    "s2": "+1+cmd|' /C calc'!A0",
    "s3": "-2+3",
    "s4": "@SUM(1,2)",
    "s5": "\t=1",
    "s6": "\r=1",
}
HARMLESS = {"s7": "Plan = Pro", "s8": "'already quoted", "s9": "", "s10": "€ plan"}


def _export(settings: Settings, window: Window | None = None) -> dict[str, Path]:
    project = Project(settings)
    if window is None:
        [window] = cut_windows(project).new_windows
    return {
        fmt: export_window_file(project, fmt, window)[0].path for fmt in ("parquet", "csv", "jsonl")
    }


def _csv_column(path: Path, name: str) -> list[str | None]:
    table = pacsv.read_csv(
        path,
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string()},
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
    )
    return table.column(name).to_pylist()


@pytest.fixture
def written(settings: Settings) -> Settings:
    with writer(settings.source_url).begin() as conn:
        for sub_id, name in {**FORMULAS, **HARMLESS}.items():
            insert(conn, sub_id, name=name, amount="-9.99")
    return settings


def test_csv_text_cells_that_start_a_formula_get_a_quote(written: Settings) -> None:
    files = _export(written)
    names = dict(
        zip(_csv_column(files["csv"], "id"), _csv_column(files["csv"], "name"), strict=True)
    )
    assert names == {
        **{sub_id: "'" + raw for sub_id, raw in FORMULAS.items()},
        **HARMLESS,
    }
    # A negative amount is a decimal, not text: it stays a number.
    assert set(_csv_column(files["csv"], "amount")) == {"-9.9900"}
    # Parquet and JSON Lines keep the raw value.
    parquet = pq.read_table(files["parquet"])
    assert dict(zip(parquet["id"].to_pylist(), parquet["name"].to_pylist(), strict=True)) == {
        **FORMULAS,
        **HARMLESS,
    }
    lines = [json.loads(line) for line in files["jsonl"].read_text().splitlines()]
    assert {line["id"]: line["name"] for line in lines} == {**FORMULAS, **HARMLESS}
    assert {line["amount"] for line in lines} == {"-9.9900"}


def test_neutralized_csv_is_deterministic(written: Settings, tmp_path: Path) -> None:
    first = _export(written)["csv"]
    [window] = list_windows(Project(written).state)
    again = _export(replace(written, export_dir=tmp_path / "again", read_batch_size=3), window)
    assert again["csv"].read_bytes() == first.read_bytes()


def test_the_setting_off_writes_text_verbatim(written: Settings) -> None:
    files = _export(replace(written, csv_neutralize_formulas=False))
    names = dict(
        zip(_csv_column(files["csv"], "id"), _csv_column(files["csv"], "name"), strict=True)
    )
    assert names == {**FORMULAS, **HARMLESS}


def test_write_csv_neutralizes_headers_and_sliced_batches_alike() -> None:
    table = pa.table(
        {
            "=cmd()": pa.array(["a", "=b", None, "", "-c"], pa.string()),
            "wide": pa.array(["@x", "y", "+z", None, "é"], pa.large_string()),
            "n": pa.array([-1, 2, -3, 4, 5], pa.int64()),
        }
    )
    whole, sliced = io.BytesIO(), io.BytesIO()
    write_csv(table.to_batches(), table.schema, whole)
    write_csv(
        [table.slice(0, 2).to_batches()[0], table.slice(2).to_batches()[0]], table.schema, sliced
    )
    assert whole.getvalue() == sliced.getvalue()
    assert whole.getvalue().decode().split("\r\n") == [
        '"\'=cmd()","wide","n"',
        '"a","\'@x",-1',
        '"\'=b","y",2',
        ',"\'+z",-3',
        '"",,4',
        '"\'-c","é",5',
        "",
    ]


def test_the_setting_reads_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_env().csv_neutralize_formulas is True
    monkeypatch.setenv("SUBSCRIPTION_EXPORT_CSV_NEUTRALIZE_FORMULAS", "false")
    settings = Settings.from_env()
    assert settings.csv_neutralize_formulas is False
    assert settings.as_env()["SUBSCRIPTION_EXPORT_CSV_NEUTRALIZE_FORMULAS"] == "false"
    monkeypatch.setenv("SUBSCRIPTION_EXPORT_CSV_NEUTRALIZE_FORMULAS", "maybe")
    with pytest.raises(ConfigError, match="CSV_NEUTRALIZE_FORMULAS='maybe' is not true or false"):
        Settings.from_env()


@pytest.mark.parametrize("flag", ["true", "false"])
def test_cli_export_follows_the_setting(written: Settings, tmp_path: Path, flag: str) -> None:
    sequence(writer(written.source_url), wait_s=30.0)  # PostgreSQL: LSNs come after commit
    out = tmp_path / "range.csv"
    env = {"SUBSCRIPTION_EXPORT_CSV_NEUTRALIZE_FORMULAS": flag, "PATH": "/usr/bin:/bin"}
    command = ["export", "--from-lsn", "1", "--to-lsn", "10", "--format", "csv"]
    run_cli([*command, "--out", str(out), "--quiet"], written, tmp_path, env=env, inherit_env=False)
    names = set(_csv_column(out, "name"))
    prefix = "'" if flag == "true" else ""
    assert {prefix + raw for raw in FORMULAS.values()} <= names
