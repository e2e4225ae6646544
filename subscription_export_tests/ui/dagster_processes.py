"""A throwaway deployment of this project: its own SQLite source, state, export folder and
`DAGSTER_HOME`, served by a real `dagster-webserver` and `dagster-daemon` on `workspace.yaml`.

Used by the Dagster UI browser test and by `scripts/screenshots.py`. Both processes run in their
own process groups (with the code servers and run workers they spawn) and are always stopped by
process group; their output goes to log files whose tails are shown when something goes wrong.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests

from subscription_export.core.db import engine_for
from subscription_export.core.settings import ENV_PREFIX, Settings
from subscription_export.formats.writers import FORMATS
from subscription_export.runtime import Project
from subscription_export.sandbox.generator import GenerateResult, generate
from subscription_export.source.demo_table import create_demo_table
from subscription_export.state.windows import Window, list_windows
from subscription_export_tests.cli_run import ALWAYS_A_CHILD, run_in_process

REPO = Path(__file__).resolve().parents[2]
# Its sitecustomize makes pandas unimportable in child processes, as in a production install.
WITHOUT_PANDAS = REPO / "subscription_export_tests" / "without_pandas"
VENV_BIN = Path(sys.executable).parent  # the venv's bin: dagster-webserver, dagster-daemon, …
# Daemons that must be up before the UI journeys can rely on them.
NEEDED_DAEMONS = {"SENSOR", "BACKFILL", "QUEUED_RUN_COORDINATOR"}
RUN_FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
_BACKFILL_BUSY = {"REQUESTED", "CANCELING", "FAILING"}
_RUN_FIELDS = "runId status tags { key value }"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"--- {path.name}: no log ---"
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join([f"--- last {lines} lines of {path} ---", *text[-lines:]])


def wait_until(
    what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 1.0
) -> T:
    """Call `probe` until it returns something other than None; TimeoutError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
            if value is not None:
                return value
        except (requests.RequestException, ValueError) as exc:  # not up yet / not valid yet
            last_error = exc
        if time.monotonic() > deadline:
            message = f"timed out after {timeout_s:.0f}s waiting for {what}"
            raise TimeoutError(message) from last_error
        time.sleep(every_s)


@dataclass(frozen=True)
class DagsterProject:
    """A project folder: SQLite source and state, exports, and a DAGSTER_HOME with the repo's
    `dagster.yaml`. Its settings reach the webserver, the daemon and the CLI as env vars."""

    root: Path
    settings: Settings
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. DAGSTER_PG_URL

    @classmethod
    def create(
        cls,
        root: Path,
        window_max_changes: int,
        window_max_age_s: float = 0.0,
        dagster_yaml: Path = REPO / "dagster.yaml",
        extra_env: dict[str, str] | None = None,
        **settings: Any,
    ) -> DagsterProject:
        """A project on `dagster_yaml` (the embedded default unless given); `settings` are
        further Settings fields or overrides (e.g. sensor_interval_s, export_dir)."""
        root.mkdir(parents=True, exist_ok=True)
        fields: dict[str, Any] = {
            "source_url": f"sqlite:///{root / 'source.db'}",
            "state_url": f"sqlite:///{root / 'state.db'}",
            "export_dir": root / "exports",
            "window_max_changes": window_max_changes,
            "window_max_age_s": window_max_age_s,
        }
        project_settings = Settings(**{**fields, **settings})
        project = cls(root, project_settings, dict(extra_env or {}))
        create_demo_table(engine_for(project_settings.source_url, writer=True))  # init captures it
        project.dagster_home.mkdir(exist_ok=True)
        shutil.copy(dagster_yaml, project.dagster_home / "dagster.yaml")
        return project

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    def env(self) -> dict[str, str]:
        """This process's environment with only this project's settings and instance."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update(self.settings.as_env())
        env["DAGSTER_HOME"] = str(self.dagster_home)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return without_pandas(env)

    def cli(self, *args: str, timeout_s: float = 120) -> str:
        """Run `subscription-export ARGS` with this project's environment; its output, or an
        error with it. In this process (cli_run.py: set-up, not what these tests prove), or the
        installed script in a child with SUBSCRIPTION_EXPORT_TEST_CLI_PROCESS=1."""
        if ALWAYS_A_CHILD:
            return self._run("subscription-export", list(args), timeout_s)
        done = run_in_process(list(args), self.env(), REPO, inherit_env=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"subscription-export {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout}\n{done.stderr}"
            )
        return done.stdout

    def dagster(self, *args: str, timeout_s: float = 120) -> str:
        """Run the `dagster` CLI on this project's instance (and `workspace.yaml` for the
        commands that load code: `sensor`, `schedule`)."""
        workspace = ["-w", "workspace.yaml"] if args[0] in {"sensor", "schedule"} else []
        return self._run("dagster", [*args, *workspace], timeout_s)

    def _run(self, program: str, args: list[str], timeout_s: float) -> str:
        done = subprocess.run(
            [str(VENV_BIN / program), *args],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout}\n{done.stderr}"
            )
        return done.stdout

    def write_changes(self, changes: int, subscriptions: int = 0, seed: int = 7) -> GenerateResult:
        """Sandbox creates/updates/deletes in the source (the capture triggers log them)."""
        made = generate(
            engine_for(self.settings.source_url, writer=True),
            subscriptions=subscriptions,
            changes=changes,
            seed=seed,
        )
        assert made.changes == changes, made
        return made

    def windows(self) -> list[Window]:
        return list_windows(Project(self.settings).state)

    def files(self, key: str) -> dict[str, Path]:
        """The window's export file per format (parquet, csv, jsonl)."""
        project = Project(self.settings)
        return {fmt: project.file_path(fmt, key) for fmt in FORMATS}


class DagsterServices:
    """`dagster-webserver` and `dagster-daemon` on the project's instance, as a context manager."""

    def __init__(
        self,
        project: DagsterProject,
        log_dir: Path,
        port: int | None = None,
        daemon: bool = True,
    ) -> None:
        """`daemon=False`: only the webserver on entry; `start_daemon()` later (e.g. once a
        backfill is queued, so the backfill daemon's first tick takes it instead of its next
        one, up to 30 s later)."""
        self.project = project
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.with_daemon = daemon
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def logs(self) -> dict[str, Path]:
        return {name: self.log_dir / f"{name}.log" for name in ("webserver", "daemon")}

    def __enter__(self) -> DagsterServices:
        try:
            with self.explained("starting dagster-webserver and dagster-daemon"):
                self.start(("webserver", "daemon") if self.with_daemon else ("webserver",))
                self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_daemon(self) -> None:
        """Start the daemon next to a running webserver (its health is not awaited: what it
        does is what the caller waits for, and a dead daemon fails `check_alive`)."""
        with self.explained("starting dagster-daemon"):
            self.start(("daemon",))

    def start(self, names: tuple[str, ...] = ("webserver", "daemon")) -> None:
        commands = {
            "webserver": [
                "dagster-webserver",
                *("-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)),
            ],
            "daemon": ["dagster-daemon", "run", "-w", "workspace.yaml"],
        }
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            program, *args = commands[name]
            with self.logs[name].open("ab") as log:
                self.processes[name] = subprocess.Popen(
                    [str(VENV_BIN / program), *args],
                    cwd=REPO,
                    env=self.project.env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: code servers, run workers too
                )

    def wait_ready(self, timeout_s: float = 120) -> None:
        """The server answers, the code location loaded, the daemons we need report healthy."""
        wait_until("the webserver's /server_info", self._server_info, timeout_s, 0.5)
        wait_until("the code location to load", self._location_loaded, timeout_s)
        if "daemon" in self.processes:
            wait_until(
                f"healthy daemons {sorted(NEEDED_DAEMONS)}", self._daemons_healthy, timeout_s
            )

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(
                    f"dagster {name} exited with {process.returncode}\n{self.log_tails()}"
                )

    def _server_info(self) -> dict[str, Any] | None:
        self.check_alive()
        response = requests.get(f"{self.url}/server_info", timeout=5)
        return response.json() if response.ok else None  # type: ignore[no-any-return]

    def _location_loaded(self) -> bool | None:
        self.check_alive()
        data = self.graphql(
            "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus"
            " locationOrLoadError { __typename ... on PythonError { message } } } } } }"
        )
        entries = data["workspaceOrError"]["locationEntries"]
        for entry in entries:
            error = entry["locationOrLoadError"]
            if error and error["__typename"] == "PythonError":
                raise RuntimeError(f"code location {entry['name']} failed: {error['message']}")
        loaded = entries and all(e["loadStatus"] == "LOADED" for e in entries)
        return True if loaded else None

    def _daemons_healthy(self) -> bool | None:
        self.check_alive()
        data = self.graphql(
            "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }"
        )
        statuses = data["instance"]["daemonHealth"]["allDaemonStatuses"]
        healthy = {s["daemonType"] for s in statuses if s["healthy"]}
        return True if healthy >= NEEDED_DAEMONS else None

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]  # type: ignore[no-any-return]

    def backfill(self, backfill_id: str) -> dict[str, Any]:
        """Status of a backfill and its runs (id, status, tags)."""
        data = self.graphql(
            "query ($id: String!) { partitionBackfillOrError(backfillId: $id) {"
            " __typename ... on PartitionBackfill { id status numPartitions"
            f" runs(limit: 100) {{ {_RUN_FIELDS} }} }} }} }}",
            {"id": backfill_id},
        )
        return data["partitionBackfillOrError"]  # type: ignore[no-any-return]

    def runs(self, tags: dict[str, str]) -> list[dict[str, Any]]:
        """Runs carrying all of `tags` (id, status, tags), newest first."""
        data = self.graphql(
            "query ($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) {"
            f" __typename ... on Runs {{ results {{ {_RUN_FIELDS} }} }} }} }}",
            {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        )
        return data["runsOrError"]["results"]  # type: ignore[no-any-return]

    def wait_for_backfill(self, backfill_id: str, timeout_s: float) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            backfill = self.backfill(backfill_id)
            return None if backfill["status"] in _BACKFILL_BUSY else backfill

        with self.explained(f"waiting for backfill {backfill_id}"):
            return wait_until(f"backfill {backfill_id} to finish", finished, timeout_s, 2)

    def wait_for_run(self, tags: dict[str, str], timeout_s: float) -> dict[str, Any]:
        """The first finished run carrying all of `tags` (e.g. a sensor's run of one window)."""

        def finished() -> dict[str, Any] | None:
            return next((r for r in self.runs(tags) if r["status"] in RUN_FINISHED), None)

        with self.explained(f"waiting for a run tagged {tags}"):
            return wait_until(f"a finished run tagged {tags}", finished, timeout_s, 2)

    def stop(self, grace_s: float = 20) -> None:
        """SIGTERM each process group, wait for the group to empty, then SIGKILL what is left."""
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in self.processes.values():
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            while _group_alive(process.pid) and time.monotonic() < deadline:
                time.sleep(0.2)  # its code server and run workers shut down after it
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        self.processes.clear()

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(log_tail(path, lines) for path in self.logs.values())

    @contextmanager
    def explained(self, what: str) -> Iterator[None]:
        """Any failure inside gets the webserver's and daemon's log tails as a note."""
        try:
            yield
        except BaseException as exc:
            exc.add_note(f"while {what}; Dagster logs in {self.log_dir}:\n{self.log_tails()}")
            raise


def without_pandas(env: dict[str, str]) -> dict[str, str]:
    """`env` for a child process that runs as a production install would, without pandas
    (pyarrow would import it on first use: ~1-1.5 s per Dagster run or CLI process)."""
    path = [str(WITHOUT_PANDAS), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(path)}


def run_tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):  # the whole group may be gone already
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
