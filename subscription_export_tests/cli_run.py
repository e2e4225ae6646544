"""Running `subscription-export` from a test: in this process by default, as a child process
where the process boundary is what a test proves.

A child process pays Python's, pydantic's and Dagster's imports on every call (3-5 s of CPU
each); in-process, a worker pays them once. What the child gave for free is undone here after
each call: the environment, the current folder, `sys.argv`, the root logger's handlers and
level (`SUBSCRIPTION_EXPORT_LOG_FORMAT=json` replaces them), the CLI consoles' size (read
from COLUMNS/LINES), and `sys.stdin` (empty, as a child would read at EOF). Both Python-level
(`sys.stdout`/`sys.stderr`) and file-descriptor-level output are captured, so a line written
below Python (Arrow, a library's own handler) is seen as a child's output would be. The exit
code is `main()`'s `SystemExit`; an exception escaping `main()` (only with `--debug`) prints
its traceback and exits 1, as the interpreter does. SUBSCRIPTION_EXPORT_TEST_CLI_PROCESS=1
runs every call as a child process again: the check that no test passes only because of
state an earlier in-process call left.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

from subscription_export.core.settings import Settings

CLI = [sys.executable, "-m", "subscription_export.cli"]
ALWAYS_A_CHILD = os.environ.get("SUBSCRIPTION_EXPORT_TEST_CLI_PROCESS") == "1"


def run_cli(
    args: list[str],
    settings: Settings | None,
    tmp_path: Path,
    check: bool = True,
    env: dict[str, str] | None = None,
    *,
    in_process: bool = True,
    inherit_env: bool = True,
    timeout: float = 240,
) -> subprocess.CompletedProcess[str]:
    """`subscription-export ARGS` with `settings` and `env` in the environment, DAGSTER_HOME
    under `tmp_path` and `tmp_path` as the current folder. `check`: exit code 0 asserted.
    `inherit_env=False`: only these variables (and DAGSTER_HOME), as `env=` gives a child."""
    full_env = {"DAGSTER_HOME": str(tmp_path / "dagster_home")}
    if settings is not None:
        full_env.update(settings.as_env())
    full_env.update(env or {})
    if in_process and not ALWAYS_A_CHILD:
        result = run_in_process(args, full_env, tmp_path, inherit_env)
    else:
        result = subprocess.run(
            CLI + args,
            env={**os.environ, **full_env} if inherit_env else full_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def run_in_process(
    args: list[str], env: Mapping[str, str], cwd: Path, inherit_env: bool = True
) -> subprocess.CompletedProcess[str]:
    """`main()` with `args`, `env` added to the environment and `cwd` as the current folder;
    everything it changes in the process is restored afterwards."""
    from subscription_export.cli import main

    out, err = io.StringIO(), io.StringIO()
    with _process_state(args, env, cwd, inherit_env), _consoles_as_created(), _captured(out, err):
        code = _exit_code(main, err)
    return subprocess.CompletedProcess(CLI + args, code, out.getvalue(), err.getvalue())


def _exit_code(main, err: io.StringIO) -> int:  # type: ignore[no-untyped-def]
    """What the interpreter would exit with after `main()`."""
    try:
        main()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=err)  # sys.exit("text"): printed, exit 1
        return 1
    except KeyboardInterrupt:
        raise  # a Ctrl-C meant for pytest
    except BaseException:
        traceback.print_exc(file=err)  # an uncaught exception: traceback and exit 1
        return 1
    return 0


@contextmanager
def _process_state(
    args: list[str], env: Mapping[str, str], cwd: Path, inherit_env: bool
) -> Iterator[None]:
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_argv, saved_stdin = sys.argv, sys.stdin
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    if not inherit_env:
        os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = ["subscription-export", *args]
    sys.stdin = io.StringIO("")
    try:
        yield
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        sys.argv, sys.stdin = saved_argv, saved_stdin
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


@contextmanager
def _consoles_as_created() -> Iterator[None]:
    """The CLI's rich consoles, made at import, fix their size from COLUMNS/LINES then (xdist
    workers have COLUMNS=80): sized as a child would create them, from this call's environment."""
    from rich.console import Console

    # the module, not the Typer `app` that `subscription_export.cli` exports under its name
    app_module = importlib.import_module("subscription_export.cli.app")
    consoles = (app_module.console, app_module.err_console)
    saved = [(c._width, c._height) for c in consoles]
    for console in consoles:
        fresh = Console(stderr=console.stderr)
        console._width, console._height = fresh._width, fresh._height
    try:
        yield
    finally:
        for console, (width, height) in zip(consoles, saved, strict=True):
            console._width, console._height = width, height


@contextmanager
def _captured(out: io.StringIO, err: io.StringIO) -> Iterator[None]:
    """Python-level output into `out`/`err`; file descriptors 1 and 2 into temporary files
    appended to them afterwards."""
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as fd_out, tempfile.TemporaryFile() as fd_err:
        saved = {1: os.dup(1), 2: os.dup(2)}
        os.dup2(fd_out.fileno(), 1)
        os.dup2(fd_err.fileno(), 2)
        try:
            with redirect_stdout(out), redirect_stderr(err):
                yield
        finally:
            for stream in (sys.__stdout__, sys.__stderr__):  # written past the redirect
                if stream is not None:
                    stream.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            for target, file in ((out, fd_out), (err, fd_err)):
                file.seek(0)
                target.write(file.read().decode(errors="replace"))
