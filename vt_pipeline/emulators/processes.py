"""Child processes that never outlive their owner: brokers, `dagster dev`, a PostgreSQL later.

A child started with `spawn_owned` runs in its own session (so a terminal's Ctrl-C reaches only
the owner, which stops it in order) and is watched by a tiny watchdog process that holds the
read end of a pipe whose write end only the owner holds. However the owner ends - `stop()`,
SIGTERM, SIGINT, an uncaught exception, SIGKILL, the OOM killer - the kernel closes that pipe:

- the owner released the child itself (normal stop): the watchdog reads "release" and exits;
- otherwise (the owner died): it SIGTERMs the child's whole process group, SIGKILLs what is left
  after `grace` seconds, removes the owner's temporary paths, and exits.

Why not `prctl(PR_SET_PDEATHSIG)`: it fires when the *thread* that forked the child ends, not the
process (a broker started from a worker thread would die with that thread), it does not reach the
grandchildren a start script forks (rabbitmq-server forks the Erlang VM, which forks helpers),
and it cannot remove files. A process group and a pipe cover all three.

`interrupt_on_sigterm()` makes SIGTERM unwind the owner like Ctrl-C does (KeyboardInterrupt), so
its `with` blocks stop children gracefully and remove their files; the watchdog is the safety net
for what cannot unwind (SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

_RELEASE = b"release"

# Run by `python -c` (stdlib only, nothing of vt_pipeline imported: it must start fast and work
# whatever the owner's state). argv: pgid, grace seconds, paths to remove.
_WATCHDOG = r"""
import os, shutil, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pgid, grace, paths = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
data = b""
while True:
    try:
        chunk = os.read(0, 64)
    except InterruptedError:
        continue
    if not chunk:
        break
    data += chunk
if data.startswith(b"release"):
    sys.exit(0)
def alive():
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
if alive():
    try:
        os.killpg(pgid, signal.SIGTERM)
    except OSError:
        pass
    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
    deadline = time.monotonic() + 5
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
for path in paths:
    shutil.rmtree(path, ignore_errors=True)
"""


class Watchdog:
    """The watchdog of one owned process group; `release()` once the owner has stopped it."""

    def __init__(self, pgid: int, grace: float, paths: Sequence[Path | str] = ()) -> None:
        read_end, self._write_end = os.pipe()  # both non-inheritable: no other child gets them
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, str(pgid), str(grace), *map(str, paths)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # neither the terminal's Ctrl-C nor a group kill
                close_fds=True,
            )
        except BaseException:
            os.close(self._write_end)
            raise
        finally:
            os.close(read_end)
        self.pid = self._process.pid

    def release(self) -> None:
        """The owner stopped the group itself: the watchdog leaves without touching anything."""
        if self._write_end < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._write_end, _RELEASE)
        os.close(self._write_end)
        self._write_end = -1
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=5)


def spawn_owned(
    args: Sequence[str],
    *,
    grace: float = 15.0,
    cleanup: Sequence[Path | str] = (),
    **popen_kwargs: Any,
) -> tuple[subprocess.Popen[bytes], Watchdog]:
    """Start `args` in a new session, watched: its process group dies with the owner.

    `cleanup` paths are removed by the watchdog if the owner dies without doing it. Stop the
    child yourself (e.g. `terminate_group`), then `watchdog.release()`.
    """
    process: subprocess.Popen[bytes] = subprocess.Popen(
        list(args), start_new_session=True, **popen_kwargs
    )
    try:
        watchdog = Watchdog(process.pid, grace, cleanup)
    except BaseException:
        terminate_group(process, grace=1.0)
        raise
    return process, watchdog


def terminate_group(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group (graceful), SIGKILL it after `grace` s, reap the leader."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    # Kill what is left of the group (helpers the leader forked, a stuck leader).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Within: SIGTERM (and SIGHUP) raise KeyboardInterrupt in the main thread, as Ctrl-C does,
    so that `with` blocks stop what they started. A no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig in previous:
        signal.signal(sig, _interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Service:
    """A server of the project's own (broker, database, emulator): `start()` runs it and returns
    it, `stop()` stops it and removes what it left; `with` does both."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
