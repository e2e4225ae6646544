"""Who a process is, and whether a process recorded earlier is gone.

A lease row and a temp file name carry a pid. A pid means something only on the host (and in
the pid namespace) that issued it, and only for as long as that process lives: pids are reused.
So a process is recorded as (host, pid, incarnation) where the incarnation is the kernel's boot
id, the pid namespace and the process start time (Linux `/proc`; empty elsewhere). Another
process can then tell a dead holder from a live one at once - same host, same boot and pid
namespace, and the pid is not alive or now belongs to a process that started at another time -
and says "cannot tell" for anything else (another host or container), where only the holder's
heartbeat can decide.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class ProcessId:
    host: str
    pid: int
    incarnation: str  # "{boot id}/{pid namespace}/{start ticks}"; "" where /proc is missing

    def describe(self) -> str:
        return f"{self.host}:{self.pid}"


@cache
def _boot_and_namespace() -> str:
    """Constant for the life of the process: the kernel boot and the pid namespace."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{namespace}"


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of `/proc/{pid}/stat`; None if there is no such process (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return stat[stat.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> str | None:
    """The start time of `pid` in clock ticks since boot (field 22 of proc(5))."""
    fields = _stat(pid)
    return fields[19] if fields else None


def current() -> ProcessId:
    """This process (computed per call: a forked child has its own pid)."""
    pid = os.getpid()
    where = _boot_and_namespace()
    ticks = start_ticks(pid) if where else None
    incarnation = f"{where}/{ticks}" if where and ticks else ""
    return ProcessId(socket.gethostname(), pid, incarnation)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def is_gone(other: ProcessId) -> bool:
    """True only when `other` certainly no longer runs: it ran on this host in this boot and
    pid namespace, and its pid is dead or belongs to a younger process. False when alive or
    when this process cannot tell (another host or container, no /proc)."""
    me = current()
    if other.host != me.host or not other.incarnation or not me.incarnation:
        return False
    where, _, ticks = other.incarnation.rpartition("/")
    if where != me.incarnation.rpartition("/")[0]:
        return False  # another boot or pid namespace: its pids mean nothing here
    if not pid_alive(other.pid):
        return True
    fields = _stat(other.pid)
    if fields is None:
        return False  # /proc went away: cannot tell
    # A zombie (killed, not yet reaped by its parent) still answers kill(pid, 0).
    return fields[0] == "Z" or fields[19] != ticks  # or the pid was reused
