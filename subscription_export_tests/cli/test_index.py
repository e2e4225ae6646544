"""The command index: `--help` lists every command without importing any of them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from subscription_export.cli.index import COMMANDS, load_command


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_summary_is_the_commands_own_help(name: str) -> None:
    command = load_command(name)
    assert command.help == COMMANDS[name].summary
    assert bool(getattr(command, "commands", None)) == COMMANDS[name].group


_HELP = """
import sys
sys.argv = ["subscription-export", "--help"]
from subscription_export.cli import main
try:
    main()
except SystemExit as exc:
    assert exc.code == 0, exc.code
loaded = sorted(
    m for m in sys.modules
    if m.split(".")[0] in {"sqlalchemy", "pyarrow", "dagster"}
    or m.startswith("subscription_export.cli.") and m.rsplit(".", 1)[1] not in {"app", "index"}
)
print(loaded, file=sys.stderr)
sys.exit(1 if loaded else 0)
"""


def test_help_imports_no_command_and_no_database_library() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _HELP], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "status" in result.stdout and "dead-letters" in result.stdout
