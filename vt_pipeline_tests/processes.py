"""Process-tree helpers for the tests that signal an owner and look for survivors (/proc only)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from vt_pipeline.emulators.processes import Watchdog, spawn_owned


def live_processes() -> dict[int, tuple[int, int]]:
    """Every live (non-zombie) process: pid -> (parent pid, process group), read from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            found[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return found


def family(root: int) -> set[int]:
    """`root`'s descendants, and the members of their process groups (forked helpers)."""
    table = live_processes()
    found: set[int] = set()
    frontier = {root}
    while frontier:
        children = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - found
        groups = {pid for pid, (_, pgid) in table.items() if pgid in children} - found
        found |= children | groups
        frontier = children | groups
    return found


def cwd_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def survivors(pids: Iterable[int], timeout: float) -> set[int]:
    """Which of `pids` still live after up to `timeout` seconds."""
    left = set(pids)
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left &= set(live_processes())
    return left


def spawn_logged(
    command: Sequence[str], log: Path, env: Mapping[str, str], cwd: Path, grace: float = 20.0
) -> tuple[subprocess.Popen[bytes], Watchdog]:
    """A Dagster service (daemon, code server, webserver) in its own process group, owned by
    the test, its output appended to `log`."""
    with log.open("ab") as out:
        return spawn_owned(
            list(command),
            grace=grace,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
