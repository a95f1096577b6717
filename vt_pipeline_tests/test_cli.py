"""`vt-pipeline ui` leaves nothing behind: dagster dev, its servers, the broker stop with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vt_pipeline.emulators.rabbitmq import free_port
from vt_pipeline_tests.processes import family, survivors


def serving(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_ui_stops_everything_it_started_with_it(signum: signal.Signals, tmp_path: Path) -> None:
    port = free_port()
    owner = subprocess.Popen(
        [sys.executable, "-m", "vt_pipeline.cli", "ui", "--port", str(port), "--windows", "0"],
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not serving(port):
            assert owner.poll() is None, "vt-pipeline ui exited"
            assert time.monotonic() < deadline, "dagster dev did not serve in time"
            time.sleep(1)
        owned = family(owner.pid)
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in owned]
        assert any(b"dagster_webserver" in c for c in commands)
        assert any(b"dagster._daemon" in c for c in commands)
        assert any(b"beam.smp" in c for c in commands)

        owner.send_signal(signum)
        owner.wait(timeout=90)
        assert not survivors(owned, timeout=90), f"survivors after {signum.name}"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


def test_the_instance_file_in_force_is_the_repositorys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster reads $DAGSTER_HOME/dagster.yaml only: vt-pipeline keeps it the repository's,
    except a file of the user's own, which it keeps."""
    from vt_pipeline.cli import COPY_MARK, REPO_ROOT, demo_home

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    repository = (REPO_ROOT / "dagster.yaml").read_text()
    instance = tmp_path / "dagster.yaml"
    for before in (None, repository, f"{COPY_MARK} (old)\nnux: {{}}\n"):
        if before is not None:
            instance.write_text(before)
        demo_home()
        text = instance.read_text()
        assert text.startswith(COPY_MARK) and text.endswith(repository)
    instance.write_text("telemetry:\n  enabled: false\n")
    demo_home()
    assert instance.read_text() == "telemetry:\n  enabled: false\n"
